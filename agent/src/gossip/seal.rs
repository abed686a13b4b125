//! Sealed gossip datagrams: every datagram is encrypted and authenticated with
//! XChaCha20-Poly1305 under a cluster key, and carries a sender id, a counter and the time it
//! was sent so that replays are refused.
//!
//! Wire format (all integers big-endian):
//!
//! ```text
//! "WFT" | version (1) | key id (4) | nonce (24) | seal( sender (8) | counter (8) | sent ms (8) | chitchat bytes ) | tag (16)
//! ```
//!
//! The first 8 bytes are authenticated as associated data. The key id lets a receiver pick the
//! key without trial decryption and tell "a key I do not have" from "forged". Nonces are random:
//! with 192 bits they never repeat in practice, so no nonce state has to survive restarts.
//!
//! Everything here is pure: the socket that uses it lives in `transport.rs`.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 3] = b"WFT";
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const AAD_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const INNER_HEADER_LEN: usize = 8 + 8 + 8;

/// Bytes a seal adds to a chitchat datagram.
pub const OVERHEAD: usize = AAD_LEN + NONCE_LEN + INNER_HEADER_LEN + TAG_LEN;
const _: () = assert!(OVERHEAD <= chitchat::TRANSPORT_RESERVED, "chitchat must leave room for the seal");

/// A key's public name: the first bytes of a hash of the key. Shown in status and logs so that
/// operators can compare keyrings across nodes without ever printing a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

struct Key {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Key {
        let digest = Sha256::new().chain_update(b"weft gossip key id\0").chain_update(bytes).finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Key { id: KeyId(id), cipher: XChaCha20Poly1305::new(&(*bytes).into()) }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("a keyring needs at least one key")]
    Empty,
    #[error("keys {0} and {1} are the same key")]
    Duplicate(usize, usize),
}

/// The keys of one node: the first seals what it sends, all of them open what it receives.
/// Rotation is: add the new key second everywhere, then make it first everywhere, then drop the
/// old one, so that at every step each sender's key is accepted by every receiver.
pub struct Keyring {
    keys: Vec<Key>,
}

/// Shows key ids only: a keyring must never print its keys.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| k.id.to_string())).finish()
    }
}

impl Keyring {
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, a) in keys.iter().enumerate() {
            if let Some(j) = keys[..i].iter().position(|b| a == b) {
                return Err(KeyringError::Duplicate(j + 1, i + 1));
            }
        }
        Ok(Keyring { keys: keys.iter().map(Key::new).collect() })
    }

    pub fn primary(&self) -> KeyId {
        self.keys[0].id
    }

    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        self.keys.iter().find(|k| k.id.0 == id)
    }
}

/// Why a received datagram was dropped (the label of the rejection metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not a sealed datagram at all: plain chitchat, another protocol, or truncated.
    Unsealed,
    /// Sealed under a key this node does not hold (a rotation step missed, or another cluster).
    UnknownKey,
    /// The seal does not verify: tampered with, or made without the key.
    Forged,
    /// Sent longer ago (or further ahead) than the replay window, by the sender's clock.
    Stale,
    /// A datagram this node has already accepted.
    Replayed,
}

impl Rejection {
    pub const ALL: [Rejection; 5] =
        [Rejection::Unsealed, Rejection::UnknownKey, Rejection::Forged, Rejection::Stale, Rejection::Replayed];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsealed => "unsealed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Forged => "forged",
            Rejection::Stale => "stale",
            Rejection::Replayed => "replayed",
        }
    }
}

/// The sending side: a random id for this process's lifetime and a counter, so that receivers
/// can tell every datagram of this sender apart without any state surviving a restart.
pub struct Sealer {
    sender: u64,
    counter: u64,
}

impl Sealer {
    pub fn new(sender: u64) -> Sealer {
        Sealer { sender, counter: 0 }
    }

    /// Seals `plaintext` (chitchat's encoding of one envelope) into `out`.
    pub fn seal(&mut self, ring: &Keyring, nonce: [u8; NONCE_LEN], now_ms: u64, plaintext: &[u8], out: &mut Vec<u8>) {
        self.counter += 1;
        let key = &ring.keys[0];
        let mut inner = Vec::with_capacity(INNER_HEADER_LEN + plaintext.len());
        inner.extend_from_slice(&self.sender.to_be_bytes());
        inner.extend_from_slice(&self.counter.to_be_bytes());
        inner.extend_from_slice(&now_ms.to_be_bytes());
        inner.extend_from_slice(plaintext);
        out.clear();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&key.id.0);
        let aad = out.clone();
        out.extend_from_slice(&nonce);
        let nonce = XNonce::from(nonce);
        // Encryption of an in-memory buffer cannot fail for these sizes (the AEAD's limit is 256 GiB).
        let sealed = key.cipher.encrypt(&nonce, Payload { msg: &inner, aad: &aad }).expect("XChaCha20-Poly1305 seals");
        out.extend_from_slice(&sealed);
    }
}

/// Replay protection on the receiving side: datagrams older than `window_ms` by the sender's
/// clock are refused outright, and within that time each sender's counters are remembered in
/// a sliding bitmap, so a datagram is accepted at most once.
pub struct ReplayGuard {
    window_ms: u64,
    senders: HashMap<u64, Seen>,
}

/// Senders remembered at most; beyond it, those not heard from within the window are
/// forgotten first (their old datagrams are refused as stale anyway).
const MAX_SENDERS: usize = 8192;

impl ReplayGuard {
    pub fn new(window_ms: u64) -> ReplayGuard {
        ReplayGuard { window_ms, senders: HashMap::new() }
    }

    fn admit(&mut self, sender: u64, counter: u64, sent_ms: u64, now_ms: u64) -> Result<(), Rejection> {
        if sent_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Rejection::Stale);
        }
        if !self.senders.contains_key(&sender) && self.senders.len() >= MAX_SENDERS {
            self.forget_old(now_ms);
        }
        let seen = self.senders.entry(sender).or_insert_with(|| Seen::starting_at(counter));
        seen.last_ms = now_ms;
        if seen.mark(counter) { Ok(()) } else { Err(Rejection::Replayed) }
    }

    fn forget_old(&mut self, now_ms: u64) {
        let window = self.window_ms;
        self.senders.retain(|_, s| now_ms.saturating_sub(s.last_ms) <= window);
        if self.senders.len() >= MAX_SENDERS
            && let Some(oldest) = self.senders.iter().min_by_key(|(_, s)| s.last_ms).map(|(id, _)| *id)
        {
            self.senders.remove(&oldest);
        }
    }
}

const SEEN_WORDS: usize = 16;
/// Counters this far below the highest seen are still told apart (RFC 6479's bitmap: one word
/// is kept spare so that advancing never clears bits still inside the window).
const SEEN_WINDOW: u64 = (SEEN_WORDS as u64 - 1) * 64;

struct Seen {
    highest: u64,
    bits: [u64; SEEN_WORDS],
    last_ms: u64,
}

impl Seen {
    fn starting_at(counter: u64) -> Seen {
        Seen { highest: counter, bits: [0; SEEN_WORDS], last_ms: 0 }
    }

    /// Records `counter`; false if it was seen before or is too old to tell.
    fn mark(&mut self, counter: u64) -> bool {
        if counter.saturating_add(SEEN_WINDOW) < self.highest {
            return false;
        }
        let word = counter / 64;
        if counter > self.highest {
            let current = self.highest / 64;
            for w in current + 1..=(word).min(current + SEEN_WORDS as u64) {
                self.bits[(w % SEEN_WORDS as u64) as usize] = 0;
            }
            self.highest = counter;
        }
        let slot = &mut self.bits[(word % SEEN_WORDS as u64) as usize];
        let bit = 1u64 << (counter % 64);
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }
}

/// Opens a received datagram: the chitchat bytes inside, or why it was dropped. Only
/// authenticated datagrams touch the replay state, so forgeries cannot disturb it.
pub fn open(ring: &Keyring, guard: &mut ReplayGuard, now_ms: u64, datagram: &[u8]) -> Result<Vec<u8>, Rejection> {
    if datagram.len() < OVERHEAD || &datagram[..MAGIC.len()] != MAGIC || datagram[MAGIC.len()] != VERSION {
        return Err(Rejection::Unsealed);
    }
    let (aad, rest) = datagram.split_at(AAD_LEN);
    let key = ring.find(&aad[MAGIC.len() + 1..]).ok_or(Rejection::UnknownKey)?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| Rejection::Unsealed)?;
    let mut inner = key.cipher.decrypt(&nonce, Payload { msg: sealed, aad }).map_err(|_| Rejection::Forged)?;
    let field = |i: usize| u64::from_be_bytes(inner[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (sender, counter, sent_ms) = (field(0), field(1), field(2));
    guard.admit(sender, counter, sent_ms, now_ms)?;
    inner.drain(..INNER_HEADER_LEN);
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const WINDOW: u64 = 60_000;

    fn ring(keys: &[u8]) -> Keyring {
        Keyring::new(&keys.iter().map(|&k| [k; KEY_LEN]).collect::<Vec<_>>()).unwrap()
    }

    fn sealed(sealer: &mut Sealer, ring: &Keyring, now_ms: u64, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(ring, rand::random(), now_ms, msg, &mut out);
        out
    }

    #[test]
    fn a_sealed_datagram_opens_to_what_was_sealed_and_hides_it() {
        let (ring, mut guard) = (ring(&[1]), ReplayGuard::new(WINDOW));
        let datagram = sealed(&mut Sealer::new(7), &ring, NOW, b"node_ip=192.0.2.11");
        assert_eq!(datagram.len(), b"node_ip=192.0.2.11".len() + OVERHEAD);
        assert!(!datagram.windows(7).any(|w| w == b"node_ip"), "the payload is readable on the wire");
        assert_eq!(open(&ring, &mut guard, NOW, &datagram).unwrap(), b"node_ip=192.0.2.11");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let ring = ring(&[1]);
        let datagram = sealed(&mut Sealer::new(7), &ring, NOW, b"hello");
        for byte in 0..datagram.len() {
            let mut bad = datagram.clone();
            bad[byte] ^= 0x10;
            let got = open(&ring, &mut ReplayGuard::new(WINDOW), NOW, &bad);
            assert!(got.is_err(), "byte {byte} changed and still accepted");
        }
    }

    #[test]
    fn rejections_say_why() {
        let (ours, theirs) = (ring(&[1]), ring(&[2]));
        let mut guard = ReplayGuard::new(WINDOW);
        let mut sealer = Sealer::new(7);
        let datagram = sealed(&mut sealer, &ours, NOW, b"hello");

        assert_eq!(open(&ours, &mut guard, NOW, b"\xb0\x53\x00\x00plain chitchat"), Err(Rejection::Unsealed));
        assert_eq!(open(&ours, &mut guard, NOW, &datagram[..OVERHEAD - 1]), Err(Rejection::Unsealed));
        assert_eq!(open(&theirs, &mut guard, NOW, &datagram), Err(Rejection::UnknownKey));
        let mut forged = datagram.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(open(&ours, &mut guard, NOW, &forged), Err(Rejection::Forged));
        // A forgery carrying our key id but made with another key is forged, not unknown.
        let mut other_key = sealed(&mut Sealer::new(8), &theirs, NOW, b"hello");
        other_key[AAD_LEN - KEY_ID_LEN..AAD_LEN].copy_from_slice(&ours.primary().0);
        assert_eq!(open(&ours, &mut guard, NOW, &other_key), Err(Rejection::Forged));

        assert_eq!(open(&ours, &mut guard, NOW, &datagram).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(open(&ours, &mut guard, NOW, &datagram), Err(Rejection::Replayed));
    }

    #[test]
    fn datagrams_outside_the_window_are_stale_either_way() {
        let ring = ring(&[1]);
        let mut sealer = Sealer::new(7);
        let old = sealed(&mut sealer, &ring, NOW - WINDOW - 1, b"x");
        let ahead = sealed(&mut sealer, &ring, NOW + WINDOW + 1, b"x");
        let edge = sealed(&mut sealer, &ring, NOW - WINDOW, b"x");
        let mut guard = ReplayGuard::new(WINDOW);
        assert_eq!(open(&ring, &mut guard, NOW, &old), Err(Rejection::Stale));
        assert_eq!(open(&ring, &mut guard, NOW, &ahead), Err(Rejection::Stale));
        assert!(open(&ring, &mut guard, NOW, &edge).is_ok());
    }

    #[test]
    fn out_of_order_datagrams_are_accepted_once_each() {
        let ring = ring(&[1]);
        let mut sealer = Sealer::new(7);
        let datagrams: Vec<_> = (0..200).map(|_| sealed(&mut sealer, &ring, NOW, b"x")).collect();
        let mut guard = ReplayGuard::new(WINDOW);
        // Newest first, then all again: every one accepted exactly once.
        for d in datagrams.iter().rev() {
            assert!(open(&ring, &mut guard, NOW, d).is_ok());
        }
        for d in &datagrams {
            assert_eq!(open(&ring, &mut guard, NOW, d), Err(Rejection::Replayed));
        }
    }

    #[test]
    fn the_replay_bitmap_slides_without_forgetting_inside_the_window() {
        let mut seen = Seen::starting_at(5);
        assert!(seen.mark(5));
        assert!(!seen.mark(5));
        assert!(seen.mark(5 + 3 * SEEN_WINDOW)); // a big jump clears every word
        assert!(!seen.mark(5), "too old to tell: refused");
        let top = 5 + 3 * SEEN_WINDOW;
        assert!(seen.mark(top - SEEN_WINDOW), "oldest counter still inside the window");
        assert!(!seen.mark(top - SEEN_WINDOW));
        for c in top + 1..top + 2000 {
            assert!(seen.mark(c));
        }
        for c in top + 2000 - SEEN_WINDOW..top + 2000 {
            assert!(!seen.mark(c), "counter {c} accepted twice");
        }
    }

    #[test]
    fn senders_are_told_apart_and_a_restarted_sender_starts_afresh() {
        let ring = ring(&[1]);
        let mut guard = ReplayGuard::new(WINDOW);
        let (mut before, mut after) = (Sealer::new(1), Sealer::new(2));
        let first = sealed(&mut before, &ring, NOW, b"x");
        let restarted = sealed(&mut after, &ring, NOW, b"x"); // same counter, new process
        assert!(open(&ring, &mut guard, NOW, &first).is_ok());
        assert!(open(&ring, &mut guard, NOW, &restarted).is_ok());
    }

    #[test]
    fn the_guard_forgets_quiet_senders_first_when_full() {
        let mut guard = ReplayGuard::new(WINDOW);
        for sender in 0..MAX_SENDERS as u64 {
            guard.admit(sender, 1, NOW - WINDOW, NOW - WINDOW).unwrap();
        }
        guard.admit(u64::MAX, 1, NOW, NOW + 1).unwrap();
        assert_eq!(guard.senders.len(), 1, "only the sender heard within the window is kept");
    }

    #[test]
    fn rotation_steps_keep_every_pair_talking() {
        // Old key 1, new key 2. Each step is applied node by node, so at every moment nodes are
        // in one of two adjacent steps, and each must open what the other seals.
        let steps = [ring(&[1]), ring(&[1, 2]), ring(&[2, 1]), ring(&[2])];
        for pair in steps.windows(2) {
            for (a, b) in [(&pair[0], &pair[1]), (&pair[1], &pair[0])] {
                let datagram = sealed(&mut Sealer::new(rand::random()), a, NOW, b"x");
                assert!(open(b, &mut ReplayGuard::new(WINDOW), NOW, &datagram).is_ok());
            }
        }
        // Skipping a step breaks it: that is why the order is documented.
        let datagram = sealed(&mut Sealer::new(9), &steps[0], NOW, b"x");
        assert_eq!(open(&steps[3], &mut ReplayGuard::new(WINDOW), NOW, &datagram), Err(Rejection::UnknownKey));
    }

    #[test]
    fn keyrings_refuse_empty_and_repeated_keys() {
        assert_eq!(Keyring::new(&[]).err(), Some(KeyringError::Empty));
        assert_eq!(
            Keyring::new(&[[1; KEY_LEN], [2; KEY_LEN], [1; KEY_LEN]]).err(),
            Some(KeyringError::Duplicate(1, 3))
        );
        let ring = ring(&[1, 2]);
        assert_eq!(ring.primary(), ring.ids()[0]);
        assert_ne!(ring.ids()[0], ring.ids()[1]);
        assert_eq!(ring.primary().to_string().len(), 2 * KEY_ID_LEN);
    }
}
