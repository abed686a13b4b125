//! The nfnetlink socket a dataplane keeps: the ruleset is read and set elements are changed
//! through it. It stays open because closing a socket that made an nftables transaction costs
//! the kernel milliseconds of release work.

use std::io;
use std::sync::{Arc, Mutex};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::elements::{self, ElementChanges};
use super::netlink::Reply;
use super::{Listing, NftError, ruleset};

/// recv(2) flag: return a datagram's real length even when it did not fit (linux/socket.h).
const MSG_TRUNC: i32 = 0x20;
/// Room for any one datagram: the kernel fills dump datagrams up to 32 KiB, and nft reads with
/// 64 KiB and a page.
const RECEIVE_BUFFER: usize = 64 * 1024 + 4096;

/// An nfnetlink socket in the network namespace it was opened in. One request at a time: the
/// kernel runs one dump per socket (a second gets EBUSY), and every answer is read to its end.
#[derive(Clone)]
pub struct NftSocket {
    conn: Arc<Mutex<Conn>>,
}

impl std::fmt::Debug for NftSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NftSocket")
    }
}

impl NftSocket {
    /// Opens the socket in the caller's network namespace.
    pub fn open() -> Result<NftSocket, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Netlink)?;
        socket.bind_auto().map_err(NftError::Netlink)?;
        Ok(NftSocket { conn: Arc::new(Mutex::new(Conn { socket, seq: 1 })) })
    }

    /// What the kernel holds that weft cares about; `family`/`table` name weft's own table.
    pub async fn listing(&self, family: &'static str, table: &'static str) -> Result<Listing, NftError> {
        self.run(move |conn| ruleset::read(conn, family, table)).await
    }

    /// Applies `changes` to set `set` of table `inet <table>` in one transaction.
    pub async fn write_elements(
        &self,
        table: &'static str,
        set: &'static str,
        changes: ElementChanges,
    ) -> Result<(), NftError> {
        self.run(move |conn| elements::write(conn, table, set, &changes)).await
    }

    /// Runs `f` on the blocking pool: the kernel answers within the send, so the socket calls
    /// never wait long, but they would still hold up the netlink dumps running meanwhile.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, NftError> + Send + 'static,
    ) -> Result<T, NftError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| NftError::Netlink(io::Error::other(e)))?
    }
}

/// The socket with the next sequence number.
pub struct Conn {
    socket: Socket,
    seq: u32,
}

impl Conn {
    /// Reserves `count` sequence numbers and returns the first.
    pub fn take_seqs(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count);
        first
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        loop {
            match self.socket.send_to(bytes, &SocketAddr::new(0, 0), 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(drop),
            }
        }
    }

    /// One datagram from the kernel.
    pub fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(RECEIVE_BUFFER);
        let len = loop {
            match self.socket.recv(&mut buf, MSG_TRUNC) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if len > buf.len() {
            return Err(io::Error::other(format!("a {len}-byte datagram did not fit the receive buffer")));
        }
        Ok(buf)
    }

    /// Sends `request`, numbered `seq`, and reads its whole answer; the kernel's refusal is the
    /// error.
    pub fn ask(&mut self, request: &[u8], seq: u32) -> io::Result<Reply> {
        self.send(request)?;
        let mut reply = Reply::new(seq);
        while !reply.absorb(self.recv()?).map_err(io::Error::from_raw_os_error)? {}
        Ok(reply)
    }
}
