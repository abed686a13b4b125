//! Reading `nft -j list ruleset` as raw JSON: only the few fields weft compares (table and
//! chain names, hooks, policies, rule handles and comments), so nothing breaks on expressions
//! nft prints in a form a typed model would not know.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::COMMENT_PREFIX;
use super::table::{BaseChain, ChainShape, TableShape};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected nft JSON listing: {0}")]
pub struct ListingError(pub String);

/// What the kernel holds that weft cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The shape of weft's own table; `None` when the table does not exist.
    pub table: Option<TableShape>,
    /// The elements of each set of weft's table, by set name (filled in from nfnetlink: the
    /// listing itself is terse).
    pub elements: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// The counters of weft's own rules, by rule comment.
    pub counters: BTreeMap<String, Counter>,
    /// Chains of other tables that weft must act on: IPv4 forward hooks whose policy drops
    /// (Docker's), and any chain holding rules weft inserted earlier. In listing order.
    pub foreign: Vec<ForeignChain>,
}

/// A rule's `counter` statement as the kernel last counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// A base chain at the forward hook, in family ip or inet, with policy drop.
    pub forward_drop: bool,
    /// weft's rules in it: (handle, comment).
    pub weft_rules: Vec<(u64, String)>,
}

/// Parses a listing; `family`/`name` name weft's own table.
pub fn parse(listing: &Value, family: &str, name: &str) -> Result<Listing, ListingError> {
    let objects = listing
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ListingError("no \"nftables\" array".into()))?;
    let mut table_found = false;
    let mut own: Vec<ChainShape> = Vec::new();
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut counters = BTreeMap::new();
    let mut others = 0;
    let mut foreign: Vec<ForeignChain> = Vec::new();
    let mut foreign_index: HashMap<(String, String, String), usize> = HashMap::new();
    for object in objects {
        let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default();
        let ours = text("family") == family && text("table") == name;
        match kind.as_str() {
            "metainfo" => {}
            "table" => table_found |= text("family") == family && text("name") == name,
            "chain" if ours => {
                own.push(ChainShape { name: text("name").to_string(), base: base_chain(body), comments: Vec::new() })
            }
            "chain" => {
                let key = (text("family").to_string(), text("table").to_string(), text("name").to_string());
                foreign_index.insert(key.clone(), foreign.len());
                foreign.push(ForeignChain {
                    forward_drop: matches!(key.0.as_str(), "ip" | "inet")
                        && text("hook") == "forward"
                        && text("policy") == "drop",
                    family: key.0,
                    table: key.1,
                    name: key.2,
                    weft_rules: Vec::new(),
                });
            }
            // A set with flags (intervals, timeouts, …) is not one weft writes: the table differs.
            "set" if ours && body.get("flags").is_some() => others += 1,
            "set" if ours => sets.push((text("name").to_string(), text("type").to_string())),
            "rule" => {
                let comment = body.get("comment").and_then(Value::as_str);
                if ours {
                    let chain = own
                        .iter_mut()
                        .find(|c| c.name == text("chain"))
                        .ok_or_else(|| ListingError(format!("rule of unknown chain {body}")))?;
                    chain.comments.push(comment.map(str::to_string));
                    if let (Some(comment), Some(counter)) = (comment, rule_counter(body)) {
                        counters.insert(comment.to_string(), counter);
                    }
                    continue;
                }
                let Some(comment) = comment.filter(|c| c.starts_with(COMMENT_PREFIX)) else {
                    continue;
                };
                let key = (text("family").to_string(), text("table").to_string(), text("chain").to_string());
                let handle = body
                    .get("handle")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| ListingError(format!("rule without a handle: {body}")))?;
                if let Some(&i) = foreign_index.get(&key) {
                    foreign[i].weft_rules.push((handle, comment.to_string()));
                }
            }
            _ if ours => others += 1,
            _ => {}
        }
    }
    foreign.retain(|c| c.forward_drop || !c.weft_rules.is_empty());
    own.sort_by(|a, b| a.name.cmp(&b.name));
    sets.sort();
    let table = table_found.then_some(TableShape { chains: own, sets, others });
    Ok(Listing { table, elements: BTreeMap::new(), counters, foreign })
}

/// The first `counter` statement among a rule's expressions.
fn rule_counter(rule: &Value) -> Option<Counter> {
    rule.get("expr")?.as_array()?.iter().find_map(|e| {
        let c = e.get("counter")?;
        Some(Counter { packets: c.get("packets")?.as_u64()?, bytes: c.get("bytes")?.as_u64()? })
    })
}

fn base_chain(chain: &Value) -> Option<BaseChain> {
    let text = |key: &str| chain.get(key).and_then(Value::as_str).map(str::to_string);
    Some(BaseChain {
        kind: text("type")?,
        hook: text("hook")?,
        priority: chain.get("prio").and_then(Value::as_i64)?,
        policy: text("policy").unwrap_or_else(|| "accept".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// As nft 1.0.6 prints it for a weft table next to Docker's iptables-nft FORWARD chain.
    fn sample() -> Value {
        json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER", "handle": 5}},
            {"chain": {"family": "ip", "table": "filter", "name": "OLD", "handle": 6,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7,
                      "comment": "weft:0011aabb", "expr": [{"accept": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 2,
                      "comment": "docker-own", "expr": [{"counter": {"packets": 0, "bytes": 0}}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "OLD", "handle": 9,
                      "comment": "weft:ffffffff", "expr": [{"accept": null}]}},
            {"table": {"family": "inet", "name": "weft", "handle": 2}},
            {"chain": {"family": "inet", "table": "weft", "name": "postrouting", "handle": 2,
                       "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "weft", "name": "forward", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 3,
                      "comment": "weft:1234abcd", "expr": [{"accept": null}]}},
            {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 4,
                      "expr": [{"accept": null}]}},
            {"rule": {"family": "inet", "table": "weft", "chain": "forward", "handle": 8,
                      "comment": "weft:99990000", "expr": [{"match": {"op": "==", "left": {"payload":
                      {"protocol": "udp", "field": "dport"}}, "right": 8472}},
                      {"counter": {"packets": 3, "bytes": 150}}, {"drop": null}]}},
            {"set": {"family": "inet", "table": "weft", "name": "s", "handle": 5, "type": "ipv4_addr"}},
            {"set": {"family": "inet", "table": "weft", "name": "empty", "handle": 6, "type": "ipv4_addr"}},
            {"set": {"family": "inet", "table": "weft", "name": "ranges", "handle": 7, "type": "ipv4_addr",
                     "flags": ["interval"]}},
            {"table": {"family": "ip6", "name": "weft", "handle": 3}},
            {"chain": {"family": "ip6", "table": "weft", "name": "forward", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}
        ]})
    }

    #[test]
    fn reads_weft_table_shape() {
        let l = parse(&sample(), "inet", "weft").unwrap();
        let t = l.table.unwrap();
        // The interval set holds elements weft never writes: it counts as foreign.
        assert_eq!(t.others, 1);
        assert_eq!(t.chains.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["forward", "postrouting"]);
        assert_eq!(t.chains[0].comments, [Some("weft:1234abcd".to_string()), None, Some("weft:99990000".to_string())]);
        assert_eq!(t.sets, [("empty".to_string(), "ipv4_addr".to_string()), ("s".into(), "ipv4_addr".into())]);
        let base = t.chains[1].base.as_ref().unwrap();
        assert_eq!((base.kind.as_str(), base.priority), ("nat", 100));
    }

    #[test]
    fn reads_rule_counters() {
        let l = parse(&sample(), "inet", "weft").unwrap();
        // Only rules of weft's table with a comment and a counter.
        assert_eq!(l.counters.len(), 1);
        assert_eq!(l.counters["weft:99990000"], Counter { packets: 3, bytes: 150 });
    }

    #[test]
    fn finds_forward_drop_chains_and_weft_rules_in_foreign_tables() {
        let l = parse(&sample(), "inet", "weft").unwrap();
        let names: Vec<_> = l.foreign.iter().map(|c| (c.table.as_str(), c.name.as_str(), c.forward_drop)).collect();
        // ip6 is not IPv4 traffic; DOCKER is a regular chain without weft rules.
        assert_eq!(names, [("filter", "FORWARD", true), ("filter", "OLD", false)]);
        assert_eq!(l.foreign[0].weft_rules, [(7, "weft:0011aabb".to_string())]);
        assert_eq!(l.foreign[1].weft_rules, [(9, "weft:ffffffff".to_string())]);
    }

    #[test]
    fn an_empty_ruleset_has_no_table() {
        let l = parse(&json!({"nftables": [{"metainfo": {}}]}), "inet", "weft").unwrap();
        assert_eq!(l, Listing::default());
        assert!(parse(&json!({"x": 1}), "inet", "weft").is_err());
    }
}
