//! Checks of the deployment files in deploy/ without a cluster or a systemd to run them in:
//! `systemd-analyze verify` on the unit, `yamllint` and `kubernetes-validate --strict` (the real
//! API schemas) on the manifest, and every `--flag` / `WEFT_*` name they use against the built
//! agent's own `weft-agent run --help`. Each checker is also shown a broken file, so a checker
//! that silently accepts everything fails the test too. The Dockerfile, which nothing here can
//! build, is checked by reading it. The Prometheus rules in deploy/prometheus/ go through
//! `promtool check rules` and their unit tests, and the series they name are checked against a
//! real agent's /metrics: that one test needs root (a lab of network namespaces, removed after);
//! the others need none. Nothing outside a temporary directory and the lab is touched. A missing
//! tool fails the test, naming the package to install.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_lab::cluster::{AgentOptions, Cluster};
use weft_lab::topology::{Lab, LabSpec};

/// Kubernetes versions the manifest is validated against: every schema set bundled with
/// kubernetes-validate 1.37 (docs/deployment.md lists them).
const KUBERNETES_VERSIONS: [&str; 13] = [
    "1.25.0", "1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0",
    "1.36.0", "1.37.0",
];

/// The resources of deploy/kubernetes/weft.yaml, as kubernetes-validate names them.
const RESOURCES: [&str; 3] = ["serviceaccount/weft", "configmap/weft-config", "daemonset/weft"];

const UNIT: &str = "deploy/systemd/weft-agent.service";
const ENV_FILE: &str = "deploy/systemd/weft.env";
const MANIFEST: &str = "deploy/kubernetes/weft.yaml";
const YAMLLINT_CONFIG: &str = "deploy/.yamllint.yaml";
const EXEC_START: &str = "ExecStart=/usr/local/bin/weft-agent run";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-deploy-{name}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("create temporary directory");
    dir
}

struct Output {
    ok: bool,
    text: String,
}

/// Runs a checker; a missing program fails the test with what to install.
fn run(program: &str, args: &[&str], install: &str) -> Output {
    let out = match Command::new(program).args(args).current_dir(repo()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("`{program}` is not installed: {install} (or run `bash scripts/setup.sh` as root)")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Output { ok: out.status.success(), text }
}

// ---- systemd ----

/// `systemd-analyze verify` of `unit`, saved as weft-agent.service with ExecStart pointing at
/// the built agent (verify checks that the binary exists). verify exits 0 on unknown keys and
/// bad values ("…, ignoring"), so any message about the unit is a failure too.
fn verify_unit(unit: &str) -> Result<(), String> {
    assert!(
        unit.lines().any(|l| l == EXEC_START),
        "the unit must start the agent with `{EXEC_START}` (the test substitutes the built binary there)"
    );
    let agent = weft_lab::bins::path("weft-agent").unwrap_or_else(|e| panic!("{e}"));
    let unit = unit.replace(EXEC_START, &format!("ExecStart={} run", agent.display()));
    let dir = temp_dir("unit");
    let path = dir.join("weft-agent.service");
    std::fs::write(&path, unit).expect("write unit copy");
    let out =
        run("systemd-analyze", &["verify", "--man=no", path.to_str().expect("utf-8 path")], "apt-get install systemd");
    let _ = std::fs::remove_dir_all(&dir);
    let about_unit: Vec<&str> = out.text.lines().filter(|l| l.contains("weft-agent.service")).collect();
    if out.ok && about_unit.is_empty() { Ok(()) } else { Err(out.text) }
}

#[test]
fn systemd_unit_verifies() {
    if let Err(text) = verify_unit(&read(UNIT)) {
        panic!("systemd-analyze verify {UNIT} failed:\n{text}");
    }
}

#[test]
fn systemd_analyze_rejects_a_broken_unit() {
    let unit = read(UNIT);
    let broken = [
        unit.replace("Restart=always", "Restart=sometimes"),
        unit.replace("[Service]", "[Service]\nExecStrat=/bin/true"),
        unit.replace("ProtectSystem=strict", "ProtectSystem=very"),
    ];
    for (i, b) in broken.iter().enumerate() {
        assert!(verify_unit(b).is_err(), "systemd-analyze verify accepted broken unit #{i}");
    }
}

/// The directives the agent's operation depends on, which verify cannot judge.
#[test]
fn systemd_unit_has_what_the_agent_needs() {
    let unit = read(UNIT);
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        EXEC_START,
        "Restart=always",
        "Wants=network-online.target",
        "After=network-online.target",
        "EnvironmentFile=-/etc/default/weft",
        "RuntimeDirectoryPreserve=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(has(line), "{UNIT} lacks `{line}`");
    }
    let value = |key: &str| -> String {
        unit.lines().filter_map(|l| l.trim().strip_prefix(&format!("{key}="))).collect::<Vec<_>>().join(" ")
    };
    let caps = value("CapabilityBoundingSet");
    let caps: Vec<&str> = caps.split_whitespace().collect();
    assert!(caps.contains(&"CAP_NET_ADMIN") && caps.contains(&"CAP_NET_RAW"), "{caps:?}");
    // The directories the agent writes by default must be writable under ProtectSystem=strict.
    let help = agent_help();
    let writable: Vec<String> = value("ReadWritePaths").split_whitespace().map(str::to_string).collect();
    for flag in ["--state-dir", "--cni-conf-dir", "--ipam-dir"] {
        let default = help.defaults.get(flag).unwrap_or_else(|| panic!("no default for {flag} in the agent's help"));
        assert!(writable.contains(default), "{UNIT}: ReadWritePaths lacks {default} (the default of {flag})");
    }
    assert_eq!(value("ProtectKernelTunables"), "no", "the agent writes /proc/sys/net");
    assert!(!has("PrivateNetwork=yes") && !has("PrivateUsers=yes"), "the agent must run in the host's namespaces");
}

// ---- Kubernetes ----

fn yamllint(path: &str) -> Output {
    run(
        "yamllint",
        &["--strict", "-c", YAMLLINT_CONFIG, path],
        "apt-get install yamllint (Debian package) or pip3 install yamllint",
    )
}

#[test]
fn manifests_pass_yamllint() {
    let out = yamllint("deploy");
    assert!(out.ok, "yamllint found problems in deploy/:\n{}", out.text);
}

#[test]
fn yamllint_rejects_a_broken_manifest() {
    let dir = temp_dir("yamllint");
    let path = dir.join("weft.yaml");
    std::fs::write(&path, read(MANIFEST).replace("  selector:\n", "  selector:\n   oops: [\n")).unwrap();
    let out = yamllint(path.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.ok, "yamllint accepted a broken manifest:\n{}", out.text);
}

/// `kubernetes-validate --strict` (unknown fields are errors) against one version. It exits 0
/// when it has no schema for a kind (only a WARN line), so every resource must have passed.
fn validate(path: &Path, version: &str) -> Result<(), String> {
    let out = run(
        "kubernetes-validate",
        &["--strict", "-k", version, path.to_str().expect("utf-8 path")],
        "pip3 install kubernetes-validate",
    );
    let short = version.rsplit_once('.').map_or(version, |(v, _)| v);
    let all_passed =
        RESOURCES.iter().all(|r| out.text.contains(&format!("passed for resource {r} against version {short}")));
    let complaints = out.text.lines().any(|l| l.starts_with("WARN") || l.starts_with("ERROR"));
    if out.ok && all_passed && !complaints { Ok(()) } else { Err(out.text) }
}

#[test]
fn manifest_validates_against_kubernetes_schemas() {
    let path = repo().join(MANIFEST);
    let failures: Vec<String> = KUBERNETES_VERSIONS
        .iter()
        .filter_map(|v| validate(&path, v).err().map(|text| format!("Kubernetes {v}:\n{text}")))
        .collect();
    assert!(failures.is_empty(), "{MANIFEST} does not validate:\n{}", failures.join("\n"));
}

#[test]
fn kubernetes_validate_rejects_a_broken_manifest() {
    let manifest = read(MANIFEST);
    let broken = [
        // An unknown field (caught by --strict only).
        manifest.replace("      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwrk: true\n"),
        // A wrong type.
        manifest.replace("terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: soon"),
        // A kind that does not exist.
        manifest.replace("kind: DaemonSet", "kind: DaemonSett"),
    ];
    let dir = temp_dir("kubeval");
    for (i, b) in broken.iter().enumerate() {
        assert_ne!(b, &manifest, "broken manifest #{i} is unchanged: the test's edit no longer applies");
        let path = dir.join(format!("broken-{i}.yaml"));
        std::fs::write(&path, b).unwrap();
        assert!(validate(&path, "1.37.0").is_err(), "kubernetes-validate accepted broken manifest #{i}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- flags and environment variables ----

struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
    defaults: BTreeMap<String, String>,
}

/// Parses the flags, env names and defaults out of the built agent's `run --help`.
fn agent_help() -> Help {
    let agent = weft_lab::bins::path("weft-agent").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&agent).args(["run", "--help"]).output().expect("run weft-agent run --help");
    assert!(out.status.success(), "weft-agent run --help failed");
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    let mut help = Help { flags: BTreeSet::new(), envs: BTreeSet::new(), defaults: Default::default() };
    let mut current = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("--") {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            let flag = format!("--{name}");
            help.flags.insert(flag.clone());
            current = Some(flag);
        } else if t.starts_with("-h, --help") {
            current = None;
        } else if let Some(env) = t.strip_prefix("[env: ") {
            help.envs.insert(env.split('=').next().unwrap().to_string());
        } else if let (Some(flag), Some(default)) = (&current, t.strip_prefix("[default: ")) {
            help.defaults.insert(flag.clone(), default.trim_end_matches(']').to_string());
        }
    }
    help.flags.remove("--help");
    assert!(help.flags.len() >= 20 && help.envs.len() >= 20, "could not parse `weft-agent run --help`:\n{text}");
    help
}

/// `--flag` and `WEFT_NAME` tokens of a text.
fn names_used(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let word =
        |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect() };
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        let name = word(&text[i + 2..]);
        let starts_with_letter = name.starts_with(|c: char| c.is_ascii_lowercase());
        if before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '-') && starts_with_letter {
            flags.insert(format!("--{name}"));
        }
    }
    for (i, _) in text.match_indices("WEFT_") {
        let name = word(&text[i + 5..]);
        if !name.is_empty() && !name.ends_with('_') {
            envs.insert(format!("WEFT_{name}"));
        }
    }
    (flags, envs)
}

#[test]
fn deploy_files_use_only_real_agent_flags_and_variables() {
    let help = agent_help();
    // Each flag's variable is WEFT_ + its name in upper case: the docs promise it.
    for flag in &help.flags {
        let env = format!("WEFT_{}", flag[2..].to_uppercase().replace('-', "_"));
        assert!(help.envs.contains(&env), "flag {flag} has no variable {env}");
    }
    let mut used_any = (0, 0);
    for file in [UNIT, ENV_FILE, MANIFEST] {
        let (flags, envs) = names_used(&read(file));
        let bad_flags: Vec<_> = flags.difference(&help.flags).collect();
        let bad_envs: Vec<_> = envs.difference(&help.envs).collect();
        assert!(
            bad_flags.is_empty() && bad_envs.is_empty(),
            "{file} uses names `weft-agent run` does not know: {bad_flags:?} {bad_envs:?}\nknown: {:?}",
            help.flags
        );
        used_any.0 += flags.len();
        used_any.1 += envs.len();
    }
    assert!(used_any.0 > 0 && used_any.1 > 0, "the check found no names at all: the scanner is broken");
    // The scanner itself: a misspelt name must be seen.
    let (f, e) = names_used("args: [run, --node-nmae=x]\nWEFT_PEER=a");
    assert!(f.contains("--node-nmae") && e.contains("WEFT_PEER"));
}

/// The env file is a valid EnvironmentFile (KEY=value lines) and lists every flag's variable,
/// so it stays the complete reference when the agent gains a flag.
#[test]
fn env_file_is_well_formed_and_complete() {
    let text = read(ENV_FILE);
    let help = agent_help();
    let mut listed = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let assignment = line.strip_prefix('#').unwrap_or(line);
        if let Some((key, _)) = assignment.split_once('=').filter(|(k, _)| k.starts_with("WEFT_")) {
            assert!(help.envs.contains(key), "{ENV_FILE}:{}: {key} is not a weft-agent variable", n + 1);
            listed.insert(key.to_string());
        } else {
            assert!(line.starts_with('#'), "{ENV_FILE}:{}: not a comment nor KEY=value: {line}", n + 1);
        }
    }
    let missing: Vec<_> = help.envs.difference(&listed).collect();
    assert!(missing.is_empty(), "{ENV_FILE} does not list {missing:?}");
}

// ---- image ----

/// No image builder runs here, so the Dockerfile is checked by reading it: known instructions
/// only (continuations joined), a base image, nft installed, and COPY sources that are the
/// workspace's two release binaries at the paths cargo builds them to.
#[test]
fn dockerfile_is_well_formed() {
    const INSTRUCTIONS: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    let text = read("deploy/Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "deploy/Dockerfile ends inside a continued line");
    let mut copied = BTreeSet::new();
    for l in &logical {
        let (instr, rest) = l.split_once(' ').unwrap_or((l, ""));
        assert!(INSTRUCTIONS.contains(&instr), "deploy/Dockerfile: unknown instruction `{instr}`");
        assert!(!rest.trim().is_empty(), "deploy/Dockerfile: `{instr}` without arguments");
        if instr == "COPY" {
            let args: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(args.len(), 2, "deploy/Dockerfile: COPY <binary> <dest> expected: {l}");
            let src = Path::new(args[0]);
            assert_eq!(
                src.parent(),
                Some(Path::new("target/x86_64-unknown-linux-gnu/release")),
                "deploy/Dockerfile copies from where cargo does not build: {l}"
            );
            let name = src.file_name().unwrap().to_str().unwrap();
            assert_eq!(Path::new(args[1]), Path::new("/usr/local/bin").join(name), "{l}");
            copied.insert(name.to_string());
        }
    }
    assert!(logical.first().is_some_and(|l| l.starts_with("FROM ")), "deploy/Dockerfile must start with FROM");
    assert!(logical.iter().any(|l| l.starts_with("RUN ") && l.contains("nftables")), "the image needs nft");
    assert_eq!(copied, BTreeSet::from(["weft".to_string(), "weft-agent".to_string()]));
    // The manifest runs what the image holds.
    let manifest = read(MANIFEST);
    assert!(manifest.contains("cp /usr/local/bin/weft ") && manifest.contains("- /usr/local/bin/weft-agent"));
    // The build context lets exactly those binaries through.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for name in &copied {
        assert!(ignore.lines().any(|l| l == format!("!target/x86_64-unknown-linux-gnu/release/{name}")));
    }
}

// ---- Prometheus ----

const RULES: &str = "deploy/prometheus/weft-alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/weft-alerts.test.yaml";
const POD_MONITOR: &str = "deploy/prometheus/podmonitor.yaml";
const PROMTOOL: &str = "apt-get install prometheus (Debian's package ships promtool)";
/// Labels the scrape adds to every series: the agent does not export them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn check_rules(path: &Path) -> Output {
    run("promtool", &["check", "rules", path.to_str().expect("utf-8 path")], PROMTOOL)
}

/// `promtool test rules` on copies of the rules (as given) and their unit tests, side by side.
fn test_rules(rules: &str) -> Output {
    let dir = temp_dir("promtool");
    std::fs::write(dir.join("weft-alerts.yaml"), rules).expect("write rules copy");
    std::fs::write(dir.join("weft-alerts.test.yaml"), read(RULE_TESTS)).expect("write rule tests copy");
    let out = run("promtool", &["test", "rules", dir.join("weft-alerts.test.yaml").to_str().unwrap()], PROMTOOL);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = check_rules(&repo().join(RULES));
    assert!(out.ok, "promtool check rules {RULES} failed:\n{}", out.text);
}

/// Copies of `text` with one edit `(from, to)` each (the first occurrence); an edit that no longer
/// applies fails the test.
fn broken_copies(text: &str, edits: &[(&str, &str)]) -> Vec<String> {
    let copies: Vec<String> = edits.iter().map(|(from, to)| text.replacen(from, to, 1)).collect();
    for (copy, (from, _)) in copies.iter().zip(edits) {
        assert_ne!(copy, text, "`{from}` is not there any more: the test's edit no longer applies");
    }
    copies
}

#[test]
fn promtool_check_rejects_broken_rules() {
    let broken = broken_copies(
        &read(RULES),
        &[
            // PromQL that does not parse.
            ("expr: weft_ready == 0", "expr: weft_ready =="),
            // A duration without a unit Prometheus knows.
            ("for: 5m", "for: 5 minutes"),
            // A template that does not parse.
            ("{{ $labels.instance }}", "{{ $labels.instance }"),
        ],
    );
    let dir = temp_dir("promcheck");
    for (i, b) in broken.iter().enumerate() {
        let path = dir.join(format!("broken-{i}.yaml"));
        std::fs::write(&path, b).unwrap();
        assert!(!check_rules(&path).ok, "promtool check rules accepted broken rules #{i}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alert_rule_unit_tests_pass() {
    let out = test_rules(&read(RULES));
    assert!(out.ok, "promtool test rules {RULE_TESTS} failed:\n{}", out.text);
}

/// A rule that can never fire, or fires with other labels, fails its unit test.
#[test]
fn alert_rule_unit_tests_catch_rules_that_cannot_fire() {
    let broken = broken_copies(
        &read(RULES),
        &[
            ("weft_isolated == 1", "weft_isolated == 2"),
            ("> ignoring(state) weft_peers_programmed", "< ignoring(state) weft_peers_programmed"),
            ("{state=\"mtu\"}", "{state=\"MTU\"}"),
            ("rate(weft_reconcile_errors_total[5m]) > 0", "rate(weft_reconcile_errors_total[5m]) < 0"),
        ],
    );
    for (i, b) in broken.iter().enumerate() {
        assert!(!test_rules(b).ok, "the unit tests accepted broken rules #{i}");
    }
}

/// The alerts of the rule file: each one's name and its lines (trimmed), up to the next alert.
fn alerts(rules: &str) -> Vec<(String, Vec<&str>)> {
    let mut alerts: Vec<(String, Vec<&str>)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push((name.to_string(), Vec::new()));
        } else if let Some((_, lines)) = alerts.last_mut() {
            lines.push(line);
        }
    }
    alerts
}

/// Alerts that some unit test expects to fire: an `alertname:` whose `exp_alerts` are not empty.
fn alerts_tested_firing(tests: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    lines
        .windows(3)
        .filter(|w| w[1] == "exp_alerts:" && w[2].starts_with("- exp_labels:"))
        .filter_map(|w| w[0].strip_prefix("alertname: ").map(str::to_string))
        .collect()
}

#[test]
fn every_alert_says_what_to_do_and_is_unit_tested_firing() {
    let rules = read(RULES);
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 12, "found only {} alerts in {RULES}: the scanner is broken", alerts.len());
    for (name, lines) in &alerts {
        let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
        assert!(has("expr: ") && has("for: "), "{name}: no expr or no `for:`");
        assert!(has("severity: critical") || has("severity: warning"), "{name}: severity must be critical or warning");
        assert!(has("summary: ") && has("description: "), "{name}: a summary and a description are needed");
        let text = lines.join(" ");
        assert!(text.contains("See docs/"), "{name}: the description must point to the docs");
    }
    let tested = alerts_tested_firing(&read(RULE_TESTS));
    let untested: Vec<&String> = alerts.iter().map(|(name, _)| name).filter(|n| !tested.contains(*n)).collect();
    assert!(untested.is_empty(), "{RULE_TESTS} has no case where these fire: {untested:?}");
    // The scanner itself: an empty expectation does not count.
    let empty = alerts_tested_firing("alertname: A\nexp_alerts: []\nalertname: B\nexp_alerts:\n  - exp_labels: {}");
    assert_eq!(empty, BTreeSet::from(["B".to_string()]));
}

/// Series names and `label="value"` pairs of an OpenMetrics text.
fn exported_series(metrics: &str) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut series: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_string()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{').and_then(|r| r.split_once('}')).map(|(inner, _)| inner) {
            for (key, value) in inner.split(',').filter_map(|pair| pair.split_once('=')) {
                labels.insert((key.trim().to_string(), value.trim_matches('"').to_string()));
            }
        }
    }
    series
}

/// A `weft_*` series a text names, with the label matchers that follow it in braces.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    /// `(label, values)`: the value of `=`, or the alternatives of a plain `=~` ("a|b").
    matchers: Vec<(String, Vec<String>)>,
}

fn selectors(text: &str) -> Vec<Selector> {
    let is_name_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    for (i, _) in text.match_indices("weft_") {
        if text[..i].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let rest = &text[i..];
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let mut matchers = Vec::new();
        if let Some((inner, _)) = rest[end..].strip_prefix('{').and_then(|r| r.split_once('}')) {
            for m in inner.split(',') {
                let Some((key, value)) = m.split_once('=') else { continue };
                let (key, value) = (key.trim(), value.trim_start_matches('~').trim().trim_matches('"'));
                if !key.ends_with('!') {
                    matchers.push((key.to_string(), value.split('|').map(str::to_string).collect()));
                }
            }
        }
        found.push(Selector { name: rest[..end].to_string(), matchers });
    }
    found
}

/// Every series the rules and their unit tests name, with every label and value they match on,
/// is one the built agent exports: read from a real agent's /metrics in a lab node namespace.
#[test]
fn alert_rules_name_only_series_the_agent_exports() {
    weft_lab::require_root();
    let lab = Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 2, subnets: 1, ..LabSpec::default() })
        .expect("build lab");
    // As the DaemonSet runs it: /metrics on the node IP too, for Prometheus; dual-stack, so that
    // the series of both families exist.
    let extra_args = vec!["--metrics-addr=0.0.0.0:9474".into(), "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56".into()];
    let options = AgentOptions { extra_args, ..AgentOptions::default() };
    let cluster = Cluster::start(lab, options).expect("start agents");
    cluster.wait_converged(Duration::from_secs(30)).expect("agents converge");
    // Scraped the way the PodMonitor does: the node IP, port 9474. It serves /metrics only.
    let node = &cluster.lab.nodes[0];
    let scrape = |path: &str| weft_lab::http::get(&node.ns.path(), (node.ip, 9474).into(), path).expect("scrape");
    let (code, metrics) = scrape("/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(scrape("/status").0, 404, "the metrics listener must not serve /status");
    let exported = exported_series(&metrics);
    assert!(exported.contains_key("weft_ready"), "no weft_ready in the agent's /metrics:\n{metrics}");
    let mut checked = 0;
    for file in [RULES, RULE_TESTS] {
        for s in selectors(&read(file)) {
            let labels = exported.get(&s.name).unwrap_or_else(|| {
                panic!("{file} names {}, which the agent does not export; it exports {:?}", s.name, exported.keys())
            });
            for (key, values) in s.matchers.iter().filter(|(key, _)| !TARGET_LABELS.contains(&key.as_str())) {
                for value in values {
                    let pair = (key.clone(), value.clone());
                    assert!(
                        labels.contains(&pair),
                        "{file}: {}{{{key}=\"{value}\"}} is not exported: {labels:?}",
                        s.name
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} series found in the rules: the scanner is broken");
    // The scanner itself: a misspelt name and a label are seen.
    let seen = selectors("rate(weft_reconcile_error_total[5m]) and weft_peers{state=~\"alive|gone\", job!=\"x\"}");
    assert_eq!(seen[0], Selector { name: "weft_reconcile_error_total".into(), matchers: vec![] });
    assert_eq!(seen[1].matchers, vec![("state".to_string(), vec!["alive".to_string(), "gone".to_string()])]);
}

/// The PodMonitor selects the DaemonSet's pods in their namespace, on the metrics path.
#[test]
fn podmonitor_selects_the_weft_pods() {
    let monitor = read(POD_MONITOR);
    let has = |text: &str, line: &str| text.lines().any(|l| l.trim() == line);
    for line in ["apiVersion: monitoring.coreos.com/v1", "kind: PodMonitor", "namespace: kube-system", "path: /metrics"]
    {
        assert!(has(&monitor, line), "{POD_MONITOR} lacks `{line}`");
    }
    let selector = monitor
        .split_once("matchLabels:\n")
        .and_then(|(_, rest)| rest.lines().next())
        .map(str::trim)
        .unwrap_or_else(|| panic!("{POD_MONITOR} has no matchLabels"));
    let manifest = read(MANIFEST);
    let pod_labels = manifest
        .split_once("  template:\n")
        .and_then(|(_, rest)| rest.split_once("labels:\n"))
        .map(|(_, rest)| rest.lines().next().unwrap_or_default().trim())
        .expect("the DaemonSet's pod template labels");
    assert_eq!(selector, pod_labels, "the PodMonitor selects other pods than the DaemonSet's");
}
