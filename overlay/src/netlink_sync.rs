//! Blocking rtnetlink for a process that lives for a handful of requests (the CNI plugin): no
//! async runtime, no connection task. Requests are sent together in one `sendto` and their
//! answers read back together, so a step costs one round trip however many objects it writes;
//! the kernel carries out the messages of one send in order.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::RouteScope;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::netlink::{
    NetlinkError, VethSpec, address_message, hairpin_message, kernel_error, link_change_message, parse_link,
    route_message, socket_entering, veth_message,
};
use crate::objects::{Link, LinkChange, Route};

type Result<T> = std::result::Result<T, NetlinkError>;

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    AddAddress { index: u32, addr: IpNet },
    SetLink { index: u32, change: &'a LinkChange },
    AddRoute(&'a Route),
    Hairpin { index: u32, on: bool },
}

impl Write<'_> {
    fn describe(&self) -> String {
        match self {
            Write::AddAddress { index, addr } => format!("add address {addr} to link #{index}"),
            Write::SetLink { index, .. } => format!("change link #{index}"),
            Write::AddRoute(r) => format!("add route {}", r.dst),
            Write::Hairpin { index, .. } => format!("set hairpin on link #{index}"),
        }
    }

    fn message(&self) -> Result<NetlinkMessage<RouteNetlinkMessage>> {
        let (payload, flags) = match self {
            Write::AddAddress { index, addr } => {
                (RouteNetlinkMessage::NewAddress(address_message(*index, *addr)), NLM_F_CREATE | NLM_F_EXCL)
            }
            Write::SetLink { index, change } => (RouteNetlinkMessage::SetLink(link_change_message(*index, change)), 0),
            Write::AddRoute(route) => {
                let msg = route_message(route, RouteScope::Universe).map_err(|message| NetlinkError::Kernel {
                    op: self.describe(),
                    errno: None,
                    message,
                })?;
                (RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
            }
            // Bridge port settings go in RTM_NEWLINK (RTM_SETLINK ignores them).
            Write::Hairpin { index, on } => (RouteNetlinkMessage::NewLink(hairpin_message(*index, *on)), 0),
        };
        Ok(request(payload, flags))
    }
}

/// The indexes of a new veth pair; the peer's is known when the kernel echoes the new link
/// (kernels since 6.3 honour NLM_F_ECHO on RTM_NEWLINK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethIndexes {
    pub host: u32,
    pub peer: Option<u32>,
}

/// A blocking routing socket in one network namespace.
#[derive(Debug)]
pub struct SyncNetlink {
    socket: Socket,
    seq: Cell<u32>,
}

impl SyncNetlink {
    /// Connects in the caller's network namespace.
    pub fn connect() -> Result<SyncNetlink> {
        Self::from_socket(Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?)
    }

    /// Connects inside the network namespace `ns` (its file at `path`) by moving the calling
    /// thread into it: only for a thread that ends right after.
    pub fn entering(ns: &File, path: &Path) -> Result<SyncNetlink> {
        let socket = socket_entering(ns).map_err(|source| NetlinkError::Netns { path: path.to_path_buf(), source })?;
        Self::from_socket(socket)
    }

    fn from_socket(socket: Socket) -> Result<SyncNetlink> {
        socket.set_ext_ack(true).map_err(NetlinkError::Socket)?;
        socket.set_cap_ack(true).map_err(NetlinkError::Socket)?;
        Ok(SyncNetlink { socket, seq: Cell::new(0) })
    }

    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut found = None;
        let answer = self.exchange(vec![request(RouteNetlinkMessage::GetLink(msg), 0)], |m| {
            if let RouteNetlinkMessage::NewLink(link) = m {
                found = Some(parse_link(&link));
            }
        });
        match answer.into_iter().next().expect("one answer per request") {
            Ok(()) => Ok(found),
            Err(e) => match kernel_error(format!("get link {name}"), &e) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Creates the pair in one request (see [`veth_message`]), asking the kernel to echo it.
    pub fn add_veth(&self, spec: &VethSpec<'_>) -> Result<VethIndexes> {
        let mut req = request(RouteNetlinkMessage::NewLink(veth_message(spec)), NLM_F_CREATE | NLM_F_EXCL);
        req.header.flags |= NLM_F_ECHO;
        let mut created = None;
        let answer = self.exchange(vec![req], |m| {
            if let RouteNetlinkMessage::NewLink(link) = m {
                let link = parse_link(&link);
                if link.name == spec.name {
                    created = Some(link);
                }
            }
        });
        if let Some(Err(e)) = answer.into_iter().next() {
            return Err(kernel_error(format!("create veth {} / {}", spec.name, spec.peer_name), &e));
        }
        match created {
            Some(link) => Ok(VethIndexes { host: link.index, peer: link.link }),
            None => {
                let link = self.link(&spec.name)?.ok_or_else(|| NetlinkError::Kernel {
                    op: format!("create veth {}", spec.name),
                    errno: None,
                    message: "vanished right after creation".into(),
                })?;
                Ok(VethIndexes { host: link.index, peer: None })
            }
        }
    }

    pub fn delete_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.one(RouteNetlinkMessage::DelLink(msg), || format!("delete link #{index}"))
    }

    pub fn delete_link_by_name(&self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.one(RouteNetlinkMessage::DelLink(msg), || format!("delete link {name}"))
    }

    /// Sends every write at once, in order, and returns each one's outcome (a write after a
    /// failed one is still tried: the caller decides which failures matter).
    pub fn write_all(&self, writes: &[Write<'_>]) -> Vec<Result<()>> {
        let mut outcomes: Vec<Option<Result<()>>> = Vec::with_capacity(writes.len());
        let mut messages = Vec::new();
        for w in writes {
            match w.message() {
                Ok(m) => {
                    messages.push(m);
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let mut answers = self.exchange(messages, |_| {}).into_iter();
        outcomes
            .into_iter()
            .zip(writes)
            .map(|(built, w)| match built {
                Some(failed) => failed,
                None => match answers.next().expect("one answer per request") {
                    Ok(()) => Ok(()),
                    Err(e) => Err(kernel_error(w.describe(), &e)),
                },
            })
            .collect()
    }

    fn one(&self, payload: RouteNetlinkMessage, op: impl FnOnce() -> String) -> Result<()> {
        match self.exchange(vec![request(payload, 0)], |_| {}).into_iter().next() {
            Some(Err(e)) => Err(kernel_error(op(), &e)),
            _ => Ok(()),
        }
    }

    /// Sends `requests` (each asking for an ack) in one datagram and reads until every one is
    /// answered; other messages (replies, echoes) go to `on_message`. One answer per request,
    /// in order: `Ok` for an ack, the kernel's error otherwise.
    fn exchange(
        &self,
        mut requests: Vec<NetlinkMessage<RouteNetlinkMessage>>,
        mut on_message: impl FnMut(RouteNetlinkMessage),
    ) -> Vec<std::result::Result<(), netlink_packet_core::ErrorMessage>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let first = self.seq.get() + 1;
        let mut buf = Vec::new();
        for (k, req) in requests.iter_mut().enumerate() {
            req.header.sequence_number = first + k as u32;
            req.finalize();
            let start = buf.len();
            buf.resize(start + req.buffer_len(), 0);
            req.serialize(&mut buf[start..]);
        }
        self.seq.set(first + requests.len() as u32 - 1);
        let mut answers = vec![None; requests.len()];
        let io_error = |e: io::Error| {
            let mut msg = netlink_packet_core::ErrorMessage::default();
            msg.code = std::num::NonZeroI32::new(-e.raw_os_error().unwrap_or(5));
            msg
        };
        if let Err(e) = self.socket.send_to(&buf, &SocketAddr::new(0, 0), 0) {
            let failed = io_error(e);
            return answers.iter().map(|_| Err(failed.clone())).collect();
        }
        let mut recv = Vec::with_capacity(64 * 1024);
        while answers.iter().any(Option::is_none) {
            recv.clear();
            if let Err(e) = self.socket.recv(&mut recv, 0) {
                let failed = io_error(e);
                return answers.into_iter().map(|a| a.unwrap_or_else(|| Err(failed.clone()))).collect();
            }
            let mut off = 0;
            while off < recv.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&recv[off..]) else { break };
                let len = msg.header.length as usize;
                let slot = msg.header.sequence_number.checked_sub(first).map(|k| k as usize);
                match (msg.payload, slot) {
                    (NetlinkPayload::Error(e), Some(k)) if k < answers.len() => {
                        answers[k] = Some(if e.code.is_none() { Ok(()) } else { Err(e) });
                    }
                    (NetlinkPayload::InnerMessage(m), _) => on_message(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        answers.into_iter().map(|a| a.expect("every request answered")).collect()
    }
}

fn request(payload: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = NetlinkMessage::from(payload);
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    msg
}
