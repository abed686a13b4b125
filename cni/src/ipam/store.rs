//! weft's built-in IPAM store: one directory per network, one file per allocation.
//!
//! ```text
//! <dataDir>/<network>/lock                      flock'd for the whole of every operation
//! <dataDir>/<network>/last_reserved_ip          where the next search starts
//! <dataDir>/<network>/10.244.3.7@<hash16>       an allocation; content "<container id>\n<ifname>\n"
//! ```
//!
//! The file name alone says which address is taken and by which attachment (a 64-bit hash of
//! container id and ifname), so one directory read answers every question. Allocation files are
//! claimed with an exclusive create under the lock; a crash right after the create leaves an empty
//! file that still reserves its address and is released like any other, so neither a crash nor a
//! damaged file can ever cause a duplicate. `last_reserved_ip` is only a hint for where to search.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::pool::Pool;
use crate::names::attachment_hash;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
const OWNER_HEX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("IPAM store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no free address left in {0}")]
    Exhausted(ipnet::Ipv4Net),
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
}

/// One allocation as read from the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    owner_key: String,
    file: String,
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
        let open_lock = || {
            let path = dir.join(LOCK_FILE);
            OpenOptions::new().create(true).truncate(false).write(true).open(path)
        };
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

    pub fn allocations(&self) -> Result<Vec<Allocation>, StoreError> {
        read_allocations(&self.dir).map_err(|e| self.io_err(e))
    }

    pub fn find(&self, owner: &Owner) -> Result<Option<Ipv4Addr>, StoreError> {
        let key = owner.key();
        Ok(self.allocations()?.into_iter().find(|a| a.owner_key == key).map(|a| a.ip))
    }

    /// The owner's address: the one it already holds in `pool`, else the next free one.
    pub fn allocate(&mut self, pool: &Pool, owner: &Owner) -> Result<Ipv4Addr, StoreError> {
        let key = owner.key();
        let allocations = self.allocations()?;
        let mut used = HashSet::with_capacity(allocations.len());
        for alloc in &allocations {
            if alloc.owner_key == key {
                if pool.contains(alloc.ip) {
                    return Ok(alloc.ip);
                }
                // Left from an earlier PodCIDR: drop it and allocate afresh.
                self.remove(alloc)?;
                continue;
            }
            used.insert(alloc.ip);
        }
        let ip = pool.next_free(&used, self.last_reserved()).ok_or(StoreError::Exhausted(pool.net))?;
        let content = format!("{}\n{}\n", owner.container_id, owner.ifname);
        let path = self.dir.join(file_name(ip, &key));
        let claim = OpenOptions::new().write(true).create_new(true).open(&path);
        if let Err(e) = claim.and_then(|mut f| f.write_all(content.as_bytes())) {
            let _ = fs::remove_file(&path);
            return Err(self.io_err(e));
        }
        // Only a hint for where to search next: a torn or failed write costs nothing but fairness.
        if let Err(e) = fs::write(self.dir.join(LAST_RESERVED_FILE), ip.to_string()) {
            tracing::warn!("cannot record last reserved address: {e}");
        }
        Ok(ip)
    }

    /// Releases whatever the owner holds; releasing nothing is not an error.
    pub fn release(&mut self, owner: &Owner) -> Result<Vec<Ipv4Addr>, StoreError> {
        let key = owner.key();
        self.remove_where(|a| a.owner_key == key)
    }

    /// Releases every allocation whose owner is not in `keep` (GC).
    pub fn retain(&mut self, keep: &[Owner]) -> Result<Vec<Ipv4Addr>, StoreError> {
        let keep: HashSet<String> = keep.iter().map(Owner::key).collect();
        self.remove_where(|a| !keep.contains(&a.owner_key))
    }

    fn remove_where(&mut self, pred: impl Fn(&Allocation) -> bool) -> Result<Vec<Ipv4Addr>, StoreError> {
        let mut released = Vec::new();
        for alloc in self.allocations()?.iter().filter(|a| pred(a)) {
            self.remove(alloc)?;
            released.push(alloc.ip);
        }
        Ok(released)
    }

    fn remove(&self, alloc: &Allocation) -> Result<(), StoreError> {
        match fs::remove_file(self.dir.join(&alloc.file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io_err(e)),
            _ => Ok(()),
        }
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE)).ok()?.trim().parse().ok()
    }

    fn io_err(&self, source: io::Error) -> StoreError {
        StoreError::Io { path: self.dir.clone(), source }
    }
}

fn file_name(ip: Ipv4Addr, owner_key: &str) -> String {
    format!("{ip}@{owner_key}")
}

/// `10.244.3.7@0123456789abcdef` → allocation; anything else (lock, temp files) → None.
fn parse_file_name(name: &str) -> Option<Allocation> {
    let (ip, key) = name.split_once('@')?;
    let valid_key = key.len() == OWNER_HEX && key.bytes().all(|b| b.is_ascii_hexdigit());
    Some(Allocation { ip: ip.parse().ok()?, owner_key: key.to_string(), file: name.to_string() }).filter(|_| valid_key)
}

fn read_allocations(dir: &Path) -> io::Result<Vec<Allocation>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(alloc) = entry?.file_name().to_str().and_then(parse_file_name) {
            out.push(alloc);
        }
    }
    Ok(out)
}

/// The addresses reserved in the store at `dir`, read without taking its lock: a snapshot for
/// reporting (allocation files appear and vanish whole). A store not created yet has none.
pub fn reserved_addresses(dir: &Path) -> io::Result<Vec<Ipv4Addr>> {
    match read_allocations(dir) {
        Ok(allocations) => Ok(allocations.into_iter().map(|a| a.ip).collect()),
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
        let net: ipnet::Ipv4Net = net.parse().unwrap();
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
        assert_eq!(store.allocations().unwrap().len(), 3);
    }

    #[test]
    fn allocations_survive_reopening() {
        let dir = tempdir();
        let p = pool("10.244.3.0/24");
        let ip = Store::open(&dir.0).unwrap().allocate(&p, &Owner::new("c1", "eth0")).unwrap();
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.find(&Owner::new("c1", "eth0")).unwrap(), Some(ip));
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
        assert_eq!(store.allocations().unwrap().len(), 1);
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
        assert!(store.find(&Owner::new("b", "eth0")).unwrap().is_some());
        assert!(store.find(&Owner::new("a", "eth0")).unwrap().is_none());
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
        fs::write(dir.0.join(file_name("10.244.3.2".parse().unwrap(), &owner.key())), b"").unwrap();
        assert_eq!(store.find(&owner).unwrap(), Some("10.244.3.2".parse().unwrap()));
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
        assert_eq!(store.allocations().unwrap().len(), 1);
    }

    #[test]
    fn file_names_parse_strictly() {
        assert!(parse_file_name("10.244.3.7@0123456789abcdef").is_some());
        for bad in ["lock", "last_reserved_ip", "10.244.3.7", "10.244.3.7@xyz", "1.2.3@0123456789abcdef"] {
            assert!(parse_file_name(bad).is_none(), "{bad}");
        }
    }
}
