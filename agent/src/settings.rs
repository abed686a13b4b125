//! Settings every node of a cluster must share, and who refuses to serve when they differ.
//!
//! Each node announces them in the `settings` key as `field=value` pairs separated by `;`:
//! `gossip-interval-ms=100;ipv4-pool=10.244.0.0/16+24;ipv6-pool=fd00:10:244::/56+64`. Two nodes
//! compare only the fields both announce, so a node of a release that adds a field, or a node
//! being given a new pod family during a rollout, is not refused for what the other cannot know.
//!
//! A node whose settings differ from those of the cluster it joins is refused, never the cluster:
//! the cluster's settings are those of the earliest started live node that holds its block. So an
//! agent started with a wrong flag (or another cluster's) refuses to serve and says why, and the
//! nodes already serving pods keep serving them whatever joins.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use weft_overlay::underlay::Family;

use crate::membership::Liveness;
use crate::peers::Peer;
use crate::validate::{Pool, Rejection};

/// This node's `settings` value.
pub fn encode(pools: &[Pool], gossip_interval: Duration) -> String {
    let mut fields = vec![format!("gossip-interval-ms={}", gossip_interval.as_millis())];
    for pool in pools {
        let family = Family::of_net(&pool.cluster_cidr);
        fields.push(format!("{}-pool={}+{}", family.as_str(), pool.cluster_cidr, pool.node_prefix));
    }
    fields.join(";")
}

/// A setting that differs between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: String,
    pub ours: String,
    pub theirs: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {} there and {} here", self.field, self.theirs, self.ours)?;
        match flags(&self.field) {
            Some(flags) => write!(f, " ({flags})"),
            None => Ok(()),
        }
    }
}

/// The flags that set a field, for the operator reading why a node is refused.
fn flags(field: &str) -> Option<&'static str> {
    match field {
        "gossip-interval-ms" => Some("--gossip-interval"),
        "ipv4-pool" => Some("--cluster-cidr, --node-cidr-prefix"),
        "ipv6-pool" => Some("--cluster-cidr, --node-cidr-prefix-v6"),
        _ => None,
    }
}

fn fields(value: &str) -> Result<BTreeMap<&str, &str>, String> {
    value
        .split(';')
        .map(|pair| match pair.split_once('=') {
            Some((field, v)) if !field.is_empty() && !v.is_empty() => Ok((field, v)),
            _ => Err(format!("{pair:?} is not field=value")),
        })
        .collect()
}

/// The fields both values carry that differ; an error when `theirs` is malformed (`ours` is
/// this node's own [`encode`]).
pub fn differences(ours: &str, theirs: &str) -> Result<Vec<Difference>, String> {
    if ours == theirs {
        return Ok(Vec::new());
    }
    let theirs = fields(theirs)?;
    let ours = fields(ours).expect("this node encodes its own settings");
    Ok(ours
        .iter()
        .filter_map(|(field, o)| {
            let t = theirs.get(field).filter(|t| *t != o)?;
            Some(Difference { field: field.to_string(), ours: o.to_string(), theirs: t.to_string() })
        })
        .collect())
}

/// Why this node must not serve: the node whose settings are the cluster's, and how this
/// node's differ from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub node: String,
    pub generation: u64,
    pub rejection: Rejection,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this agent's settings are not the cluster's (as node {}, the earliest running, announces them): {}; \
             start it with the cluster's settings",
            self.node, self.rejection
        )
    }
}

/// Whether this node (started as `my_generation`) must refuse to serve: it must when the
/// earliest started live peer that holds its block announces settings it cannot work with.
pub fn refusal(my_generation: u64, peers: &[Peer]) -> Option<Refusal> {
    let reference = peers
        .iter()
        .filter(|p| p.liveness == Liveness::Alive && p.established && p.generation < my_generation)
        .min_by_key(|p| (p.generation, &p.name))?;
    match &reference.announcement {
        Err(rejection) if rejection.settings_differ() => Some(Refusal {
            node: reference.name.clone(),
            generation: reference.generation,
            rejection: rejection.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{dual_rules, rules};

    const INTERVAL: Duration = Duration::from_millis(100);

    #[test]
    fn the_value_names_the_interval_and_each_pool() {
        assert_eq!(
            encode(&dual_rules().pools, INTERVAL),
            "gossip-interval-ms=100;ipv4-pool=10.244.0.0/16+24;ipv6-pool=fd00:10:244::/56+64"
        );
    }

    #[test]
    fn only_fields_both_nodes_announce_are_compared() {
        let ours = encode(&rules().pools, INTERVAL);
        assert_eq!(differences(&ours, &ours), Ok(vec![]));
        // A peer given IPv6 pods during a rollout, or of a release with a field we do not know.
        let more = format!("{};zones=subnet", encode(&dual_rules().pools, INTERVAL));
        assert_eq!(differences(&ours, &more), Ok(vec![]));
        let slower = encode(&dual_rules().pools, Duration::from_secs(1));
        let d = differences(&ours, &slower).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_string(), "gossip-interval-ms is 1000 there and 100 here (--gossip-interval)");
        let mut other = rules().pools;
        other[0].cluster_cidr = "10.245.0.0/16".parse().unwrap();
        let d = differences(&ours, &encode(&other, INTERVAL)).unwrap();
        assert_eq!(
            d[0].to_string(),
            "ipv4-pool is 10.245.0.0/16+24 there and 10.244.0.0/16+24 here (--cluster-cidr, --node-cidr-prefix)"
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        let ours = encode(&rules().pools, INTERVAL);
        for bad in ["", "gossip-interval-ms", "=100", "gossip-interval-ms=", "a=1;;b=2"] {
            assert!(differences(&ours, bad).is_err(), "{bad:?}");
        }
    }

    fn peer(name: &str, generation: u64, liveness: Liveness, established: bool, differs: bool) -> Peer {
        let announcement = if differs {
            Err(Rejection::VniMismatch { ours: 1, theirs: 2 })
        } else {
            Err(Rejection::MacNotUnicast("01:00:00:00:00:01".parse().unwrap()))
        };
        Peer { name: name.into(), generation, liveness, established, announcement, report: None }
    }

    #[test]
    fn the_earliest_running_established_peer_holds_the_clusters_settings() {
        // An earlier established peer whose settings differ: refused.
        let r = refusal(50, &[peer("a", 10, Liveness::Alive, true, true)]).unwrap();
        assert_eq!((r.node.as_str(), r.generation), ("a", 10));
        assert!(r.to_string().contains("VNI 2 differs from ours (1)"), "{r}");
        // Its settings are ours (its announcement is rejected for something else): serve.
        let agreeing = peer("a", 10, Liveness::Alive, true, false);
        assert_eq!(refusal(50, &[agreeing.clone(), peer("b", 20, Liveness::Alive, true, true)]), None);
        // Later nodes, nodes without a block and dead nodes do not decide.
        for other in [
            peer("b", 60, Liveness::Alive, true, true),
            peer("b", 20, Liveness::Alive, false, true),
            peer("b", 20, Liveness::Dead, true, true),
            peer("b", 20, Liveness::Leaving, true, true),
        ] {
            assert_eq!(refusal(50, std::slice::from_ref(&other)), None, "{other:?}");
        }
        // The earliest one decides, whatever the others say.
        assert_eq!(refusal(50, &[peer("b", 20, Liveness::Alive, true, true), agreeing]), None);
    }
}
