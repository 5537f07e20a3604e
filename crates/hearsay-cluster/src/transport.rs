//! Authenticated gossip: every datagram chitchat sends is sealed with XChaCha20-Poly1305 under
//! the cluster key, with replay protection, and nothing is handed to chitchat unless it opened.
//!
//! chitchat 0.13 keeps its message serializer crate-private, so this wraps its transport instead
//! of re-implementing it. chitchat's own UDP socket lives on 127.0.0.1 (an ephemeral port) and
//! only ever talks to *relay sockets* of this module, one per peer, also on loopback:
//!
//! ```text
//!  chitchat ──plain──► relay[peer] ──seal──► gossip socket ══UDP══► peer's gossip socket
//!  chitchat ◄─plain─── relay[peer] ◄─open─── gossip socket ◄═UDP══ peer
//! ```
//!
//! The relay socket a plaintext datagram goes through tells which peer it is for (or from), so
//! chitchat sees real peer addresses. Datagrams reaching chitchat's socket from anything other
//! than a relay socket are dropped, as are datagrams on a relay socket not sent by chitchat.
//!
//! Sealed datagram: `"HS" | 1 (format) | nonce (24) | ciphertext | tag (16)`, with the cluster id
//! as associated data. Plaintext: `sender instance (8) | sequence (8) | sent at, unix ms (8) |
//! message id (8) | fragment index (2) | fragment count (2) | chitchat bytes`. A chitchat message
//! that would not fit one UDP datagram once sealed travels in fragments.
//!
//! Replay protection: a datagram is dropped unless its timestamp is within `max_clock_skew` of
//! the receiver's clock, and its (instance, sequence) was not seen before (a 128-sequence sliding
//! window per sender instance, like IPsec's). The window lives in memory: after a restart a node
//! accepts one replay of datagrams younger than `max_clock_skew`, which cannot roll state back
//! because chitchat only adopts newer versions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{
    RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatSocket,
};
use chitchat::ChitchatEnvelope;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
const MAGIC: &[u8; 2] = b"HS";
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const PREFIX_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
const HEADER_LEN: usize = 8 + 8 + 8 + 8 + 2 + 2;
/// Smallest datagram that can be valid: prefix, header, tag (and at least nothing else).
pub const MIN_SEALED: usize = PREFIX_LEN + HEADER_LEN + TAG_LEN;
/// Chitchat bytes carried by one fragment.
const FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - MIN_SEALED;
const MAX_FRAGMENTS: u16 = 4;
const REPLAY_WINDOW: u64 = 128;
const MAX_SENDERS: usize = 4096;
const MAX_PARTIAL_MESSAGES: usize = 64;
const PARTIAL_MESSAGE_TTL: Duration = Duration::from_secs(5);
const MAX_RELAYS: usize = 1024;

/// The cluster keys: the first seals, every one opens (two while a key is being rotated).
#[derive(Clone)]
pub struct Keyring {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.ciphers.len())
    }
}

impl Keyring {
    /// `None` when `keys` is empty.
    pub fn new(keys: &[[u8; 32]]) -> Option<Keyring> {
        if keys.is_empty() {
            return None;
        }
        Some(Keyring {
            ciphers: keys
                .iter()
                .map(|key| XChaCha20Poly1305::new(key.into()))
                .collect(),
        })
    }
}

/// What the gossip transport did, for operators and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub datagrams_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Did not open under any cluster key (forged, corrupted, wrong key or cluster id).
    pub dropped_forged: AtomicU64,
    /// Opened, but its sequence number was seen before.
    pub dropped_replayed: AtomicU64,
    /// Opened, but sent too long ago or too far in the future (`max_clock_skew`).
    pub dropped_stale: AtomicU64,
    /// Too short to be a sealed datagram, or not in hearsay's format.
    pub dropped_malformed: AtomicU64,
    /// Larger than any datagram hearsay sends.
    pub dropped_oversized: AtomicU64,
    /// Plaintext on the loopback relay that did not come from chitchat or a relay socket.
    pub dropped_local: AtomicU64,
    /// Outgoing messages that could not be sent.
    pub send_errors: AtomicU64,
}

/// How gossip travels: sealed under a [`Keyring`], or plain (loopback-only clusters).
#[derive(Debug, Clone)]
pub struct GossipTransport {
    pub keyring: Option<Keyring>,
    pub cluster_id: String,
    pub max_clock_skew: Duration,
    pub stats: Arc<TransportStats>,
}

#[async_trait::async_trait]
impl Transport for GossipTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let Some(keyring) = self.keyring.clone() else {
            if !listen.ip().is_loopback() {
                anyhow::bail!("refusing unauthenticated gossip on {listen}: set a cluster key");
            }
            return chitchat::transport::UdpTransport.open(listen).await;
        };
        let outer = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind the gossip address {listen}/UDP"))?;
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let inner = ChitchatSocket::open(loopback).await?;
        let inner_address = inner.local_addr()?;
        Ok(Box::new(SealedSocket {
            inner,
            inner_address,
            outer,
            relays: HashMap::new(),
            relay_peers: HashMap::new(),
            sealer: Sealer::new(keyring.clone(), self.cluster_id.clone()),
            opener: Opener::new(keyring, self.cluster_id.clone(), self.max_clock_skew),
            stats: Arc::clone(&self.stats),
            buffer: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

struct Relay {
    socket: UdpSocket,
    address: SocketAddr,
    last_used: Instant,
}

struct SealedSocket {
    /// chitchat's own socket, on loopback.
    inner: ChitchatSocket,
    inner_address: SocketAddr,
    /// The gossip address other nodes talk to.
    outer: UdpSocket,
    relays: HashMap<SocketAddr, Relay>,
    /// Relay socket address → the peer it stands for.
    relay_peers: HashMap<SocketAddr, SocketAddr>,
    sealer: Sealer,
    opener: Opener,
    stats: Arc<TransportStats>,
    buffer: Box<[u8]>,
}

impl SealedSocket {
    async fn relay(&mut self, peer: SocketAddr) -> anyhow::Result<&Relay> {
        if !self.relays.contains_key(&peer) {
            if self.relays.len() >= MAX_RELAYS {
                if let Some(oldest) = self
                    .relays
                    .iter()
                    .min_by_key(|(_, relay)| relay.last_used)
                    .map(|(peer, _)| *peer)
                {
                    if let Some(relay) = self.relays.remove(&oldest) {
                        self.relay_peers.remove(&relay.address);
                    }
                }
            }
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .context("cannot bind a loopback gossip relay socket")?;
            let address = socket.local_addr()?;
            self.relay_peers.insert(address, peer);
            self.relays.insert(
                peer,
                Relay {
                    socket,
                    address,
                    last_used: Instant::now(),
                },
            );
        }
        let relay = self.relays.get_mut(&peer).expect("inserted above");
        relay.last_used = Instant::now();
        Ok(relay)
    }

    /// Hands an opened message from `peer` to chitchat through the peer's relay socket.
    async fn deliver(&mut self, peer: SocketAddr, message: &[u8]) {
        let inner_address = self.inner_address;
        match self.relay(peer).await {
            Ok(relay) => {
                if let Err(error) = relay.socket.try_send_to(message, inner_address) {
                    tracing::debug!(%peer, %error, "gossip relay dropped a message");
                }
            }
            Err(error) => tracing::warn!(%peer, %error, "cannot relay gossip"),
        }
    }
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outer.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let inner_address = self.inner_address;
        let relay = self.relay(to).await?;
        let relay_address = relay.address;
        self.inner.send(relay_address, envelope).await?;
        let relay = self.relays.get(&to).expect("relay exists");
        // Loopback delivery is immediate; the bound only guards against a lost datagram.
        let plain = loop {
            let (length, from) = tokio::time::timeout(
                Duration::from_secs(1),
                relay.socket.recv_from(&mut self.buffer),
            )
            .await
            .context("gossip relay lost a message")??;
            if from == inner_address {
                break &self.buffer[..length];
            }
            add_to(&self.stats.dropped_local, 1);
        };
        let mut sent = 0;
        for datagram in self.sealer.seal(plain) {
            match self.outer.send_to(&datagram, to).await {
                Ok(length) => {
                    sent += length;
                    add_to(&self.stats.datagrams_sent, 1);
                    add_to(&self.stats.bytes_sent, length as u64);
                }
                Err(error) => {
                    add_to(&self.stats.send_errors, 1);
                    return Err(error).with_context(|| format!("cannot send gossip to {to}"));
                }
            }
        }
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            tokio::select! {
                received = self.inner.recv() => {
                    let mut outcome = received?;
                    match self.relay_peers.get(&outcome.from_addr) {
                        Some(peer) => {
                            outcome.from_addr = *peer;
                            return Ok(outcome);
                        }
                        None => add_to(&self.stats.dropped_local, 1),
                    }
                }
                received = self.outer.recv_from(&mut self.buffer) => {
                    let (length, from) = match received {
                        Ok(received) => received,
                        // An ICMP error from an earlier send (peer gone); not fatal.
                        Err(error) if matches!(error.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::OutOfMemory) => continue,
                        Err(error) => return Err(error).context("gossip socket failed"),
                    };
                    add_to(&self.stats.datagrams_received, 1);
                    add_to(&self.stats.bytes_received, length as u64);
                    let datagram = self.buffer[..length].to_vec();
                    match self.opener.open(&datagram, unix_millis(), Instant::now()) {
                        Ok(Some(message)) => self.deliver(from, &message).await,
                        Ok(None) => {}
                        Err(drop) => {
                            let counter = match drop {
                                Drop::Forged => &self.stats.dropped_forged,
                                Drop::Replayed => &self.stats.dropped_replayed,
                                Drop::Stale => &self.stats.dropped_stale,
                                Drop::Malformed => &self.stats.dropped_malformed,
                                Drop::Oversized => &self.stats.dropped_oversized,
                            };
                            add_to(counter, 1);
                            tracing::debug!(%from, reason = ?drop, length, "gossip datagram dropped");
                        }
                    }
                }
            }
        }
    }
}

fn add_to(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn random_u64() -> u64 {
    use chacha20poly1305::aead::rand_core::RngCore as _;
    OsRng.next_u64()
}

/// Seals outgoing messages.
pub struct Sealer {
    keyring: Keyring,
    cluster_id: String,
    instance: u64,
    sequence: u64,
    message: u64,
}

impl Sealer {
    pub fn new(keyring: Keyring, cluster_id: String) -> Sealer {
        Sealer {
            keyring,
            cluster_id,
            instance: random_u64(),
            sequence: 0,
            message: 0,
        }
    }

    /// The sealed datagrams carrying `message` (one unless it is too large for one datagram).
    pub fn seal(&mut self, message: &[u8]) -> Vec<Vec<u8>> {
        self.seal_at(message, unix_millis())
    }

    fn seal_at(&mut self, message: &[u8], now_ms: u64) -> Vec<Vec<u8>> {
        self.message += 1;
        let chunks: Vec<&[u8]> = if message.is_empty() {
            vec![message]
        } else {
            message.chunks(FRAGMENT_PAYLOAD).collect()
        };
        let count = chunks.len() as u16;
        let cipher = &self.keyring.ciphers[0];
        chunks
            .into_iter()
            .enumerate()
            .map(|(index, chunk)| {
                self.sequence += 1;
                let mut plain = Vec::with_capacity(HEADER_LEN + chunk.len());
                plain.extend_from_slice(&self.instance.to_le_bytes());
                plain.extend_from_slice(&self.sequence.to_le_bytes());
                plain.extend_from_slice(&now_ms.to_le_bytes());
                plain.extend_from_slice(&self.message.to_le_bytes());
                plain.extend_from_slice(&(index as u16).to_le_bytes());
                plain.extend_from_slice(&count.to_le_bytes());
                plain.extend_from_slice(chunk);
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &plain,
                            aad: self.cluster_id.as_bytes(),
                        },
                    )
                    .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
                let mut datagram = Vec::with_capacity(PREFIX_LEN + sealed.len());
                datagram.extend_from_slice(MAGIC);
                datagram.push(FORMAT);
                datagram.extend_from_slice(&nonce);
                datagram.extend_from_slice(&sealed);
                datagram
            })
            .collect()
    }
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Forged,
    Replayed,
    Stale,
    Malformed,
    Oversized,
}

struct SenderWindow {
    highest: u64,
    /// Bit i set = sequence `highest - i` seen.
    seen: u128,
    last_seen: Instant,
}

struct PartialMessage {
    fragments: Vec<Option<Vec<u8>>>,
    started: Instant,
}

/// Opens incoming datagrams: authenticity, freshness, replay window, reassembly.
pub struct Opener {
    keyring: Keyring,
    cluster_id: String,
    max_clock_skew: Duration,
    senders: HashMap<u64, SenderWindow>,
    partial: HashMap<(u64, u64), PartialMessage>,
}

impl Opener {
    pub fn new(keyring: Keyring, cluster_id: String, max_clock_skew: Duration) -> Opener {
        Opener {
            keyring,
            cluster_id,
            max_clock_skew,
            senders: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// The chitchat message a datagram completes (`None` while fragments are missing), or why
    /// it was dropped.
    pub fn open(
        &mut self,
        datagram: &[u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, Drop> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Drop::Oversized);
        }
        if datagram.len() < MIN_SEALED || &datagram[..2] != MAGIC || datagram[2] != FORMAT {
            return Err(Drop::Malformed);
        }
        let nonce = XNonce::from_slice(&datagram[3..PREFIX_LEN]);
        let payload = || Payload {
            msg: &datagram[PREFIX_LEN..],
            aad: self.cluster_id.as_bytes(),
        };
        let plain = self
            .keyring
            .ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(nonce, payload()).ok())
            .ok_or(Drop::Forged)?;
        let field = |at: usize| u64::from_le_bytes(plain[at..at + 8].try_into().expect("8 bytes"));
        let instance = field(0);
        let sequence = field(8);
        let sent_ms = field(16);
        let message_id = field(24);
        let index = u16::from_le_bytes([plain[32], plain[33]]);
        let count = u16::from_le_bytes([plain[34], plain[35]]);
        if sent_ms.abs_diff(now_ms) > self.max_clock_skew.as_millis() as u64 {
            return Err(Drop::Stale);
        }
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(Drop::Malformed);
        }
        self.check_replay(instance, sequence, now)?;
        let body = plain[HEADER_LEN..].to_vec();
        if count == 1 {
            return Ok(Some(body));
        }
        self.partial
            .retain(|_, partial| now.duration_since(partial.started) < PARTIAL_MESSAGE_TTL);
        if self.partial.len() >= MAX_PARTIAL_MESSAGES
            && !self.partial.contains_key(&(instance, message_id))
        {
            if let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, partial)| partial.started)
                .map(|(key, _)| *key)
            {
                self.partial.remove(&oldest);
            }
        }
        let partial = self
            .partial
            .entry((instance, message_id))
            .or_insert_with(|| PartialMessage {
                fragments: vec![None; count as usize],
                started: now,
            });
        if partial.fragments.len() != count as usize {
            return Err(Drop::Malformed);
        }
        partial.fragments[index as usize] = Some(body);
        if partial.fragments.iter().all(Option::is_some) {
            let partial = self
                .partial
                .remove(&(instance, message_id))
                .expect("present");
            return Ok(Some(
                partial.fragments.into_iter().flatten().flatten().collect(),
            ));
        }
        Ok(None)
    }

    fn check_replay(&mut self, instance: u64, sequence: u64, now: Instant) -> Result<(), Drop> {
        if !self.senders.contains_key(&instance) && self.senders.len() >= MAX_SENDERS {
            let horizon = self.max_clock_skew * 2;
            self.senders
                .retain(|_, window| now.duration_since(window.last_seen) < horizon);
            if self.senders.len() >= MAX_SENDERS {
                if let Some(oldest) = self
                    .senders
                    .iter()
                    .min_by_key(|(_, window)| window.last_seen)
                    .map(|(instance, _)| *instance)
                {
                    self.senders.remove(&oldest);
                }
            }
        }
        let window = self.senders.entry(instance).or_insert(SenderWindow {
            highest: 0,
            seen: 0,
            last_seen: now,
        });
        if sequence > window.highest {
            let shift = sequence - window.highest;
            window.seen = if shift >= REPLAY_WINDOW {
                1
            } else {
                (window.seen << shift) | 1
            };
            window.highest = sequence;
        } else {
            let age = window.highest - sequence;
            if age >= REPLAY_WINDOW || window.seen & (1u128 << age) != 0 {
                return Err(Drop::Replayed);
            }
            window.seen |= 1u128 << age;
        }
        window.last_seen = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(byte: u8) -> Keyring {
        Keyring::new(&[[byte; 32]]).unwrap()
    }

    fn opener(keys: &[[u8; 32]]) -> Opener {
        Opener::new(
            Keyring::new(keys).unwrap(),
            "test".to_owned(),
            Duration::from_secs(60),
        )
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_sealed_message_opens_once() {
        let mut sealer = Sealer::new(keyring(1), "test".to_owned());
        let mut opener = opener(&[[1; 32]]);
        let datagrams = sealer.seal_at(b"hello chitchat", NOW);
        assert_eq!(datagrams.len(), 1);
        assert_ne!(&datagrams[0][PREFIX_LEN..], b"hello chitchat");
        let now = Instant::now();
        assert_eq!(
            opener.open(&datagrams[0], NOW, now),
            Ok(Some(b"hello chitchat".to_vec()))
        );
        assert_eq!(opener.open(&datagrams[0], NOW, now), Err(Drop::Replayed));
    }

    #[test]
    fn forged_truncated_stale_and_oversized_datagrams_are_dropped() {
        let mut sealer = Sealer::new(keyring(1), "test".to_owned());
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let datagram = sealer.seal_at(b"state", NOW).remove(0);
        for position in [3, PREFIX_LEN, datagram.len() - 1] {
            let mut flipped = datagram.clone();
            flipped[position] ^= 1;
            assert_eq!(opener.open(&flipped, NOW, now), Err(Drop::Forged));
        }
        assert_eq!(
            opener.open(&datagram[..datagram.len() - 1], NOW, now),
            Err(Drop::Forged)
        );
        assert_eq!(opener.open(&datagram[..20], NOW, now), Err(Drop::Malformed));
        assert_eq!(opener.open(b"", NOW, now), Err(Drop::Malformed));
        assert_eq!(
            opener.open(&vec![0; MAX_DATAGRAM + 1], NOW, now),
            Err(Drop::Oversized)
        );
        // Another key, another cluster id.
        let mut stranger = Sealer::new(keyring(2), "test".to_owned());
        let foreign = stranger.seal_at(b"state", NOW).remove(0);
        assert_eq!(opener.open(&foreign, NOW, now), Err(Drop::Forged));
        let mut other_cluster = Sealer::new(keyring(1), "other".to_owned());
        let foreign = other_cluster.seal_at(b"state", NOW).remove(0);
        assert_eq!(opener.open(&foreign, NOW, now), Err(Drop::Forged));
        // Too old, too new.
        let old = sealer.seal_at(b"state", NOW - 61_000).remove(0);
        assert_eq!(opener.open(&old, NOW, now), Err(Drop::Stale));
        let future = sealer.seal_at(b"state", NOW + 61_000).remove(0);
        assert_eq!(opener.open(&future, NOW, now), Err(Drop::Stale));
        // The genuine one still opens.
        assert_eq!(
            opener.open(&datagram, NOW, now),
            Ok(Some(b"state".to_vec()))
        );
    }

    #[test]
    fn the_replay_window_accepts_reordering_but_not_repeats() {
        let mut sealer = Sealer::new(keyring(1), "test".to_owned());
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let datagrams: Vec<Vec<u8>> = (0..200)
            .map(|_| sealer.seal_at(b"x", NOW).remove(0))
            .collect();
        assert!(opener.open(&datagrams[10], NOW, now).unwrap().is_some());
        assert!(opener.open(&datagrams[5], NOW, now).unwrap().is_some());
        assert_eq!(opener.open(&datagrams[5], NOW, now), Err(Drop::Replayed));
        assert!(opener.open(&datagrams[150], NOW, now).unwrap().is_some());
        // Older than the window: refused, since it can no longer be told apart from a replay.
        assert_eq!(opener.open(&datagrams[11], NOW, now), Err(Drop::Replayed));
        assert!(opener.open(&datagrams[149], NOW, now).unwrap().is_some());
        assert_eq!(opener.open(&datagrams[150], NOW, now), Err(Drop::Replayed));
    }

    #[test]
    fn both_keys_of_a_rotation_open_and_the_first_seals() {
        let mut old = Sealer::new(keyring(1), "test".to_owned());
        let mut new = Sealer::new(keyring(2), "test".to_owned());
        let mut rotating = opener(&[[2; 32], [1; 32]]);
        let now = Instant::now();
        assert!(rotating
            .open(&old.seal_at(b"a", NOW).remove(0), NOW, now)
            .unwrap()
            .is_some());
        assert!(rotating
            .open(&new.seal_at(b"b", NOW).remove(0), NOW, now)
            .unwrap()
            .is_some());
        let mut rotating_sealer = Sealer::new(
            Keyring::new(&[[2; 32], [1; 32]]).unwrap(),
            "test".to_owned(),
        );
        let mut new_only = opener(&[[2; 32]]);
        assert!(new_only
            .open(&rotating_sealer.seal_at(b"c", NOW).remove(0), NOW, now)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_large_message_travels_in_fragments_that_fit_a_datagram() {
        let mut sealer = Sealer::new(keyring(1), "test".to_owned());
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let message: Vec<u8> = (0..MAX_DATAGRAM).map(|i| i as u8).collect();
        let datagrams = sealer.seal_at(&message, NOW);
        assert_eq!(datagrams.len(), 2);
        assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
        assert_eq!(opener.open(&datagrams[1], NOW, now), Ok(None));
        assert_eq!(opener.open(&datagrams[0], NOW, now), Ok(Some(message)));
    }

    #[test]
    fn random_and_mutated_datagrams_never_open_or_panic() {
        let mut sealer = Sealer::new(keyring(1), "test".to_owned());
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let genuine = sealer.seal_at(&[7u8; 300], NOW).remove(0);
        let mut next = crate::test_rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let datagram: Vec<u8> = if round % 2 == 0 {
                let length = (next() % 400) as usize;
                let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
                if round % 4 == 0 && bytes.len() > 3 {
                    bytes[..3].copy_from_slice(&[b'H', b'S', FORMAT]);
                }
                bytes
            } else {
                let mut bytes = genuine.clone();
                for _ in 0..=(next() % 4) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= (next() as u8) | 1;
                }
                bytes.truncate(1 + (next() as usize) % bytes.len());
                bytes
            };
            assert!(
                opener.open(&datagram, NOW, now).is_err(),
                "round {round} opened"
            );
        }
        assert!(opener.open(&genuine, NOW, now).unwrap().is_some());
    }
}
