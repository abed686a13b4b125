//! CNI_NETNS is input like any other: it must name a network namespace, and not the node's own,
//! before anything is done in it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use weft_overlay::netlink::PendingSocket;
use weft_overlay::sysctl;

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
    match enter_on_a_throwaway_thread(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => Err(bad("is not a network namespace")),
        Err(e) => Err(CniError::new(Code::IoFailure, format!("cannot enter {}", path.display())).with_details(e)),
    }
}

/// A routing socket inside the namespace, opened on its own thread while the caller works on.
pub fn socket_in(netns: &File, path: &Path) -> Result<PendingSocket, CniError> {
    let dup = netns
        .try_clone()
        .map_err(|e| CniError::new(Code::IoFailure, "cannot duplicate the netns handle").with_details(e))?;
    Ok(PendingSocket::open(dup, path))
}

/// Sets sysctls of the namespace (`/proc/sys/net` follows the writer's namespace) from a thread
/// that enters it, so the caller's thread never moves and can work on meanwhile; joining the
/// handle gives the outcome.
pub fn sysctls_in(ns: &File, settings: Vec<(String, &'static str)>) -> io::Result<JoinHandle<io::Result<()>>> {
    let ns = ns.try_clone()?;
    std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET)?;
        for (key, value) in settings {
            sysctl::ensure(&key, value)?;
        }
        Ok(())
    })
}

fn is_own(ns: &File) -> bool {
    let (Ok(theirs), Ok(ours)) = (ns.metadata(), std::fs::metadata(OWN_NETNS)) else { return false };
    (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino())
}

/// setns(CLONE_NEWNET) refuses (EINVAL) every other kind of namespace. A thread that ends right
/// after tries it, so the caller's thread never moves.
fn enter_on_a_throwaway_thread(ns: &File) -> io::Result<()> {
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn_scoped(s, || setns(ns, CloneFlags::CLONE_NEWNET))?;
        Ok(thread.join().expect("setns does not panic")?)
    })
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
