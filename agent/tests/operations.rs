//! What an operator sees and relies on: start-up gating, failure reporting and retries, the
//! status HTTP endpoints and the `status` command.

mod support;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_agent::cli::StatusArgs;
use weft_agent::http::status::{PeerState, Status};
use weft_overlay::desired::PeerPath;

use support::{Cluster, wait_until};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_or_applied_before_membership_settles() {
    let mut c = Cluster::new();
    let cfg = c.add("lonely");
    // A seed nobody answers at: the node must wait out the startup grace.
    cfg.gossip.seeds = vec!["192.0.2.250:8473".into()];
    cfg.startup_grace = Duration::from_secs(3);
    let state_file = cfg.paths.state_file();
    let conflist = cfg.paths.conflist();
    c.start("lonely").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(c.datapath("lonely").attempts(), 0);
    assert!(!state_file.exists() && !conflist.exists());
    let reason = c.status("lonely").unwrap().node.not_ready_reason.unwrap();
    assert!(reason.contains("waiting for gossip membership to settle"), "{reason}");
    wait_until(CONVERGE, "ready after the grace", || c.ready("lonely")).await;
    assert!(state_file.exists() && conflist.exists());
    assert!(c.datapath("lonely").last().unwrap().peers.is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_datapath_is_retried_with_backoff_and_reported() {
    let mut c = Cluster::new();
    c.add_and_start(&["a"]).await;
    c.datapath("a").fail_next(3);
    wait_until(CONVERGE, "the failure shows in status", || {
        c.status("a").is_some_and(|s| {
            s.last_reconcile.and_then(|r| r.error).as_deref() == Some("injected failure")
                && s.node.not_ready_reason.is_some_and(|r| r == "last reconcile failed: injected failure")
        })
    })
    .await;
    wait_until(CONVERGE, "ready once applies succeed", || c.ready("a")).await;
    assert_eq!(c.datapath("a").attempts(), 4);
    let metrics = c.metrics("a");
    assert!(metrics.contains("weft_reconcile_errors_total 3"), "{metrics}");
    assert!(metrics.contains("weft_ready 1"));
    assert_eq!(c.status("a").unwrap().last_reconcile.unwrap().error, None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_changes_apply_incrementally_and_resyncs_and_failures_in_full() {
    let mut c = Cluster::new();
    c.add("a").resync_interval = Duration::from_secs(3);
    c.start("a").await;
    c.datapath("a").allow_incremental();
    wait_until(CONVERGE, "a ready", || c.ready("a")).await;
    assert_eq!(c.datapath("a").kinds().first(), Some(&("full", false)), "the first apply is a full one");
    // A peer joins: only the change is written.
    c.add_and_start(&["b"]).await;
    wait_until(CONVERGE, "a programs b", || c.datapath("a").programmed().contains_key("b")).await;
    wait_until(CONVERGE, "an incremental apply", || c.datapath("a").kinds().contains(&("incremental", false))).await;
    // The resync timer applies in full although nothing changed.
    let before = c.datapath("a").kinds().len();
    wait_until(CONVERGE, "a resync", || c.datapath("a").kinds()[before..].contains(&("full", false))).await;
    // A failed incremental apply is followed at once by a full one, not by a retry later.
    c.datapath("a").fail_next_incremental(1);
    let before = c.datapath("a").kinds().len();
    c.add_and_start(&["d"]).await;
    wait_until(CONVERGE, "a programs d", || c.datapath("a").programmed().contains_key("d")).await;
    let kinds = c.datapath("a").kinds()[before..].to_vec();
    let failed = kinds.iter().position(|k| *k == ("incremental", true)).expect("the injected failure");
    assert_eq!(kinds.get(failed + 1), Some(&("full", false)), "{kinds:?}");
    let metrics = c.metrics("a");
    for line in [
        "weft_reconcile_duration_seconds_count{kind=\"full\"}",
        "weft_reconcile_duration_seconds_count{kind=\"incremental\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    c.shutdown().await;
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let code = response.status().as_u16();
    (code, response.body_mut().read_to_string().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_endpoints_and_command_show_what_the_agent_sees() {
    let mut c = Cluster::new();
    c.add("a");
    let b = c.add("b");
    // b sits in a's underlay subnet: with cross-subnet encapsulation a routes to it directly.
    b.underlay.addrs[0].ip = "192.0.2.99".parse().unwrap();
    b.gossip.listen = "192.0.2.99:8473".parse().unwrap();
    c.add("far").underlay.addrs[0].ip = "198.51.100.7".parse().unwrap();
    c.nodes.get_mut("far").unwrap().config.gossip.listen = "198.51.100.7:8473".parse().unwrap();
    c.nodes.get_mut("a").unwrap().config.encap = weft_agent::config::Encap::CrossSubnet;
    for n in ["a", "b", "far"] {
        c.start(n).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let shared = c.nodes["a"].agent.as_ref().unwrap().shared();
    let limits = weft_agent::http::Limits { idle_timeout: Duration::from_secs(10), max_connections: 8 };
    let router = weft_agent::http::router(shared.clone());
    let server = tokio::spawn(weft_agent::http::serve(listener, router, shared.clone(), limits, cancel.clone()));
    // The metrics server, as --metrics-addr runs it: /metrics and nothing else.
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let metrics_router = weft_agent::http::metrics_router(shared.clone());
    let metrics_server =
        tokio::spawn(weft_agent::http::serve(metrics_listener, metrics_router, shared, limits, cancel.clone()));
    let http: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let base = format!("http://{addr}");

    let (h, b2) = (http.clone(), base.clone());
    let (code, body) = tokio::task::spawn_blocking(move || get(&h, &format!("{b2}/readyz"))).await.unwrap();
    assert_eq!(code, 503, "not ready right after start");
    assert!(!body.trim().is_empty());

    wait_until(CONVERGE, "3 nodes converged", || c.converged()).await;
    let (h, b2) = (http.clone(), base.clone());
    let answers = tokio::task::spawn_blocking(move || {
        ["healthz", "readyz", "status", "metrics"].map(|p| get(&h, &format!("{b2}/{p}")))
    })
    .await
    .unwrap();
    assert_eq!(answers[0], (200, "ok\n".to_string()));
    assert_eq!(answers[1], (200, "ready\n".to_string()));
    assert_eq!(answers[2].0, 200);
    let status: Status = serde_json::from_str(&answers[2].1).unwrap();
    assert_eq!(status.node.name, "a");
    assert!(status.node.ready);
    assert_eq!(status.node.pod_cidr, c.pod_cidr("a").map(Into::into));
    assert_eq!(status.peers.len(), 2);
    for p in &status.peers {
        assert_eq!(p.state, PeerState::Alive);
        assert!(p.programmed && p.last_seen.is_some() && p.note.is_none());
        let expected = if p.name == "b" { PeerPath::Direct } else { PeerPath::Vxlan };
        assert_eq!(p.path, Some(expected), "{}", p.name);
    }
    let lr = status.last_reconcile.unwrap();
    assert_eq!(lr.error, None);
    let metrics = &answers[3].1;
    assert_eq!(answers[3].0, 200);
    for line in [
        "weft_peers{state=\"alive\"} 2",
        "weft_peers_programmed 2",
        "weft_ready 1",
        "weft_reconcile_duration_seconds_count",
        "weft_gossip_messages_total{direction=\"in\"}",
        "weft_gossip_bytes_total{direction=\"out\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    let (h, m) = (http.clone(), format!("http://{metrics_addr}"));
    let split = tokio::task::spawn_blocking(move || {
        ["metrics", "status", "healthz", "readyz"].map(|p| get(&h, &format!("{m}/{p}")).0)
    })
    .await
    .unwrap();
    assert_eq!(split, [200, 404, 404, 404], "the metrics server serves /metrics and nothing else");

    let args = StatusArgs { status_addr: addr, json: false, cluster: false };
    tokio::task::spawn_blocking(move || weft_agent::commands::status::status(&args)).await.unwrap().unwrap();

    cancel.cancel();
    server.await.unwrap();
    metrics_server.await.unwrap();
    c.shutdown().await;
}
