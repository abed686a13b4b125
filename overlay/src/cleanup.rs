//! Removing everything weft owns from the kernel: its routes first (so nothing routes into a
//! device that is going away), then the VXLAN devices of both families (their neighbours and FDB entries go with it), the
//! nftables table and weft's rules in other tables, and cni0 when no pod is attached to it.

use serde::{Deserialize, Serialize};

use crate::firewall;
use crate::objects::{MAIN_TABLE, WEFT_ROUTE_PROTOCOL};
use crate::plan::{Op, Plan, Step, Tally};
use crate::report::Failure;
use crate::rules::DEFAULT_BRIDGE;
use crate::snapshot::Kernel;
use crate::underlay::Family;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupOptions {
    /// The pod bridge (`cni0`).
    pub bridge: String,
    /// Remove the bridge even while pods are attached to it (they lose their network).
    pub force: bool,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions { bridge: DEFAULT_BRIDGE.to_string(), force: false }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// What was removed, e.g. "route 10.244.2.0/24", "link vxlan0".
    pub removed: Vec<String>,
    /// What was deliberately left, with the reason.
    pub kept: Vec<String>,
    pub failures: Vec<Failure>,
}

/// The removal plan, and what is kept on purpose.
pub fn plan_cleanup(kernel: &Kernel, opts: &CleanupOptions) -> (Plan, Vec<String>) {
    let step = |op| Step { op, tally: Tally::REMOVE, peer: None, critical: false };
    let mut plan = Plan::default();
    let mut kept = Vec::new();
    let routes: Vec<Step> = kernel
        .routes
        .iter()
        .filter(|r| r.protocol == WEFT_ROUTE_PROTOCOL && r.table == MAIN_TABLE)
        .map(|r| step(Op::DeleteRoute(r.clone())))
        .collect();
    let mut rest = Vec::new();
    for link in Family::ALL.iter().filter_map(|f| kernel.link(f.vxlan_device())) {
        rest.push(step(Op::DeleteLink { index: link.index, name: link.name.clone() }));
    }
    if let Some(bridge) = kernel.link(&opts.bridge).filter(|l| l.kind.as_deref() == Some("bridge")) {
        let ports = kernel.links.iter().filter(|l| l.master == Some(bridge.index)).count();
        if ports == 0 || opts.force {
            rest.push(step(Op::DeleteLink { index: bridge.index, name: bridge.name.clone() }));
        } else {
            kept.push(format!("bridge {}: {ports} port(s) attached (--force removes it)", bridge.name));
        }
    }
    match &kernel.nft {
        Ok(listing) => {
            if let Some((script, removed)) = firewall::cleanup_script(listing) {
                rest.push(Step {
                    op: Op::Nft { object: "nftables table inet weft and weft rules in other tables", script },
                    tally: Tally::of(0, 0, removed),
                    peer: None,
                    critical: false,
                });
            }
        }
        Err(e) => plan.failures.push(Failure {
            object: "nftables".into(),
            peer: None,
            error: format!("cannot read the ruleset: {e}"),
        }),
    }
    plan.stages = [routes, rest].into_iter().filter(|s| !s.is_empty()).collect();
    (plan, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Listing;
    use crate::plan::tests::{converged, desired_with};

    fn ops(plan: &Plan) -> Vec<String> {
        plan.steps().map(|s| s.op.to_string()).collect()
    }

    #[test]
    fn removes_routes_first_then_devices_and_nftables() {
        let kernel = converged(&desired_with(&[2, 3]));
        let (plan, kept) = plan_cleanup(&kernel, &CleanupOptions::default());
        assert!(kept.is_empty());
        assert_eq!(plan.stages.len(), 2);
        assert!(plan.stages[0].iter().all(|s| matches!(s.op, Op::DeleteRoute(_))));
        assert_eq!(plan.stages[0].len(), 2);
        let rest = ops(&plan);
        assert!(rest.contains(&"link vxlan0".to_string()));
        assert!(rest.contains(&"link cni0".to_string()));
        assert!(rest.iter().any(|o| o.starts_with("nftables")));
        assert!(!rest.contains(&"link vxlan-v6".to_string()));
    }

    #[test]
    fn removes_the_ipv6_underlays_device_too() {
        let mut kernel = converged(&desired_with(&[2]));
        let mut v6 = kernel.link("vxlan0").unwrap().clone();
        v6.name = "vxlan-v6".into();
        v6.index = 41;
        kernel.links.push(v6);
        let (plan, _) = plan_cleanup(&kernel, &CleanupOptions::default());
        let rest = ops(&plan);
        assert!(rest.contains(&"link vxlan0".to_string()) && rest.contains(&"link vxlan-v6".to_string()), "{rest:?}");
    }

    #[test]
    fn removes_the_routes_of_both_pod_families() {
        let mut d = desired_with(&[2, 3]);
        d.local = crate::validate::tests::dual_local();
        for p in &mut d.peers {
            p.pod_cidrs.push(crate::validate::tests::v6_block(p.name[1..].parse().unwrap()));
        }
        let (plan, _) = plan_cleanup(&converged(&d), &CleanupOptions::default());
        let mut routes: Vec<String> = plan.stages[0].iter().map(|s| s.op.to_string()).collect();
        routes.sort();
        assert_eq!(
            routes,
            ["route 10.244.2.0/24", "route 10.244.3.0/24", "route fd00:10:244:2::/64", "route fd00:10:244:3::/64"]
        );
    }

    #[test]
    fn keeps_a_bridge_with_pods_unless_forced() {
        let mut kernel = converged(&desired_with(&[2]));
        let bridge = kernel.link("cni0").unwrap().index;
        let mut port = kernel.link("eth0").unwrap().clone();
        port.name = "veth1".into();
        port.index = 40;
        port.master = Some(bridge);
        kernel.links.push(port);
        let (plan, kept) = plan_cleanup(&kernel, &CleanupOptions::default());
        assert!(!ops(&plan).contains(&"link cni0".to_string()));
        assert_eq!(kept.len(), 1);
        let force = CleanupOptions { force: true, ..CleanupOptions::default() };
        let (plan, kept) = plan_cleanup(&kernel, &force);
        assert!(ops(&plan).contains(&"link cni0".to_string()));
        assert!(kept.is_empty());
    }

    #[test]
    fn nothing_to_do_on_a_clean_kernel() {
        let mut kernel = converged(&desired_with(&[]));
        kernel.links.retain(|l| l.name == "eth0");
        kernel.routes.clear();
        kernel.nft = Ok(Listing::default());
        let (plan, kept) = plan_cleanup(&kernel, &CleanupOptions::default());
        assert!(plan.stages.is_empty() && kept.is_empty());
    }
}
