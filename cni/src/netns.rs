//! CNI_NETNS is input like any other: it must name a network namespace, and not the node's own,
//! before anything is done in it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use weft_overlay::netlink::PendingSocket;

use crate::error::{CniError, Code};

/// The network namespace the plugin itself runs in: the node's.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Opens the container's network namespace. Missing is code 3; anything that is not another
/// network namespace (a FIFO, a regular file, a mount namespace, the node's own) is code 4.
pub fn open(path: &Path) -> Result<File, CniError> {
    let bad = |what: &str| CniError::new(Code::InvalidEnvironment, format!("CNI_NETNS {} {what}", path.display()));
    // Without O_NONBLOCK, opening a FIFO waits for a writer forever.
    let file = OpenOptions::new().read(true).custom_flags(OFlag::O_NONBLOCK.bits()).open(path).map_err(|e| {
        CniError::new(Code::UnknownContainer, format!("cannot open network namespace {}", path.display()))
            .with_details(e)
    })?;
    if fstatfs(&file).map(|s| s.filesystem_type()) != Ok(NSFS_MAGIC) {
        return Err(bad("is not a namespace"));
    }
    if is_own(&file) {
        return Err(bad("is the node's own network namespace"));
    }
    match namespace_type(&file) {
        Ok(kind) if kind == CloneFlags::CLONE_NEWNET.bits() => Ok(file),
        Ok(_) => Err(bad("is not a network namespace")),
        Err(e) => Err(CniError::new(Code::IoFailure, format!("cannot inspect {}", path.display())).with_details(e)),
    }
}

/// A routing socket inside the namespace, opened on its own thread while the caller works on.
pub fn socket_in(netns: &File, path: &Path) -> Result<PendingSocket, CniError> {
    let dup = netns
        .try_clone()
        .map_err(|e| CniError::new(Code::IoFailure, "cannot duplicate the netns handle").with_details(e))?;
    Ok(PendingSocket::open(dup, path))
}

fn is_own(ns: &File) -> bool {
    let (Ok(theirs), Ok(ours)) = (ns.metadata(), std::fs::metadata(OWN_NETNS)) else { return false };
    (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino())
}

/// The kind of a namespace file (a `CLONE_NEW*` flag), asked of the file itself
/// (`NS_GET_NSTYPE`, Linux 4.11): no thread has to enter it to find out.
fn namespace_type(ns: &File) -> io::Result<i32> {
    // _IO(0xb7, 0x3) from linux/nsfs.h.
    const NS_GET_NSTYPE: libc::Ioctl = (0xb7 << 8) | 0x3;
    #[allow(unsafe_code)]
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the live fd borrowed from `ns`.
    let kind = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 { Err(io::Error::last_os_error()) } else { Ok(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_network_namespace_is_accepted() {
        for (path, code) in [
            ("/nonexistent/netns", Code::UnknownContainer),
            ("/proc/self/ns/mnt", Code::InvalidEnvironment),
            ("/proc/self/ns/net", Code::InvalidEnvironment),
            ("/dev/zero", Code::InvalidEnvironment),
        ] {
            assert_eq!(open(Path::new(path)).unwrap_err().code, code as u32, "{path}");
        }
    }
}
