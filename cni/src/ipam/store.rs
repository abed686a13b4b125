//! A network's store on this node: one directory per network, one file per allocation (built-in
//! IPAM) and one record per attachment (any IPAM).
//!
//! ```text
//! <dataDir>/<network>/lock                      flock'd for the whole of every operation
//! <dataDir>/<network>/last_reserved_ip          where the next search starts: one address a line,
//!                                               at most one per family
//! <dataDir>/<network>/10.244.3.7@<hash16>       an allocation; content "<container id>\n<ifname>\n"
//! <dataDir>/<network>/fd00:10:244:3::7@<hash16> an IPv6 allocation, the same way
//! <dataDir>/<network>/attached@<hash16>         an attachment record; same content
//! ```
//!
//! The file name alone says which address is taken and by which attachment (a 64-bit hash of
//! container id and ifname), so one directory read answers every question. Allocation files are
//! claimed with an exclusive create under the lock; a crash right after the create leaves an empty
//! file that still reserves its address and is released like any other, so neither a crash nor a
//! damaged file can ever cause a duplicate. `last_reserved_ip` is only a hint for where to search;
//! both families share it so that a dual-stack ADD writes it once.
//! An attachment holds at most one address per family; IPv6 addresses are written in their
//! canonical text form (a file name may hold colons; `@` never occurs in an address).
//!
//! ADD records the attachment before its host veth exists and DEL forgets it only after the veth
//! is gone, so the store always knows every veth of its network: that is how GC of one network
//! finds its own veths (the veth name derives from the same hash) and never another network's.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::pool::Pool;
use crate::fsutil::{open_regular, read_regular};
use crate::names::{attachment_hash, host_veth_name_for_hash};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
/// An address in text is at most 39 bytes: an IPv4 and an IPv6 one fit with room to spare.
const MAX_LAST_RESERVED_BYTES: u64 = 64;
/// Names an attachment record, where an allocation has its address.
const RECORD_MARK: &str = "attached";
const OWNER_HEX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("IPAM store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no free address left in {0}")]
    Exhausted(ipnet::IpNet),
}

/// The owner of an allocation, as the CNI spec keys state: (container id, ifname) per network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Owner { container_id: container_id.to_string(), ifname: ifname.to_string() }
    }

    fn key(&self) -> String {
        attachment_hash(&self.container_id, &self.ifname)[..OWNER_HEX].to_string()
    }

    /// What an allocation or record file says, for operators reading the store.
    fn content(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }
}

/// One file of the store: an owner's allocation, or its attachment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address held; `None` for an attachment record.
    pub ip: Option<IpAddr>,
    owner_key: String,
    file: String,
}

impl Entry {
    /// The host veth of the entry's attachment.
    pub fn host_veth(&self) -> String {
        host_veth_name_for_hash(&self.owner_key)
    }
}

/// An open, locked store. The lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and takes its exclusive lock, waiting for
    /// other plugin processes to finish theirs.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io_err = |source| StoreError::Io { path: dir.to_path_buf(), source };
        let open_lock = || open_regular(&dir.join(LOCK_FILE), OpenOptions::new().create(true).write(true));
        let file = match open_lock() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_err)?;
                open_lock()
            }
            other => other,
        }
        .map_err(io_err)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_err(errno.into()))?;
        Ok(Store { dir: dir.to_path_buf(), _lock: lock })
    }

    /// Every allocation and record.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        read_entries(&self.dir).map_err(|e| self.io_err(e))
    }

    /// The addresses the owner holds (one per family at most).
    pub fn held(&self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        let key = owner.key();
        Ok(self.entries()?.into_iter().filter(|e| e.owner_key == key).filter_map(|e| e.ip).collect())
    }

    /// Records the attachment (again, on a repeated ADD: that is not an error).
    pub fn record(&mut self, owner: &Owner) -> Result<(), StoreError> {
        let path = self.dir.join(file_name(RECORD_MARK, &owner.key()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => file.write_all(owner.content().as_bytes()).map_err(|e| self.io_err(e)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// One address from each pool (one pool per family), all or nothing: when one pool fails,
    /// the owner's allocations are released again (its record stays).
    pub fn allocate_all(&mut self, pools: &[Pool], owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        // One directory read serves every family: each allocation only looks at its own.
        let entries = self.entries()?;
        let mut hints = Hints::read(&self.dir);
        let allocated: Result<Vec<IpAddr>, StoreError> =
            pools.iter().map(|pool| self.allocate_from(&entries, &mut hints, pool, owner)).collect();
        match allocated {
            Ok(_) => hints.save(&self.dir),
            Err(_) => {
                let key = owner.key();
                if let Err(e) = self.remove_where(|e| e.owner_key == key && e.ip.is_some()) {
                    tracing::warn!("cannot release the addresses of a failed allocation: {e}");
                }
            }
        }
        allocated
    }

    /// The owner's address of the pool's family: the one it already holds in `pool`, else the
    /// next free one.
    pub fn allocate(&mut self, pool: &Pool, owner: &Owner) -> Result<IpAddr, StoreError> {
        let entries = self.entries()?;
        let mut hints = Hints::read(&self.dir);
        let ip = self.allocate_from(&entries, &mut hints, pool, owner)?;
        hints.save(&self.dir);
        Ok(ip)
    }

    /// `allocate` over the store's entries as read under this lock; a new address becomes the
    /// family's hint.
    fn allocate_from(
        &mut self,
        entries: &[Entry],
        hints: &mut Hints,
        pool: &Pool,
        owner: &Owner,
    ) -> Result<IpAddr, StoreError> {
        let key = owner.key();
        let mut used = HashSet::with_capacity(entries.len());
        let same_family = |ip: &IpAddr| ip.is_ipv4() == pool.net.addr().is_ipv4();
        for entry in entries {
            let Some(ip) = entry.ip.filter(same_family) else { continue };
            if entry.owner_key == key {
                if pool.contains(ip) {
                    return Ok(ip);
                }
                // Left from an earlier PodCIDR: drop it and allocate afresh.
                self.remove(entry)?;
                continue;
            }
            used.insert(ip);
        }
        let ip = pool.next_free(&used, hints.of(pool)).ok_or(StoreError::Exhausted(pool.net))?;
        let path = self.dir.join(file_name(&ip.to_string(), &key));
        let claim = OpenOptions::new().write(true).create_new(true).open(&path);
        if let Err(e) = claim.and_then(|mut f| f.write_all(owner.content().as_bytes())) {
            let _ = fs::remove_file(&path);
            return Err(self.io_err(e));
        }
        hints.set(ip);
        Ok(ip)
    }

    /// Releases whatever the owner holds and forgets its record; nothing to release is not an
    /// error. Returns the addresses released.
    pub fn release(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, StoreError> {
        let key = owner.key();
        self.remove_where(|e| e.owner_key == key)
    }

    /// The entries of every attachment not in `keep`: what GC collects.
    pub fn stale(&self, keep: &[Owner]) -> Result<Vec<Entry>, StoreError> {
        let keep: HashSet<String> = keep.iter().map(Owner::key).collect();
        Ok(self.entries()?.into_iter().filter(|e| !keep.contains(&e.owner_key)).collect())
    }

    /// Releases and forgets every attachment not in `keep` (GC). Returns the addresses released.
    pub fn retain(&mut self, keep: &[Owner]) -> Result<Vec<IpAddr>, StoreError> {
        let keep: HashSet<String> = keep.iter().map(Owner::key).collect();
        self.remove_where(|e| !keep.contains(&e.owner_key))
    }

    fn remove_where(&mut self, pred: impl Fn(&Entry) -> bool) -> Result<Vec<IpAddr>, StoreError> {
        let mut released = Vec::new();
        for entry in self.entries()?.iter().filter(|e| pred(e)) {
            self.remove(entry)?;
            released.extend(entry.ip);
        }
        Ok(released)
    }

    fn remove(&self, entry: &Entry) -> Result<(), StoreError> {
        match fs::remove_file(self.dir.join(&entry.file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io_err(e)),
            _ => Ok(()),
        }
    }

    fn io_err(&self, source: io::Error) -> StoreError {
        StoreError::Io { path: self.dir.clone(), source }
    }
}

/// The last address handed out of each family: where each family's search starts next.
#[derive(Debug, Default)]
struct Hints {
    last: Vec<IpAddr>,
    changed: bool,
}

impl Hints {
    /// The store's hints; a missing, oversized or unreadable file, or a line that is no address,
    /// is no hint.
    fn read(dir: &Path) -> Hints {
        let bytes = read_regular(&dir.join(LAST_RESERVED_FILE), MAX_LAST_RESERVED_BYTES).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut hints = Hints::default();
        for ip in text.lines().filter_map(|line| line.trim().parse().ok()) {
            if hints.of_family(ip).is_none() {
                hints.last.push(ip);
            }
        }
        hints
    }

    fn of_family(&self, ip: IpAddr) -> Option<IpAddr> {
        self.last.iter().copied().find(|h| h.is_ipv4() == ip.is_ipv4())
    }

    fn of(&self, pool: &Pool) -> Option<IpAddr> {
        self.of_family(pool.net.addr())
    }

    fn set(&mut self, ip: IpAddr) {
        self.last.retain(|h| h.is_ipv4() != ip.is_ipv4());
        self.last.push(ip);
        self.last.sort_by_key(IpAddr::is_ipv6);
        self.changed = true;
    }

    /// Writes the hints back, one write for every family, if an allocation changed them. Only a
    /// hint for where to search next: a torn or failed write costs nothing but fairness.
    fn save(&self, dir: &Path) {
        if !self.changed {
            return;
        }
        let text = self.last.iter().map(IpAddr::to_string).collect::<Vec<_>>().join("\n");
        let mut hint = OpenOptions::new();
        let written = open_regular(&dir.join(LAST_RESERVED_FILE), hint.write(true).create(true).truncate(true))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("cannot record last reserved address: {e}");
        }
    }
}

fn file_name(what: &str, owner_key: &str) -> String {
    format!("{what}@{owner_key}")
}

/// `10.244.3.7@0123456789abcdef` → allocation, `attached@0123456789abcdef` → record; anything
/// else (lock, temp files) → None.
fn parse_file_name(name: &str) -> Option<Entry> {
    let (what, key) = name.split_once('@')?;
    let valid_key = key.len() == OWNER_HEX && key.bytes().all(|b| b.is_ascii_hexdigit());
    let ip = if what == RECORD_MARK { None } else { Some(what.parse().ok()?) };
    Some(Entry { ip, owner_key: key.to_string(), file: name.to_string() }).filter(|_| valid_key)
}

/// The store's entries. Only regular files count: anything else is junk, like a name that does
/// not parse.
fn read_entries(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let parsed = entry.file_name().to_str().and_then(parse_file_name);
        if let Some(parsed) = parsed.filter(|_| entry.file_type().is_ok_and(|t| t.is_file())) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// The addresses reserved in the store at `dir`, read without taking its lock: a snapshot for
/// reporting (allocation files appear and vanish whole). A store not created yet has none.
pub fn reserved_addresses(dir: &Path) -> io::Result<Vec<IpAddr>> {
    match read_entries(dir) {
        Ok(entries) => Ok(entries.into_iter().filter_map(|e| e.ip).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("weft-ipam-{}-{}", std::process::id(), rand::random::<u64>())))
    }

    fn pool(net: &str) -> Pool {
        let net: ipnet::IpNet = net.parse().unwrap();
        Pool { net, gateway: crate::config::first_host(&net) }
    }

    #[test]
    fn allocates_distinct_addresses_and_returns_the_same_one_on_repeat() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let p = pool("10.244.3.0/24");
        let a = store.allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        let b = store.allocate(&p, &Owner::new("c2", "eth0")).unwrap();
        let c = store.allocate(&p, &Owner::new("c1", "eth1")).unwrap();
        assert_eq!(a.to_string(), "10.244.3.2");
        assert!(a != b && b != c && a != c);
        assert_eq!(store.allocate(&p, &Owner::new("c1", "eth0")).unwrap(), a);
        assert_eq!(store.entries().unwrap().len(), 3);
    }

    #[test]
    fn allocations_survive_reopening() {
        let dir = tempdir();
        let p = pool("10.244.3.0/24");
        let ip = Store::open(&dir.0).unwrap().allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.held(&Owner::new("c1", "eth0")).unwrap(), vec![ip]);
    }

    #[test]
    fn one_hint_file_serves_both_families() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        // An IPv4-only hint as earlier versions wrote it, and a junk line.
        fs::write(dir.0.join(LAST_RESERVED_FILE), b"10.244.3.9\nnot an ip\n").unwrap();
        let v6 = store.allocate(&pool("fd00:10:244:3::/64"), &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(v6.to_string(), "fd00:10:244:3::2");
        let v4 = store.allocate(&pool("10.244.3.0/24"), &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(v4.to_string(), "10.244.3.10", "the IPv4 hint survived the IPv6 allocation");
        assert_eq!(Hints::read(&dir.0).last, [v4, v6]);
        // IPv4 alone writes what earlier versions wrote: the address, nothing else.
        let other = tempdir();
        let ip = Store::open(&other.0).unwrap().allocate(&pool("10.244.3.0/24"), &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(fs::read_to_string(other.0.join(LAST_RESERVED_FILE)).unwrap(), ip.to_string());
    }

    #[test]
    fn a_released_address_is_not_reused_next() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let p = pool("10.244.3.0/24");
        let a = store.allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(store.release(&Owner::new("c1", "eth0")).unwrap(), vec![a]);
        let b = store.allocate(&p, &Owner::new("c2", "eth0")).unwrap();
        assert_ne!(a, b);
        assert!(store.release(&Owner::new("nobody", "eth0")).unwrap().is_empty());
    }

    #[test]
    fn exhaustion_is_an_error_and_writes_nothing() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let p = pool("10.244.3.0/30"); // one assignable address
        store.allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        assert!(matches!(store.allocate(&p, &Owner::new("c2", "eth0")), Err(StoreError::Exhausted(_))));
        assert_eq!(store.entries().unwrap().len(), 1);
    }

    #[test]
    fn retain_releases_everything_not_listed() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let p = pool("10.244.3.0/24");
        for c in ["a", "b", "c"] {
            store.allocate(&p, &Owner::new(c, "eth0")).unwrap();
        }
        let released = store.retain(&[Owner::new("b", "eth0")]).unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(store.held(&Owner::new("b", "eth0")).unwrap().len(), 1);
        assert!(store.held(&Owner::new("a", "eth0")).unwrap().is_empty());
    }

    #[test]
    fn damaged_or_foreign_files_never_lead_to_a_duplicate() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let p = pool("10.244.3.0/24");
        // A truncated allocation file and garbage: the address stays reserved, junk is ignored.
        fs::write(dir.0.join("10.244.3.2@00000000deadbeef"), b"").unwrap();
        fs::write(dir.0.join("garbage@@@"), b"\x00\xff").unwrap();
        fs::write(dir.0.join(LAST_RESERVED_FILE), b"not an ip").unwrap();
        let ip = store.allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(ip.to_string(), "10.244.3.3");
    }

    #[test]
    fn a_claim_left_empty_by_a_crash_still_reserves_and_is_released_by_its_owner() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let owner = Owner::new("c1", "eth0");
        fs::write(dir.0.join(file_name("10.244.3.2", &owner.key())), b"").unwrap();
        assert_eq!(store.held(&owner).unwrap(), vec!["10.244.3.2".parse::<IpAddr>().unwrap()]);
        assert_ne!(
            store.allocate(&pool("10.244.3.0/24"), &Owner::new("c2", "eth0")).unwrap().to_string(),
            "10.244.3.2"
        );
        assert_eq!(store.release(&owner).unwrap().len(), 1);
    }

    #[test]
    fn a_stale_allocation_outside_a_changed_pod_cidr_is_replaced() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let old = store.allocate(&pool("10.244.3.0/24"), &Owner::new("c1", "eth0")).unwrap();
        let new = store.allocate(&pool("10.244.9.0/24"), &Owner::new("c1", "eth0")).unwrap();
        assert_ne!(old, new);
        assert_eq!(store.entries().unwrap().len(), 1);
    }

    #[test]
    fn records_name_their_veth_and_go_with_release_and_gc() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let (a, b) = (Owner::new("a", "eth0"), Owner::new("b", "eth0"));
        for owner in [&a, &b] {
            store.record(owner).unwrap();
            store.record(owner).unwrap(); // a repeated ADD
        }
        store.allocate(&pool("10.244.3.0/24"), &a).unwrap();
        assert!(store.held(&b).unwrap().is_empty(), "a record holds no address");
        let stale = store.stale(std::slice::from_ref(&a)).unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].host_veth(), crate::names::host_veth_name("b", "eth0"));
        assert!(store.retain(std::slice::from_ref(&a)).unwrap().is_empty(), "b held no address");
        assert_eq!(store.entries().unwrap().len(), 2, "a's record and allocation stay");
        assert_eq!(store.release(&a).unwrap().len(), 1);
        assert!(store.entries().unwrap().is_empty());
    }

    #[test]
    fn special_files_never_block_and_never_count() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let fifo = |name: &str| nix::unistd::mkfifo(&dir.0.join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fifo(LAST_RESERVED_FILE);
        fifo("10.244.3.2@00000000deadbeef");
        fs::create_dir(dir.0.join("10.244.3.3@00000000deadbeef")).unwrap();
        let ip = store.allocate(&pool("10.244.3.0/24"), &Owner::new("c1", "eth0")).unwrap();
        assert_eq!(ip.to_string(), "10.244.3.2", "junk reserves nothing");
        assert!(Hints::read(&dir.0).last.is_empty(), "the FIFO is no hint");
        drop(store);
        fs::remove_file(dir.0.join(LOCK_FILE)).unwrap();
        fifo(LOCK_FILE);
        assert!(Store::open(&dir.0).is_err(), "a FIFO lock fails at once");
    }

    #[test]
    fn one_attachment_holds_one_address_per_family() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let pools = [pool("10.244.3.0/24"), pool("fd00:10:244:3::/64")];
        let owner = Owner::new("c1", "eth0");
        let got = store.allocate_all(&pools, &owner).unwrap();
        assert_eq!(got, ["10.244.3.2".parse::<IpAddr>().unwrap(), "fd00:10:244:3::2".parse().unwrap()]);
        assert_eq!(store.allocate_all(&pools, &owner).unwrap(), got, "a repeated ADD gets the same two");
        let second = store.allocate_all(&pools, &Owner::new("c2", "eth0")).unwrap();
        assert_eq!(second[1].to_string(), "fd00:10:244:3::3");
        // The IPv6 file name parses back, and each family has its own hint, in one file.
        assert_eq!(store.held(&owner).unwrap().len(), 2);
        assert_eq!(Hints::read(&dir.0).last, second);
        assert_eq!(
            fs::read_to_string(dir.0.join(LAST_RESERVED_FILE)).unwrap(),
            format!("{}\n{}", second[0], second[1])
        );
        assert_eq!(store.release(&owner).unwrap().len(), 2);
        let mut left = reserved_addresses(&dir.0).unwrap();
        left.sort();
        assert_eq!(left, second);
    }

    #[test]
    fn a_failure_in_the_second_family_releases_the_first() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let pools = [pool("10.244.3.0/24"), pool("fd00:10:244:3::/126")]; // one IPv6 address
        store.allocate_all(&pools, &Owner::new("c1", "eth0")).unwrap();
        let late = Owner::new("c2", "eth0");
        store.record(&late).unwrap();
        assert!(matches!(store.allocate_all(&pools, &late), Err(StoreError::Exhausted(net)) if net == pools[1].net));
        assert!(store.held(&late).unwrap().is_empty(), "its IPv4 address is free again");
        assert_eq!(store.entries().unwrap().len(), 3, "c1's two addresses and c2's record");
    }

    #[test]
    fn a_stale_address_of_one_family_does_not_drop_the_other() {
        let dir = tempdir();
        let mut store = Store::open(&dir.0).unwrap();
        let owner = Owner::new("c1", "eth0");
        let v4 = store.allocate(&pool("10.244.3.0/24"), &owner).unwrap();
        store.allocate(&pool("fd00:10:244:3::/64"), &owner).unwrap();
        let moved = store.allocate(&pool("fd00:10:244:9::/64"), &owner).unwrap();
        let mut held = store.held(&owner).unwrap();
        held.sort();
        assert_eq!(held, [v4, moved]);
    }

    #[test]
    fn file_names_parse_strictly() {
        assert!(parse_file_name("fd00:10:244:3::7@0123456789abcdef").is_some_and(|e| e.ip.is_some()));
        assert!(parse_file_name("10.244.3.7@0123456789abcdef").is_some_and(|e| e.ip.is_some()));
        assert!(parse_file_name("attached@0123456789abcdef").is_some_and(|e| e.ip.is_none()));
        for bad in [
            "lock",
            "last_reserved_ip",
            "10.244.3.7",
            "10.244.3.7@xyz",
            "1.2.3@0123456789abcdef",
            "attached@xyz",
            "other@0123456789abcdef",
        ] {
            assert!(parse_file_name(bad).is_none(), "{bad}");
        }
    }
}
