//! What anyone on the underlay can send to the gossip port: bytes through the seal's opener (the
//! first code an attacker reaches) and through chitchat's own decoder (what a sealed datagram
//! holds, and all of a plain-text cluster's gossip).
#![no_main]

use chitchat::ChitchatEnvelope;
use libfuzzer_sys::fuzz_target;
use weft_agent::gossip::seal::{self, KEY_LEN, Keyring, ReplayGuard, Sealer};

const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::new(&[[7; KEY_LEN], [9; KEY_LEN]]).expect("two distinct keys");
    let mut guard = ReplayGuard::new(60_000);
    // Without the key nothing opens: a forgery would need to break Poly1305.
    assert!(seal::open(&ring, &mut guard, NOW_MS, data).is_err(), "bytes made without the key were accepted");

    // The same bytes sealed properly open to themselves exactly once.
    let mut sealed = Vec::new();
    Sealer::new(1).seal(&ring, [3; 24], NOW_MS, data, &mut sealed);
    assert_eq!(seal::open(&ring, &mut guard, NOW_MS, &sealed).as_deref(), Ok(data));
    assert!(seal::open(&ring, &mut guard, NOW_MS, &sealed).is_err(), "a replay was accepted");

    // chitchat's decoder must refuse garbage without panicking. (What it accepts is not
    // re-encoded here: a decoded delta keeps its wire length, and chitchat asserts on it when
    // re-serializing, which it never does with a received delta.)
    let _ = ChitchatEnvelope::deserialize(&mut &data[..]);
});
