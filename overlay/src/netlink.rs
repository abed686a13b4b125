//! The one place that speaks rtnetlink: typed operations over one connection, errors mapped once.
//! Everything here is a single kernel request or dump; deciding what to request lives elsewhere.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::ErrorMessage;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, TokioSocket};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::mac::Mac;
use crate::objects::{FdbEntry, Link, LinkChange, MAIN_TABLE, Neighbour, Route, VxlanAttrs, VxlanSpec, default_metric};
use crate::underlay::Family;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {message}")]
    Kernel { op: String, errno: Option<i32>, message: String },
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => *errno,
            NetlinkError::Socket(e) | NetlinkError::Netns { source: e, .. } => e.raw_os_error(),
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }

    /// The object to read, change or delete is not there (each object kind has its own errno).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENODEV | libc_errno::ENOENT | libc_errno::ESRCH | libc_errno::EADDRNOTAVAIL)
        )
    }
}

/// The few errno values the callers branch on.
pub mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EADDRNOTAVAIL: i32 = 99;
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A new veth pair whose peer is created directly inside another network namespace.
#[derive(Debug)]
pub struct VethSpec<'a> {
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub master: Option<u32>,
    pub peer_name: String,
    /// `None` leaves the kernel's random MAC, for callers that set it later.
    pub peer_mac: Option<Mac>,
    pub peer_netns: BorrowedFd<'a>,
}

/// A routing socket being opened inside another network namespace, on its own thread, so the
/// caller can do other work meanwhile. A socket belongs to the namespace it was created in, so
/// the short-lived thread enters the target namespace; the caller's thread never moves.
#[derive(Debug)]
pub struct PendingSocket {
    thread: std::thread::JoinHandle<io::Result<Socket>>,
    path: PathBuf,
}

impl PendingSocket {
    pub fn open(ns: File, path: &Path) -> PendingSocket {
        // The thread only makes two syscalls: a small stack keeps its start-up cheap.
        let thread = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || socket_entering(&ns));
        let thread = match thread {
            Ok(thread) => thread,
            // Without a thread the socket cannot be made; report it when joined.
            Err(e) => std::thread::spawn(move || Err(e)),
        };
        PendingSocket { thread, path: path.to_path_buf() }
    }

    /// Waits for the socket and connects over it. Must run inside a tokio runtime.
    pub fn connect(self) -> Result<Netlink> {
        let path = self.path;
        let socket = self
            .thread
            .join()
            .map_err(|_| NetlinkError::Socket(io::Error::other("netns thread panicked")))?
            .map_err(|source| NetlinkError::Netns { path, source })?;
        Netlink::from_socket(socket)
    }
}

/// A routing socket inside the network namespace `ns`, made by moving the calling thread into
/// it: only for a thread that ends right after (a socket stays in the namespace it was made in).
pub fn socket_entering(ns: &File) -> io::Result<Socket> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Socket::new(NETLINK_ROUTE)
}

/// A connection to the kernel's routing netlink in one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// Connects in the caller's network namespace. Must run inside a tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        Self::from_socket(socket)
    }

    /// Connects inside the network namespace at `path` (a /run/netns file or /proc/PID/ns/net),
    /// without moving the calling thread.
    pub fn connect_in(path: &Path) -> Result<Netlink> {
        let ns = File::open(path).map_err(|source| NetlinkError::Netns { path: path.to_path_buf(), source })?;
        PendingSocket::open(ns, path).connect()
    }

    fn from_socket(socket: Socket) -> Result<Netlink> {
        socket.set_ext_ack(true).map_err(NetlinkError::Socket)?;
        socket.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        // Large dumps (thousands of routes) arrive in bursts.
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024_i32);
        #[allow(unsafe_code)]
        // SAFETY: the fd comes from a live Socket whose ownership `into_raw_fd` gives up, so the
        // TokioSocket becomes its only owner.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    // ---- links ----

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let found = self.handle.link().get().match_name(name).execute().try_next().await;
        optional(found, || format!("get link {name}")).map(|m| m.map(|m| parse_link(&m)))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let found = self.handle.link().get().match_index(index).execute().try_next().await;
        optional(found, || format!("get link #{index}")).map(|m| m.map(|m| parse_link(&m)))
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(kernel("dump links"))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn add_bridge(&self, name: &str, mtu: u32, mac: Mac) -> Result<()> {
        let msg = LinkBridge::new(name).mtu(mtu).address(mac.0.to_vec()).build();
        self.handle.link().add(msg).execute().await.map_err(kernel(format!("create bridge {name}")))
    }

    /// Creates the pair in one request: the host end up (and on `master`), the peer directly in
    /// its namespace (down: the kernel ignores flags for the peer).
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        self.handle
            .link()
            .add(veth_message(spec))
            .execute()
            .await
            .map_err(kernel(format!("create veth {} / {}", spec.name, spec.peer_name)))
    }

    pub async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let a = &spec.attrs;
        let mut msg = LinkVxlan::new(&spec.name, a.vni).port(a.port).learning(a.learning).udp_csum(a.udp_csum);
        match a.local {
            Some(IpAddr::V4(local)) => msg = msg.local(local),
            Some(IpAddr::V6(local)) => msg = msg.local6(local),
            None => {}
        }
        if let Some(dev) = a.underlay {
            msg = msg.dev(dev);
        }
        let msg = msg.mtu(spec.mtu).address(spec.mac.0.to_vec()).up().build();
        self.handle.link().add(msg).execute().await.map_err(kernel(format!("create vxlan {}", spec.name)))
    }

    pub async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let msg = link_change_message(index, change);
        self.handle.link().set(msg).execute().await.map_err(kernel(format!("change link #{index}")))
    }

    /// Turns source-MAC learning of an existing VXLAN device on or off in place (one of the few
    /// VXLAN attributes the kernel lets change without recreating the device).
    pub async fn set_vxlan_learning(&self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Learning(on)])),
        ]));
        self.handle.link().change(msg).execute().await.map_err(kernel(format!("set learning on vxlan #{index}")))
    }

    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        self.handle
            .link()
            .set_port(hairpin_message(index, on))
            .execute()
            .await
            .map_err(kernel(format!("set hairpin on link #{index}")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle.link().del(index).execute().await.map_err(kernel(format!("delete link #{index}")))
    }

    pub async fn delete_link_by_name(&self, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_name(name).build();
        self.handle.link().del_with_message(msg).execute().await.map_err(kernel(format!("delete link {name}")))
    }

    // ---- addresses ----

    /// The addresses of both families on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        // Without strict checking the kernel ignores a link filter and dumps every address.
        let all = self.dump_addresses(AddressFamily::Unspec).await?;
        Ok(all.into_iter().filter(|(i, _)| *i == index).map(|(_, a)| a).collect())
    }

    /// Every address of both families of the namespace in one dump, as (link index, address).
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpNet)>> {
        self.dump_addresses(AddressFamily::Unspec).await
    }

    /// Every address of one family in one dump, as (link index, address).
    pub async fn all_addresses_of(&self, family: Family) -> Result<Vec<(u32, IpNet)>> {
        self.dump_addresses(match family {
            Family::Ipv4 => AddressFamily::Inet,
            Family::Ipv6 => AddressFamily::Inet6,
        })
        .await
    }

    async fn dump_addresses(&self, family: AddressFamily) -> Result<Vec<(u32, IpNet)>> {
        let mut req = self.handle.address().get();
        req.message_mut().header.family = family;
        let msgs: Vec<AddressMessage> = req.execute().try_collect().await.map_err(kernel("dump addresses"))?;
        Ok(msgs.iter().filter_map(|m| Some((m.header.index, parse_address(m)?))).collect())
    }

    /// Adds an address (see [`address_message`]).
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self.handle.address().add(index, addr.addr(), addr.prefix_len());
        *req.message_mut() = address_message(index, addr);
        req.execute().await.map_err(kernel(format!("add address {addr} to link #{index}")))
    }

    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        if addr.addr().is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(kernel(format!("delete address {addr} from link #{index}")))
    }

    // ---- routes ----

    /// IPv4 and IPv6 routes of the main table (one dump per family: pod routes are of the pod
    /// family whatever the underlay's, direct routes of the underlay's).
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for request in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()]
        {
            let msgs: Vec<RouteMessage> =
                self.handle.route().get(request).execute().try_collect().await.map_err(kernel("dump routes"))?;
            out.extend(msgs.iter().filter_map(parse_route).filter(|r| r.table == MAIN_TABLE));
        }
        Ok(out)
    }

    /// Adds a route; with `replace` an existing route to the same destination is changed in
    /// place (atomically, so traffic is never without a route).
    pub async fn add_route(&self, route: &Route, replace: bool) -> Result<()> {
        let op = || format!("add route {}", describe_route(route));
        let req = self.handle.route().add(route_message(route, RouteScope::Universe).map_err(invalid(op()))?);
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(kernel(op()))
    }

    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let op = || format!("delete route {}", describe_route(route));
        let msg = route_message(route, RouteScope::NoWhere).map_err(invalid(op()))?;
        self.handle.route().del(msg).execute().await.map_err(kernel(op()))
    }

    // ---- neighbours and FDB ----

    /// IPv4 and IPv6 neighbour entries of one device.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut all = self.all_neighbours().await?;
        all.retain(|n| n.ifindex == ifindex);
        Ok(all)
    }

    /// IPv4 and IPv6 neighbour entries of every device, one dump per family.
    pub async fn all_neighbours(&self) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let req = self.handle.neighbours().get().set_address_family(family);
            let msgs: Vec<NeighbourMessage> = req.execute().try_collect().await.map_err(kernel("dump neighbours"))?;
            out.extend(msgs.iter().filter_map(parse_neighbour));
        }
        Ok(out)
    }

    pub async fn add_neighbour(&self, n: &Neighbour, replace: bool) -> Result<()> {
        let req = self.handle.neighbours().add(n.ifindex, n.ip).link_layer_address(&n.mac.0);
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(kernel(format!("add neighbour {} lladdr {}", n.ip, n.mac)))
    }

    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(n.ip);
        msg.header.ifindex = n.ifindex;
        msg.attributes.push(NeighbourAttribute::Destination(n.ip.into()));
        self.handle.neighbours().del(msg).execute().await.map_err(kernel(format!("delete neighbour {}", n.ip)))
    }

    /// The device's own (NTF_SELF) forwarding entries; bridge-master entries are skipped.
    pub async fn fdb(&self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut all = self.all_fdb().await?;
        all.retain(|e| e.ifindex == ifindex);
        Ok(all)
    }

    /// The own (NTF_SELF) forwarding entries of every device in one dump.
    pub async fn all_fdb(&self) -> Result<Vec<FdbEntry>> {
        let req = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge);
        let msgs: Vec<NeighbourMessage> = req.execute().try_collect().await.map_err(kernel("dump fdb"))?;
        Ok(msgs.iter().filter(|m| m.header.flags.contains(NeighbourFlags::Own)).filter_map(parse_fdb).collect())
    }

    pub async fn add_fdb(&self, e: &FdbEntry, replace: bool) -> Result<()> {
        let mut req = self.handle.neighbours().add_bridge(e.ifindex, &e.mac.0).flags(NeighbourFlags::Own);
        if let Some(dst) = e.dst {
            req = req.destination(dst);
        }
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(kernel(format!("add fdb {} dst {:?}", e.mac, e.dst)))
    }

    pub async fn delete_fdb(&self, e: &FdbEntry) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = e.ifindex;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
        if let Some(dst) = e.dst {
            msg.attributes.push(NeighbourAttribute::Destination(dst.into()));
        }
        self.handle.neighbours().del(msg).execute().await.map_err(kernel(format!("delete fdb {}", e.mac)))
    }
}

fn kernel(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(msg) => kernel_error(op, &msg),
        other => NetlinkError::Kernel { op, errno: None, message: other.to_string() },
    }
}

/// The kernel's answer to a failed request, with its extended-ACK text when it gave one.
pub(crate) fn kernel_error(op: String, msg: &ErrorMessage) -> NetlinkError {
    let errno = msg.code.map(|c| -c.get());
    let mut message = msg.to_io().to_string();
    if let Some(ext) = ext_ack_message(&msg.header) {
        message = format!("{message} ({ext})");
    }
    NetlinkError::Kernel { op, errno, message }
}

/// The pair in one request: the host end up (and on `master`), the peer directly in its
/// namespace (down: the kernel ignores flags for the peer).
pub(crate) fn veth_message(spec: &VethSpec<'_>) -> LinkMessage {
    let mut peer = LinkUnspec::new_with_name(&spec.peer_name).mtu(spec.mtu).setns_by_fd(spec.peer_netns.as_raw_fd());
    if let Some(mac) = spec.peer_mac {
        peer = peer.address(mac.0.to_vec());
    }
    let mut msg = LinkVeth::new(&spec.name, &spec.peer_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .address(spec.mac.0.to_vec())
        .mtu(spec.mtu)
        .up();
    if let Some(master) = spec.master {
        msg = msg.controller(master);
    }
    msg.build()
}

pub(crate) fn link_change_message(index: u32, change: &LinkChange) -> LinkMessage {
    let mut msg = LinkUnspec::new_with_index(index);
    if let Some(mtu) = change.mtu {
        msg = msg.mtu(mtu);
    }
    if let Some(mac) = change.mac {
        msg = msg.address(mac.0.to_vec());
    }
    if let Some(name) = &change.name {
        msg = msg.name(name.clone());
    }
    match change.master {
        Some(Some(master)) => msg = msg.controller(master),
        Some(None) => msg = msg.nocontroller(),
        None => {}
    }
    match change.up {
        Some(true) => msg = msg.up(),
        Some(false) => msg = msg.down(),
        None => {}
    }
    msg.build()
}

pub(crate) fn hairpin_message(index: u32, on: bool) -> LinkMessage {
    LinkBridgePort::new(index).hairpin(on).build()
}

/// An address to add. An IPv6 one skips duplicate address detection (IFA_F_NODAD): weft's
/// addresses are unique by allocation, and DAD would leave it unusable ("tentative") for a
/// second or more.
pub(crate) fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    match addr.addr() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, addr.prefix_len()).build(),
        IpAddr::V6(ip) => {
            let mut msg = AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, addr.prefix_len()).build();
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            msg
        }
    }
}

fn invalid(op: String) -> impl FnOnce(String) -> NetlinkError {
    move |message| NetlinkError::Kernel { op, errno: None, message }
}

/// A lookup whose "no such object" answer means `None`, not an error.
fn optional<T>(
    found: std::result::Result<Option<T>, rtnetlink::Error>,
    op: impl FnOnce() -> String,
) -> Result<Option<T>> {
    match found.map_err(kernel(op())) {
        Ok(v) => Ok(v),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The kernel's extended-ACK text (NLMSGERR_ATTR_MSG) after the capped echoed header.
fn ext_ack_message(header: &[u8]) -> Option<String> {
    let mut off = 16; // cap_ack: only the request's nlmsghdr is echoed
    while off + 4 <= header.len() {
        let len = u16::from_ne_bytes([header[off], header[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([header[off + 2], header[off + 3]]) & 0x3fff;
        if len < 4 || off + len > header.len() {
            break;
        }
        if kind == 1 {
            let text = &header[off + 4..off + len];
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

pub(crate) fn parse_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        link: None,
        vxlan: None,
        hairpin: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = Mac::from_slice(a),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::Controller(v) => link.master = Some(*v),
            LinkAttribute::Link(v) => link.link = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => link.vxlan = Some(parse_vxlan(data)),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.hairpin = port.iter().find_map(|p| match p {
                                InfoBridgePort::HairpinMode(on) => Some(*on),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: &[InfoVxlan]) -> VxlanAttrs {
    let mut attrs = VxlanAttrs::default();
    for d in data {
        match d {
            InfoVxlan::Id(v) => attrs.vni = *v,
            InfoVxlan::Port(v) => attrs.port = *v,
            InfoVxlan::Local(v) => attrs.local = Some((*v).into()),
            InfoVxlan::Local6(v) => attrs.local = Some((*v).into()),
            InfoVxlan::Link(v) => attrs.underlay = Some(*v),
            InfoVxlan::Learning(v) => attrs.learning = *v,
            InfoVxlan::UDPCsum(v) => attrs.udp_csum = *v,
            _ => {}
        }
    }
    attrs
}

/// IPv4 addresses carry IFA_LOCAL; IPv6 ones only IFA_ADDRESS (which on an IPv4 point-to-point
/// link is the peer's, hence LOCAL first).
fn parse_address(m: &AddressMessage) -> Option<IpNet> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = || {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    };
    IpNet::new(local.or_else(address)?, m.header.prefix_len).ok()
}

fn parse_route(m: &RouteMessage) -> Option<Route> {
    let family = m.header.address_family;
    let mut dst = match family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut route = Route {
        dst: IpNet::default(),
        gateway: None,
        oif: None,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(m.header.protocol),
        table: u32::from(m.header.table),
        priority: None,
    };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a)?,
            RouteAttribute::Gateway(a) => route.gateway = Some(route_ip(a)?),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.priority = Some(*p),
            _ => {}
        }
    }
    route.dst = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    // The family's default metric is no metric: an IPv6 route weft adds without one is
    // reported with 1024, and must read as the route it added, not as a metric-variant twin.
    route.priority = route.priority.filter(|p| *p != default_metric(&route.dst));
    Some(route)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request for a route. An IPv4 route may have an IPv6 next hop (RTA_VIA); the other way
/// round is refused, as the kernel would.
pub(crate) fn route_message(r: &Route, scope: RouteScope) -> std::result::Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .map_err(|e| e.to_string())?
        .protocol(RouteProtocol::from(r.protocol))
        .table_id(r.table)
        .scope(scope);
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(|e| e.to_string())?;
    }
    if let Some(oif) = r.oif {
        b = b.output_interface(oif);
    }
    if r.onlink {
        b = b.onlink();
    }
    // Explicit also when it is the default, so that deleting the default-metric IPv6 route never
    // takes another metric's route to the same destination (a delete without one matches any).
    let priority = r.priority.unwrap_or_else(|| default_metric(&r.dst));
    if priority != 0 {
        b = b.priority(priority);
    }
    Ok(b.build())
}

fn describe_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    if let Some(priority) = r.priority {
        s.push_str(&format!(" metric {priority}"));
    }
    s
}

fn parse_neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: m.header.ifindex,
        ip: ip?,
        mac: mac?,
        permanent: m.header.state == NeighbourState::Permanent,
    })
}

/// AF_BRIDGE dumps carry NDA_DST undecoded: its length tells the family.
fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v) => Some((*v).into()),
        NeighbourAddress::Inet6(v) => Some((*v).into()),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn parse_fdb(m: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            NeighbourAttribute::Destination(a) => dst = neighbour_ip(a),
            _ => {}
        }
    }
    Some(FdbEntry { ifindex: m.header.ifindex, mac: mac?, dst, permanent: m.header.state == NeighbourState::Permanent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::WEFT_ROUTE_PROTOCOL;

    #[test]
    fn ext_ack_text_is_found_after_the_capped_header() {
        let mut buf = vec![0u8; 16];
        let text = b"Nexthop device required for onlink\0";
        let len = (4 + text.len()) as u16;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&1u16.to_ne_bytes());
        buf.extend_from_slice(text);
        assert_eq!(ext_ack_message(&buf).as_deref(), Some("Nexthop device required for onlink"));
        assert_eq!(ext_ack_message(&buf[..16]), None);
    }

    #[test]
    fn routes_round_trip_through_messages() {
        let route = Route {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("10.244.2.0".parse().unwrap()),
            oif: Some(7),
            onlink: true,
            protocol: WEFT_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            priority: Some(20),
        };
        assert_eq!(parse_route(&route_message(&route, RouteScope::Universe).unwrap()), Some(route.clone()));
        let v6 = Route {
            dst: "fd00:10:244:2::/64".parse().unwrap(),
            gateway: Some("fd00:10:244:2::".parse().unwrap()),
            ..route.clone()
        };
        assert_eq!(parse_route(&route_message(&v6, RouteScope::Universe).unwrap()), Some(v6.clone()));
        // The kernel reports an IPv6 route added without a metric with 1024: the same route.
        let default6 = Route { priority: None, ..v6.clone() };
        let message = route_message(&default6, RouteScope::Universe).unwrap();
        assert!(message.attributes.contains(&RouteAttribute::Priority(1024)));
        assert_eq!(parse_route(&message), Some(default6));
        let default4 = Route { priority: None, ..route.clone() };
        let message = route_message(&default4, RouteScope::Universe).unwrap();
        assert!(!message.attributes.iter().any(|a| matches!(a, RouteAttribute::Priority(_))));
        assert_eq!(parse_route(&message), Some(default4));
        // An IPv6 destination cannot have an IPv4 next hop: refused before the kernel sees it.
        let mixed = Route { gateway: Some("10.244.2.0".parse().unwrap()), ..v6 };
        assert!(route_message(&mixed, RouteScope::Universe).is_err());
    }

    #[test]
    fn addresses_of_either_family_are_read() {
        let mut v4 = AddressMessage::default();
        v4.header.prefix_len = 24;
        v4.attributes.push(AddressAttribute::Address("192.0.2.1".parse().unwrap()));
        v4.attributes.push(AddressAttribute::Local("192.0.2.10".parse().unwrap()));
        assert_eq!(parse_address(&v4), Some("192.0.2.10/24".parse().unwrap()));
        let mut v6 = AddressMessage::default();
        v6.header.prefix_len = 64;
        v6.attributes.push(AddressAttribute::Address("2001:db8:1::10".parse().unwrap()));
        assert_eq!(parse_address(&v6), Some("2001:db8:1::10/64".parse().unwrap()));
        assert_eq!(parse_address(&AddressMessage::default()), None);
    }

    #[test]
    fn bridge_dumps_carry_either_family_undecoded() {
        let v4 = NeighbourAddress::Other(vec![203, 0, 113, 7]);
        assert_eq!(neighbour_ip(&v4), Some("203.0.113.7".parse().unwrap()));
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(v6.octets().to_vec())), Some(v6.into()));
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }
}
