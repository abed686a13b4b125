//! Rechecks: one probe, sent at once, of each peer that gossip has declared gone while its
//! tunnel answered the latest round. Such a peer keeps its routes (its agent may be down for an
//! upgrade while its node forwards, operations.md "An agent down is not a node down"), but that
//! round may be a whole interval old: a node that died with its agent kept its routes until the
//! next round found it silent, up to `--probe-interval` plus a timeout after gossip's verdict
//! (measured: withdrawn 4.1 s after SIGKILL where gossip took 1.9 s). A recheck settles it
//! within [`PROBE_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::icmp::{Pinger, min_probe};
use super::{PROBE_TIMEOUT, Target, joined};

/// Per peer rechecked: whether its tunnel answered (of any pod family, like `answering`).
pub type Rechecks = BTreeMap<String, bool>;

/// Rechecks every target `requests` holds once, as soon as it appears there. A result is kept
/// while its peer stays requested and forgotten when it leaves the request, so that the next
/// time gossip declares that peer gone it is rechecked again.
pub fn spawn(
    pinger: Arc<dyn Pinger>,
    mut requests: watch::Receiver<Vec<Arc<Target>>>,
    cancel: CancellationToken,
) -> (watch::Receiver<Rechecks>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Rechecks::new());
    let task = tokio::spawn(async move {
        let mut probes = JoinSet::new();
        // Requested and not answered yet, or done: never sent twice for one request.
        let mut sent: Vec<Arc<Target>> = Vec::new();
        loop {
            let wanted = requests.borrow_and_update().clone();
            sent.retain(|t| wanted.contains(t));
            tx.send_if_modified(|done| forget_unrequested(done, &wanted));
            for target in wanted {
                if !sent.contains(&target) {
                    sent.push(target.clone());
                    let pinger = pinger.clone();
                    probes.spawn(async move { (target.clone(), answers(pinger.as_ref(), &target).await) });
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = requests.changed() => if changed.is_err() { return },
                Some(done) = probes.join_next() => {
                    let (target, answered) = joined(done);
                    // A result for a request withdrawn meanwhile is dropped.
                    if sent.contains(&target) {
                        tx.send_modify(|done| {
                            done.insert(target.peer.clone(), answered);
                        });
                    }
                }
            }
        }
    });
    (rx, task)
}

/// Drops the results of peers no longer requested; whether any was dropped.
fn forget_unrequested(done: &mut Rechecks, wanted: &[Arc<Target>]) -> bool {
    let before = done.len();
    done.retain(|peer, _| wanted.iter().any(|t| t.peer == *peer));
    done.len() != before
}

/// A small echo through each pod family's path at once: whether any was answered.
async fn answers(pinger: &dyn Pinger, target: &Target) -> bool {
    let echoes = target.paths.iter().map(|p| pinger.ping(p.tunnel, min_probe(p.family()), PROBE_TIMEOUT));
    futures::future::join_all(echoes).await.iter().any(Option::is_some)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::IpAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::time::Instant;

    use super::*;
    use crate::probe::PodPath;

    /// Answers echoes to the addresses it holds, at once; counts every echo.
    #[derive(Default)]
    struct Network {
        up: Mutex<HashSet<IpAddr>>,
        sent: Mutex<Vec<IpAddr>>,
    }

    #[async_trait]
    impl Pinger for Network {
        async fn ping(&self, dst: IpAddr, _size: u16, timeout: Duration) -> Option<Duration> {
            self.sent.lock().unwrap().push(dst);
            if self.up.lock().unwrap().contains(&dst) {
                return Some(Duration::from_micros(100));
            }
            tokio::time::sleep(timeout).await;
            None
        }

        fn heard_from(&self, _src: IpAddr) -> Option<Instant> {
            None
        }
    }

    fn target(peer: &str, tunnels: &[&str]) -> Arc<Target> {
        let paths =
            tunnels.iter().map(|t| PodPath { tunnel: t.parse().unwrap(), peer_source: t.parse().unwrap() }).collect();
        Arc::new(Target { peer: peer.into(), paths, underlay: "192.0.2.9".parse().unwrap(), full_size: 1450 })
    }

    async fn until(rx: &mut watch::Receiver<Rechecks>, what: impl Fn(&Rechecks) -> bool) -> Rechecks {
        let seen = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| what(r))).await;
        seen.expect("in time").expect("the task runs").clone()
    }

    #[tokio::test(start_paused = true)]
    async fn each_requested_peer_is_probed_once_and_forgotten_when_no_longer_requested() {
        let network = Arc::new(Network::default());
        network.up.lock().unwrap().insert("10.244.1.0".parse().unwrap());
        let (requests, rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let (mut rechecks, _task) = spawn(network.clone(), rx, cancel.clone());
        let start = Instant::now();
        // b's IPv4 path is dead but its IPv6 one answers: its node lives.
        let (a, b, c) = (
            target("a", &["10.244.1.0"]),
            target("b", &["10.244.2.0", "fd00:10:244:2::"]),
            target("c", &["10.244.3.0"]),
        );
        network.up.lock().unwrap().insert("fd00:10:244:2::".parse().unwrap());
        requests.send_replace(vec![a.clone(), b.clone(), c.clone()]);
        let done = until(&mut rechecks, |r| r.len() == 3).await;
        assert_eq!(done, [("a".into(), true), ("b".into(), true), ("c".into(), false)].into());
        assert_eq!(start.elapsed(), PROBE_TIMEOUT, "all at once: a silent peer takes the timeout");
        assert_eq!(network.sent.lock().unwrap().len(), 4, "one echo per path");
        // Still requested: not probed again.
        requests.send_replace(vec![a.clone(), c.clone()]);
        let done = until(&mut rechecks, |r| r.len() == 2).await;
        assert_eq!(done, [("a".into(), true), ("c".into(), false)].into());
        tokio::time::sleep(PROBE_TIMEOUT * 2).await;
        assert_eq!(network.sent.lock().unwrap().len(), 4);
        // Requested anew after it left the request: probed again.
        requests.send_replace(vec![a.clone()]);
        until(&mut rechecks, |r| r.len() == 1).await;
        requests.send_replace(vec![a.clone(), c.clone()]);
        network.up.lock().unwrap().insert("10.244.3.0".parse().unwrap());
        let done = until(&mut rechecks, |r| r.get("c") == Some(&true)).await;
        assert_eq!(done.len(), 2);
        assert_eq!(network.sent.lock().unwrap().len(), 5);
        cancel.cancel();
    }
}
