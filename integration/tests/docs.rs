//! The docs and the binaries in step (issue 16): every `weft-agent`/`weft-lab` subcommand and flag
//! that README.md and docs/ name exists in the built binary's `--help` (of that subcommand when
//! the docs show a command line), every `weft_*` metric they name is in a real agent's `/metrics`,
//! every endpoint they request is routed, and every ```` ```sh ```` block of the getting-started and
//! troubleshooting guides runs. Convention: ```` ```sh ```` blocks are run by these tests;
//! ```` ```console ```` and ```` ```text ```` blocks (systemd, Kubernetes, placeholders) are not.
//! The shell blocks and the metrics need root (lab namespaces, removed after).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_lab::cluster::{AgentOptions, Cluster};
use weft_lab::doctext::{self, BINARIES, Code};
use weft_lab::topology::{Lab, LabSpec};
use weft_lab::{bins, netns, wait};

/// How long one shell block may run (the getting-started block builds and removes a lab).
const BLOCK_LIMIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// README.md and every docs/*.md, with their names.
fn docs() -> Vec<(String, String)> {
    let mut files = vec![repo().join("README.md")];
    let mut dir: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    dir.sort();
    files.extend(dir);
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(repo()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        })
        .collect()
}

/// `--help` of a binary's subcommand path, cached: (subcommands, flags).
struct Helps(BTreeMap<Vec<String>, (BTreeSet<String>, BTreeSet<String>)>);

impl Helps {
    fn get(&mut self, path: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
        self.try_get(path).unwrap_or_else(|| panic!("{} --help failed", path.join(" ")))
    }

    /// `None` when the path is no command (`--help` fails).
    fn try_get(&mut self, path: &[String]) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
        if let Some(known) = self.0.get(path) {
            return Some(known.clone());
        }
        let bin = bins::path(&path[0]).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(bin).args(&path[1..]).arg("--help").output().expect("run --help");
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).expect("utf-8 help");
        let parsed = (doctext::help_subcommands(&text), doctext::help_flags(&text));
        self.0.insert(path.to_vec(), parsed.clone());
        Some(parsed)
    }
}

#[test]
fn docs_name_only_subcommands_and_flags_the_binaries_have() {
    let mut helps = Helps(BTreeMap::new());
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut bare = Vec::new();
    for (file, text) in docs() {
        for code in doctext::code(&text) {
            for inv in doctext::invocations(&code.text) {
                // Walk down the subcommands the docs name; the first word that is not one is an
                // argument (`exec n1`), unless the command has subcommands and needs one.
                let mut path = vec![inv.binary.clone()];
                for word in &inv.words {
                    let (subs, _) = helps.get(&path);
                    let deeper = [path.clone(), vec![word.clone()]].concat();
                    // A hidden subcommand is not listed but answers --help.
                    if subs.contains(word) || (!subs.is_empty() && helps.try_get(&deeper).is_some()) {
                        path = deeper;
                    } else if !subs.is_empty() {
                        problems.push(format!("{file}:{}: `{}` has no subcommand {word}", code.line, path.join(" ")));
                        break;
                    } else {
                        break;
                    }
                }
                let (_, flags) = helps.get(&path);
                for flag in inv.flags.iter().filter(|f| !flags.contains(*f)) {
                    problems.push(format!("{file}:{}: `{}` has no flag {flag}", code.line, path.join(" ")));
                }
                checked += 1;
            }
            if code.lang.is_none() {
                bare.extend(doctext::bare_flags(&code.text).into_iter().map(|f| (file.clone(), code.line, f)));
            }
        }
    }
    // A flag named on its own belongs to some command of the two binaries.
    let mut all_flags = BTreeSet::new();
    for bin in BINARIES {
        let mut stack = vec![vec![bin.to_string()]];
        while let Some(path) = stack.pop() {
            let (subs, flags) = helps.get(&path);
            all_flags.extend(flags);
            stack.extend(subs.into_iter().filter(|s| s != "help").map(|s| [path.clone(), vec![s]].concat()));
        }
    }
    for (file, line, flag) in &bare {
        if !all_flags.contains(flag) {
            problems.push(format!("{file}:{line}: {flag} is a flag of no weft-agent or weft-lab command"));
        }
    }
    assert!(
        checked > 20 && bare.len() > 20,
        "found only {checked} command lines and {} flags: the scanner is broken",
        bare.len()
    );
    assert!(problems.is_empty(), "the docs name what the binaries do not have:\n{}", problems.join("\n"));
}

/// Series names a Prometheus text exposes, with the family names of `# TYPE` lines (which also
/// covers a labelled counter with no series yet: `weft_gossip_rejected` → `…_total`).
fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                names.insert(name.to_string());
                if kind == "counter" {
                    names.insert(format!("{name}_total"));
                }
            }
        } else if !line.starts_with('#') {
            names.extend(line.split(['{', ' ']).next().filter(|n| !n.is_empty()).map(str::to_string));
        }
    }
    names
}

/// Runs a shell block with `bash -euo pipefail` in the namespace at `ns` (or this one), with the
/// built binaries first on PATH and `env` set; output is returned for the failure message.
fn run_block(block: &Code, ns: Option<&Path>, env: &[(&str, String)], wrap: &str) -> Result<String, String> {
    let path = format!("{}:{}", bins::dir().display(), std::env::var("PATH").unwrap_or_default());
    let script = wrap.replace("{block}", &block.text);
    let mut cmd = Command::new("timeout");
    cmd.arg(BLOCK_LIMIT.as_secs().to_string())
        .args(["bash", "-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(repo())
        .stdin(Stdio::null());
    let out = match ns {
        Some(ns) => netns::within(ns, || cmd.output()).map_err(|e| e.to_string())?,
        None => cmd.output(),
    }
    .map_err(|e| format!("run bash: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(format!("exit {}:\n{text}", out.status)) }
}

/// One small lab: the metrics and endpoints the docs name, and troubleshooting.md's `sh` blocks
/// run on a node as an operator would, with the node's directories in the `WEFT_*` variables the
/// agent reads (the guide uses them with the default paths as fallback).
#[test]
fn docs_metrics_endpoints_and_troubleshooting_blocks_are_real_on_a_lab_node() {
    weft_lab::require_root();
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 2, subnets: 2, ..LabSpec::default() })
        .expect("build lab");
    let mut c = Cluster::start(lab, AgentOptions::default()).expect("start agents");
    c.wait_converged(Duration::from_secs(30)).expect("agents converge");
    c.add_pod(0, "a").expect("attach a pod");

    let (code, metrics) = c.get(0, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let exposed = exposed_names(&metrics);
    assert!(exposed.contains("weft_ready"), "no weft_ready in:\n{metrics}");
    let mut problems = Vec::new();
    let mut named = 0;
    for (file, text) in docs() {
        for name in doctext::metric_names(&text) {
            named += 1;
            if !exposed.contains(&name) {
                problems.push(format!("{file}: metric {name} is not exported"));
            }
        }
        for path in doctext::endpoints(&text) {
            match c.get(0, &path) {
                Ok((404, _)) => problems.push(format!("{file}: endpoint {path} is not routed")),
                Ok(_) => {}
                Err(e) => problems.push(format!("{file}: GET {path}: {e}")),
            }
        }
    }
    assert!(named > 20, "found only {named} metric names: the scanner is broken");

    let node = &c.lab.nodes[0];
    let env = [
        ("WEFT_STATE_DIR", node.path("run").display().to_string()),
        ("WEFT_CNI_CONF_DIR", node.path("net.d").display().to_string()),
        ("WEFT_IPAM_DIR", node.path("ipam").display().to_string()),
    ];
    let guide = std::fs::read_to_string(repo().join("docs/troubleshooting.md")).expect("read guide");
    let blocks = doctext::blocks(&guide, "sh");
    assert!(blocks.len() >= 5, "troubleshooting.md has only {} sh blocks", blocks.len());
    for block in &blocks {
        if let Err(e) = run_block(block, Some(&node.ns.path()), &env, "{block}") {
            problems.push(format!("docs/troubleshooting.md:{}: {e}\n{}", block.line, block.text));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// getting-started.md's `sh` blocks drive `weft-lab` itself (up, exec, down). They run in a
/// mount namespace of their own with a private /run/netns and their own TMPDIR (not a tmpfs over
/// /tmp: the binaries may be built under /tmp), so `weft-lab` sees only the lab they build and
/// `down` removes nothing of other labs; `down` also runs on any failure.
#[test]
fn getting_started_blocks_run_against_a_private_lab() {
    weft_lab::require_root();
    let guide = std::fs::read_to_string(repo().join("docs/getting-started.md")).expect("read guide");
    let blocks = doctext::blocks(&guide, "sh");
    assert!(!blocks.is_empty(), "getting-started.md has no sh block");
    std::fs::create_dir_all("/run/netns").expect("create /run/netns");
    // The inner shell gets the private mounts; `trap` tears the lab down whatever happens.
    let wrap = "exec unshare --mount --propagation private bash -euo pipefail -c '\
        mount -t tmpfs weft-docs /run/netns && export TMPDIR=$(mktemp -d) && \
        trap \"weft-lab down >/dev/null 2>&1 || true; rm -rf $TMPDIR\" EXIT && source /dev/stdin' <<'WEFT_BLOCK'\n{block}\nWEFT_BLOCK";
    let mut problems = Vec::new();
    for block in &blocks {
        if let Err(e) = run_block(block, None, &[], wrap) {
            problems.push(format!("docs/getting-started.md:{}: {e}\n{}", block.line, block.text));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// troubleshooting.md's check for "nothing arrives from a node": with UDP 8473 dropped between
/// the subnets, n2 (alone on its subnet) is missing from the peer tables of n1 and n3 and has
/// none itself, and is not ready, waiting for gossip; once the path opens it shows alive. The
/// datagram counter `weft_gossip_messages_total{direction="in"}` is no such check: n1 hears n3
/// on its own subnet, so it rises while n2 is cut off.
#[test]
fn a_node_cut_off_from_gossip_is_missing_from_the_peer_tables() {
    weft_lab::require_root();
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 3, subnets: 2, ..LabSpec::default() })
        .expect("build lab");
    lab.block_between_subnets(8473).expect("block gossip between the subnets");
    let c =
        Cluster::start(lab, AgentOptions { extra_args: vec!["--startup-grace=60s".into()], ..AgentOptions::default() })
            .expect("start agents");
    // (name, state) of each peer in node i's /status; empty while its agent does not answer yet.
    let peer_names = |i: usize| -> Vec<(String, String)> {
        let peers = c.status(i).map(|s| s["peers"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
        peers
            .iter()
            .map(|p| (p["name"].as_str().unwrap_or("").into(), p["state"].as_str().unwrap_or("").into()))
            .collect()
    };
    let n1_sees_n3 = || peer_names(0).contains(&("n3".into(), "alive".into())).then_some(());
    for i in 0..3 {
        wait::until("the agent to answer", Duration::from_secs(10), Duration::from_millis(50), || c.status(i).ok())
            .expect("agent answers");
    }
    wait::until("n1 to hear n3 on its own subnet", Duration::from_secs(20), Duration::from_millis(100), n1_sees_n3)
        .unwrap_or_else(|e| panic!("{e}: {:?}", peer_names(0)));
    for i in [0, 2] {
        assert!(!peer_names(i).iter().any(|(name, _)| name == "n2"), "n{}: n2 listed while cut off", i + 1);
    }
    assert!(peer_names(1).is_empty(), "n2 lists peers while cut off: {:?}", peer_names(1));
    assert_eq!(c.metric(1, "weft_peers{state=\"alive\"}").expect("alive peers"), 0.0);
    let (code, reason) = c.get(1, "/readyz").expect("readyz");
    assert!(code == 503 && reason.contains("gossip"), "n2: /readyz {code} {reason}");
    let incoming = c.metric(0, "weft_gossip_messages_total{direction=\"in\"}").expect("messages in");
    eprintln!("n1 received {incoming} gossip datagrams while n2 was cut off");
    assert!(incoming > 0.0, "n1 heard nothing from n3 either");

    c.lab.router_firewall(&[]).expect("open gossip");
    c.wait_converged(Duration::from_secs(30)).expect("converge once gossip passes");
    assert_eq!(c.metric(1, "weft_peers{state=\"alive\"}").expect("alive peers"), 2.0);
}
