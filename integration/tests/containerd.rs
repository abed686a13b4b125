//! containerd 1.6 (Debian's) through CRI, the kubelet's path: real agents (portmap chained) on two
//! nodes on different subnets, a containerd in each node's namespace whose CNI config is the
//! conflist the agent writes, pod sandboxes run, inspected and removed over the CRI API. Needs root.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use weft_lab::cluster::{AgentOptions, Cluster};
use weft_lab::containerd::{CniSetup, Containerd, link_plugins};
use weft_lab::cri::PodSpec;
use weft_lab::probe::{self, Listener, tcp_source_seen};
use weft_lab::topology::{Lab, LabSpec, Node};
use weft_lab::{bins, cmd, oci, wait};

const IMAGE: &str = "weft.test/pause:1";
const CONVERGE: Duration = Duration::from_secs(30);
const LIMIT: Duration = Duration::from_secs(5);
const CONTAINER_PORT: u16 = 8080;
const HOST_PORT: u16 = 30080;

fn sandbox_image() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (package busybox-static)");
    oci::image_archive(IMAGE, &oci::tar(&oci::pause_layer(busybox)), &["/pause"])
}

/// The node's containerd: CNI config from the agent's conflist dir, plugins `weft` and the
/// reference plugins (portmap) linked into one bin dir.
fn containerd(node: &Node, image: &[u8]) -> Containerd {
    let mut plugins = vec![bins::path("weft").expect("weft built")];
    let reference = std::fs::read_dir("/usr/lib/cni").expect("/usr/lib/cni (containernetworking-plugins)");
    plugins.extend(reference.filter_map(|e| e.ok()).map(|e| e.path()));
    let cni = CniSetup { conf_dir: node.path("net.d"), bin_dir: node.path("cni-bin") };
    link_plugins(&cni.bin_dir, &plugins).expect("link the CNI plugins");
    Containerd::start(&node.ns.path(), &node.path("containerd"), &cni, IMAGE, image)
        .unwrap_or_else(|e| panic!("start containerd on {}: {e}", node.name))
}

/// A sandbox's network namespace, through its pause process (containerd's verbose `info`).
fn sandbox_netns(info: &std::collections::HashMap<String, String>) -> PathBuf {
    let info: Value = serde_json::from_str(info.get("info").expect("verbose info")).expect("info is JSON");
    let pid = info["pid"].as_u64().unwrap_or_else(|| panic!("no pause pid in {info}"));
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

fn ping(from: &Path, to: Ipv4Addr) -> bool {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", from.display())).args(["ping", "-c", "1", "-W", "2", &to.to_string()]);
    cmd::run(&mut c).is_ok()
}

/// What the node's IPAM store holds for `ip`: the content of its allocation file, if any.
fn allocation(node: &Node, ip: Ipv4Addr) -> Option<String> {
    let store = node.path("ipam").join("weft");
    let entries = std::fs::read_dir(&store).unwrap_or_else(|e| panic!("read {}: {e}", store.display()));
    let file =
        entries.filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().starts_with(&format!("{ip}@")))?;
    Some(std::fs::read_to_string(file.path()).expect("read the allocation"))
}

fn weft_veths(node: &Node) -> Vec<String> {
    let links = node.ns.link_names().expect("list links");
    links.into_iter().filter(|n| weft_cni::names::is_weft_veth(n)).collect()
}

/// libcni's cached result of the weft network for sandbox `id`.
fn cni_cache(runtime: &Containerd, id: &str) -> Value {
    let files = runtime.leftovers(id);
    let file = files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("weft-{id}"))))
        .unwrap_or_else(|| panic!("no cached weft result for {id} among {files:?}"));
    serde_json::from_str(&std::fs::read_to_string(file).expect("read the cache")).expect("the cache is JSON")
}

struct Sandbox {
    id: String,
    ip: Ipv4Addr,
    netns: PathBuf,
}

fn run_sandbox(runtime: &mut Containerd, pod: &PodSpec, cidr: Ipv4Net) -> Sandbox {
    let id = runtime.run_pod_sandbox(pod).unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", pod.name));
    let status = runtime.pod_sandbox_status(&id).expect("PodSandboxStatus");
    let ip: Ipv4Addr = status.ip.parse().unwrap_or_else(|_| panic!("{}: no IPv4 address: {status:?}", pod.name));
    assert!(cidr.contains(&ip), "{} got {ip}, outside its node's PodCIDR {cidr}", pod.name);
    Sandbox { id, ip, netns: sandbox_netns(&status.info) }
}

#[test]
fn containerd_through_cri_gives_pods_addresses_routes_them_across_subnets_maps_host_ports_and_releases_them() {
    weft_lab::require_root();
    let lab =
        Lab::build(&weft_lab::unique_prefix(), LabSpec { nodes: 2, subnets: 2, gro: false, ..LabSpec::default() })
            .expect("build lab");
    let options = AgentOptions { extra_args: vec!["--portmap".into()], ..AgentOptions::default() };
    let c = Cluster::start(lab, options).expect("start agents");
    c.wait_converged(CONVERGE).expect("cluster converges");
    let image = sandbox_image();
    // Declared after the cluster: dropped (sandboxes removed, containerd stopped) before it.
    let mut runtimes: Vec<Containerd> = c.lab.nodes.iter().map(|n| containerd(n, &image)).collect();
    let (n1, n2) = (&c.lab.nodes[0], &c.lab.nodes[1]);
    assert_ne!(n1.subnet, n2.subnet);

    let cidr = |i: usize| c.pod_cidr(i).unwrap().parse::<Ipv4Net>().unwrap();
    let pod = |name: &str, host_ports| PodSpec {
        name: name.into(),
        namespace: "shop".into(),
        uid: format!("uid-{name}"),
        host_ports,
        cgroup_parent: format!("/{}", c.lab.prefix),
    };
    let web = run_sandbox(&mut runtimes[0], &pod("web", vec![(CONTAINER_PORT, HOST_PORT)]), cidr(0));
    let client = run_sandbox(&mut runtimes[1], &pod("client", vec![]), cidr(1));

    // The runtime's container ID is what the plugin recorded for the address.
    assert_eq!(allocation(n1, web.ip), Some(format!("{}\neth0\n", web.id)));
    assert_eq!(allocation(n2, client.ip), Some(format!("{}\neth0\n", client.id)));

    // What containerd handed the plugins (libcni keeps it with the result, Go field names): the
    // kubelet's pod identity in CNI_ARGS, and the hostPort as the portMappings capability.
    let cached = cni_cache(&runtimes[0], &web.id);
    let args: Vec<(String, String)> = serde_json::from_value(cached["cniArgs"].clone()).expect("cniArgs");
    assert!(args.contains(&("K8S_POD_NAMESPACE".into(), "shop".into())), "{args:?}");
    assert!(args.contains(&("K8S_POD_NAME".into(), "web".into())), "{args:?}");
    let mapping = &cached["capabilityArgs"]["portMappings"][0];
    let ports = (mapping["HostPort"].as_u64(), mapping["ContainerPort"].as_u64());
    assert_eq!(ports, (Some(HOST_PORT.into()), Some(CONTAINER_PORT.into())), "{cached}");

    assert!(ping(&web.netns, client.ip), "web cannot reach client across the router");
    assert!(ping(&client.netns, web.ip), "client cannot reach web across the router");
    let seen = tcp_source_seen(client.netns.as_path(), client.ip, 7001, web.netns.as_path()).expect("web -> client");
    assert_eq!(seen, IpAddr::V4(web.ip), "source address not kept");

    // hostPort: n2 connects to n1's address; portmap on n1 sends it to the web pod.
    let listener = Listener::start(web.netns.as_path(), CONTAINER_PORT, LIMIT).expect("listen in web");
    probe::connect(&n2.ns, SocketAddr::new(n1.ip, HOST_PORT), LIMIT).expect("connect to the hostPort");
    assert_eq!(listener.peer().expect("accepted").ip(), n2.ip, "hostPort peer");

    for (i, sandbox) in [(0, &web), (1, &client)] {
        let node = &c.lab.nodes[i];
        // What containerd keeps outside its own directory while the sandbox runs (libcni's results
        // for weft and loopback, the shim socket): found here, so the drop guard would find it too.
        let files = runtimes[i].leftovers(&sandbox.id);
        assert_eq!(files.len(), 3, "{files:?}");
        runtimes[i].stop_and_remove(&sandbox.id).expect("StopPodSandbox and RemovePodSandbox");
        assert_eq!(allocation(node, sandbox.ip), None, "{} still holds {}", node.name, sandbox.ip);
        let veths = || weft_veths(node).is_empty().then_some(());
        wait::until("weft veths to be gone", LIMIT, Duration::from_millis(20), veths)
            .unwrap_or_else(|e| panic!("{e}: {:?} on {}", weft_veths(node), node.name));
        assert_eq!(runtimes[i].leftovers(&sandbox.id), Vec::<PathBuf>::new(), "files left for {}", sandbox.id);
    }
}
