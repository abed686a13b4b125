//! Deferred veth removal. Unregistering a network device waits for an RCU barrier (~20 ms here),
//! longer than everything else DEL does together. DEL therefore cuts the pod off synchronously
//! (IP released, link down, off the bridge, renamed to a tombstone name so every name is free
//! again) and leaves the kernel's slow part to a detached copy of this binary.

use std::process::{Command, Stdio};

/// argv[1] that makes the binary reap a link instead of acting as a CNI plugin.
pub const REAP_ARG: &str = "--reap-link";

/// Starts the detached reaper for `link`; never waits for it. If it cannot start, the tombstone
/// stays until the next GC, which removes every tombstone it finds.
pub fn spawn(link: &str) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("cannot find own executable to reap {link}: {e}; GC will remove it");
            return;
        }
    };
    // No inherited stdio: a runtime waits for the plugin's stdout to close, and must not wait for this.
    let spawned = Command::new(exe)
        .args([REAP_ARG, link])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!("cannot start reaper for {link}: {e}; GC will remove it");
    }
}

/// The reaper itself: delete the link by name in the current namespace; gone already is fine.
pub fn reap(link: &str) -> Result<(), String> {
    crate::runtime::block_on(async {
        let nl = weft_overlay::netlink::Netlink::connect().map_err(|e| e.to_string())?;
        match nl.delete_link_by_name(link).await {
            Err(e) if !e.is_not_found() => Err(e.to_string()),
            _ => Ok(()),
        }
    })
}
