//! A node's probe results as it publishes them in gossip, so that any node can show the whole
//! cluster's paths. Bounded whatever the cluster size: counts, and the failing peers by name up
//! to [`MAX_LISTED_BYTES`] (the rest are counted, not named).
//!
//! Encoding (gossip key `dataplane`): `<ok>/<unknown>/<failing>;<peer>=<code>,…` with the codes
//! `b` tunnel-blocked, `m` mtu, `u` unreachable, `o` one-way; e.g. `3/0/2;n2=b,n4=m`.

use serde::{Deserialize, Serialize};

use super::verdict::PathState;

/// The most bytes of failing-peer entries a summary carries.
pub const MAX_LISTED_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ok: u32,
    pub unknown: u32,
    /// Every failing peer, listed or not.
    pub failing_count: u32,
    /// The failing peers that fit, by name.
    pub failing: Vec<(String, PathState)>,
}

fn code(state: PathState) -> Option<char> {
    match state {
        PathState::TunnelBlocked => Some('b'),
        PathState::Mtu => Some('m'),
        PathState::Unreachable => Some('u'),
        PathState::OneWay => Some('o'),
        PathState::Ok | PathState::Unknown => None,
    }
}

fn state(code: &str) -> Option<PathState> {
    Some(match code {
        "b" => PathState::TunnelBlocked,
        "m" => PathState::Mtu,
        "u" => PathState::Unreachable,
        "o" => PathState::OneWay,
        _ => return None,
    })
}

impl Summary {
    /// The summary of per-peer states.
    pub fn of<'a>(states: impl IntoIterator<Item = (&'a str, PathState)>) -> Summary {
        let mut s = Summary::default();
        let mut listed_bytes = 0;
        for (peer, st) in states {
            match st {
                PathState::Ok => s.ok += 1,
                PathState::Unknown => s.unknown += 1,
                failing => {
                    s.failing_count += 1;
                    let entry = peer.len() + 3;
                    if listed_bytes + entry <= MAX_LISTED_BYTES {
                        listed_bytes += entry;
                        s.failing.push((peer.to_string(), failing));
                    }
                }
            }
        }
        s
    }

    pub fn encode(&self) -> String {
        let listed: Vec<String> =
            self.failing.iter().filter_map(|(p, st)| Some(format!("{p}={}", code(*st)?))).collect();
        format!("{}/{}/{};{}", self.ok, self.unknown, self.failing_count, listed.join(","))
    }

    /// Reads a peer's summary; `None` for anything malformed or too long (a peer's gossip is input).
    pub fn decode(value: &str) -> Option<Summary> {
        if value.len() > MAX_LISTED_BYTES + 64 {
            return None;
        }
        let (counts, listed) = value.split_once(';')?;
        let mut counts = counts.split('/').map(|n| n.parse::<u32>().ok());
        let (Some(Some(ok)), Some(Some(unknown)), Some(Some(failing_count)), None) =
            (counts.next(), counts.next(), counts.next(), counts.next())
        else {
            return None;
        };
        let failing = if listed.is_empty() {
            Vec::new()
        } else {
            listed
                .split(',')
                .map(|e| {
                    let (peer, c) = e.split_once('=')?;
                    crate::validate::check_node_name(peer).ok()?;
                    Some((peer.to_string(), state(c)?))
                })
                .collect::<Option<Vec<_>>>()?
        };
        (failing.len() <= failing_count as usize).then_some(Summary { ok, unknown, failing_count, failing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_round_trip_and_name_only_failing_peers() {
        use PathState::*;
        let s = Summary::of([("n2", TunnelBlocked), ("n3", Ok), ("n4", Mtu), ("n5", Unknown), ("n6", OneWay)]);
        assert_eq!(s.encode(), "1/1/3;n2=b,n4=m,n6=o");
        assert_eq!(Summary::decode(&s.encode()), Some(s));
        assert_eq!(Summary::decode("5/0/0;"), Some(Summary { ok: 5, ..Summary::default() }));
    }

    #[test]
    fn a_summary_stays_bounded_whatever_the_cluster_size() {
        let names: Vec<String> = (0..5000).map(|i| format!("node-{i:05}")).collect();
        let s = Summary::of(names.iter().map(|n| (n.as_str(), PathState::Unreachable)));
        assert_eq!(s.failing_count, 5000);
        assert!(s.encode().len() <= MAX_LISTED_BYTES + 32, "{}", s.encode().len());
        assert_eq!(Summary::decode(&s.encode()).map(|d| d.failing.len()), Some(s.failing.len()));
    }

    #[test]
    fn malformed_summaries_are_ignored() {
        for bad in ["", "1/2", "1/2/3", "a/0/0;", "1/0/0/0;", "0/0/1;n2=x", "0/0/1;=b", "0/0/0;n2=b", "0/0/1;n 2=b"] {
            assert_eq!(Summary::decode(bad), None, "{bad:?}");
        }
        assert_eq!(Summary::decode(&format!("0/0/1;{}=b", "n".repeat(2000))), None);
    }
}
