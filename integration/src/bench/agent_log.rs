//! Reading real agents' logs: when an agent logged a line, so that gossip's own verdicts (a
//! member seen alive, declared dead) can be timed in a lab as the simulator times them.
//!
//! The agents log tracing's text format: an RFC 3339 UTC timestamp first, then the level, the
//! target, the message and `key=value` fields (`%`-formatted values carry no quotes).

use std::time::SystemTime;

/// The first line at or after `since` that contains `message` and every one of `fields` as
/// `key=value`, with its time.
pub fn line_at_or_after<'a>(
    log: &'a str,
    since: SystemTime,
    message: &str,
    fields: &[(&str, &str)],
) -> Option<(SystemTime, &'a str)> {
    log.lines()
        .filter(|line| line.contains(message) && fields.iter().all(|(k, v)| field(line, k) == Some(*v)))
        .find_map(|line| {
            let stamp = humantime::parse_rfc3339(line.split_whitespace().next()?).ok()?;
            (stamp >= since).then_some((stamp, line))
        })
}

/// The value of field `key` in `line`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOG: &str = "\
2026-12-05T22:50:01.100000Z  INFO weft_agent::agent: agent started node=n9 generation=7 node_ip=192.0.2.9
2026-12-05T22:50:01.300000Z  INFO weft_agent::gossip::view: member liveness changed peer=n1 generation=3 liveness=alive was=unknown
2026-12-05T22:50:01.400000Z  INFO weft_agent::gossip::view: member liveness changed peer=n10 generation=7 liveness=alive was=joining
2026-12-05T22:50:02.500000Z  INFO weft_agent::gossip::view: member liveness changed peer=n1 generation=3 liveness=dead was=alive
";

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn finds_the_first_matching_line_at_or_after_a_time() {
        let changed = "member liveness changed";
        let alive = [("peer", "n1"), ("generation", "3"), ("liveness", "alive")];
        let since = at("2026-12-05T22:50:00Z");
        let time = |since, fields: &[(&str, &str)]| line_at_or_after(LOG, since, changed, fields).map(|(t, _)| t);
        assert_eq!(time(since, &alive), Some(at("2026-12-05T22:50:01.3Z")));
        // `peer=n1` is a whole field: it does not match `peer=n10`.
        let dead = [("peer", "n1"), ("liveness", "dead")];
        assert_eq!(time(since, &dead), Some(at("2026-12-05T22:50:02.5Z")));
        assert_eq!(time(at("2026-12-05T22:50:01.35Z"), &alive), None);
        assert_eq!(time(since, &[("peer", "n2")]), None);
        assert_eq!(line_at_or_after("not a log line peer=n1\n", since, "", &[("peer", "n1")]), None);
    }

    #[test]
    fn reads_a_field_of_a_line_at_or_after_a_time() {
        let since = at("2026-12-05T22:50:01Z");
        let (_, line) = line_at_or_after(LOG, since, "agent started", &[("node", "n9")]).unwrap();
        assert_eq!(field(line, "generation"), Some("7"));
        // A key is a whole word: `node` is not `node_ip`.
        assert_eq!(field(line, "node"), Some("n9"));
        assert_eq!(line_at_or_after(LOG, since + Duration::from_secs(1), "agent started", &[]), None);
    }
}
