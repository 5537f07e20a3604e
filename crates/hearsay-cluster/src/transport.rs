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
//! Sealed datagram: `"HS" | 2 (format) | nonce (24) | ciphertext | tag (16)`, with the cluster id
//! and the recipient's gossip address as associated data. Plaintext: `sender instance (8) |
//! sequence (8) | sent at, unix ms (8) | message id (8) | fragment index (2) | fragment count (2) |
//! sender's gossip address (18) | chitchat bytes`. A chitchat message that would not fit one UDP
//! datagram once sealed travels in fragments. Addresses are 16 bytes of IPv6 (IPv4 mapped) and a
//! big-endian port.
//!
//! Recipient: a node opens only datagrams sealed for its own advertised gossip address
//! (`cluster.advertise`), so a datagram captured on its way to one node does not open at another
//! (the replay window is per receiver: without this, each other node would accept it once). Both
//! sides agree on that address: chitchat sends to a peer's advertised address (its `ChitchatId`),
//! and a datagram names its sender's, so a reply (chitchat answers the source address, which
//! behind NAT or from a node listening on 0.0.0.0 need not be the advertised one) is sealed for
//! the address the peer named. A seed is sealed for the address it is written as until it
//! answers, so seeds should name nodes by their advertised addresses. Misdirected datagrams do not
//! open and are counted as forged.
//!
//! Replay protection: a datagram is dropped unless its timestamp is within `max_clock_skew` of
//! the receiver's clock, and its (instance, sequence) was not seen before (a 128-sequence sliding
//! window per sender instance, like IPsec's). The window lives in memory: after a restart a node
//! accepts one replay of datagrams sent to it younger than `max_clock_skew`, which cannot roll
//! state back because chitchat only adopts newer versions.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
/// 2: the recipient is bound in and the sender named (format 1 datagrams are malformed now).
const FORMAT: u8 = 2;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const PREFIX_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
/// A gossip address on the wire: IPv6 (IPv4 mapped), port.
const ADDRESS_LEN: usize = 16 + 2;
const HEADER_LEN: usize = 8 + 8 + 8 + 8 + 2 + 2 + ADDRESS_LEN;
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
    /// Did not open under any cluster key (forged, corrupted, wrong key or cluster id, or sealed
    /// for another node: captured on its way there and sent here).
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
    /// This node's advertised gossip address (`cluster.advertise`): what peers send to, so what
    /// datagrams for this node are sealed for.
    pub advertise: SocketAddr,
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
        Ok(Box::new(SealedSocket::new(outer, keyring, self).await?))
    }
}

struct Relay {
    socket: UdpSocket,
    address: SocketAddr,
    last_used: Instant,
    /// The gossip address the peer at this address names itself with in its datagrams (once
    /// one opened): what datagrams to it are sealed for.
    recipient: Option<SocketAddr>,
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
    async fn new(
        outer: UdpSocket,
        keyring: Keyring,
        transport: &GossipTransport,
    ) -> anyhow::Result<SealedSocket> {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let inner = ChitchatSocket::open(loopback).await?;
        let inner_address = inner.local_addr()?;
        let cluster_id = transport.cluster_id.clone();
        Ok(SealedSocket {
            inner,
            inner_address,
            outer,
            relays: HashMap::new(),
            relay_peers: HashMap::new(),
            sealer: Sealer::new(keyring.clone(), cluster_id.clone(), transport.advertise),
            opener: Opener::new(
                keyring,
                cluster_id,
                transport.advertise,
                transport.max_clock_skew,
            ),
            stats: Arc::clone(&transport.stats),
            buffer: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
        })
    }

    async fn relay(&mut self, peer: SocketAddr) -> anyhow::Result<&mut Relay> {
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
                    recipient: None,
                },
            );
        }
        let relay = self.relays.get_mut(&peer).expect("inserted above");
        relay.last_used = Instant::now();
        Ok(relay)
    }

    /// Hands an opened message from `peer` to chitchat through the peer's relay socket, and
    /// remembers the gossip address the peer named itself with, for the replies.
    async fn deliver(&mut self, peer: SocketAddr, opened: Opened) {
        let inner_address = self.inner_address;
        match self.relay(peer).await {
            Ok(relay) => {
                relay.recipient = Some(opened.sender);
                // Sent on the (non-blocking) socket directly, not with tokio's `try_send_to`:
                // tokio reports a socket bound a moment ago as not writable until its reactor has
                // looked at it, which dropped the first message from every new peer. And no
                // `.await` here: chitchat cancels `recv` whenever its gossip timer fires first.
                let sent = socket2::SockRef::from(&relay.socket)
                    .send_to(&opened.message, &inner_address.into());
                if let Err(error) = sent {
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
        let recipient = relay.recipient.unwrap_or(to);
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
        for datagram in self.sealer.seal(plain, recipient) {
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
                        Ok(Some(opened)) => self.deliver(from, opened).await,
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

/// A gossip address as it travels: 16 bytes of IPv6 (an IPv4 address mapped, so both spellings
/// of one address agree), then the port, big-endian.
fn encode_address(address: SocketAddr) -> [u8; ADDRESS_LEN] {
    let ip = match address.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut bytes = [0; ADDRESS_LEN];
    bytes[..16].copy_from_slice(&ip.octets());
    bytes[16..].copy_from_slice(&address.port().to_be_bytes());
    bytes
}

fn decode_address(bytes: &[u8; ADDRESS_LEN]) -> SocketAddr {
    let mut octets = [0; 16];
    octets.copy_from_slice(&bytes[..16]);
    let ip = Ipv6Addr::from(octets);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be_bytes([bytes[16], bytes[17]]))
}

/// The associated data: the cluster id, then the recipient's gossip address (fixed length, so
/// the two cannot run into each other).
fn associated_data(cluster_id: &str, recipient: SocketAddr) -> Vec<u8> {
    let mut aad = Vec::with_capacity(cluster_id.len() + ADDRESS_LEN);
    aad.extend_from_slice(cluster_id.as_bytes());
    aad.extend_from_slice(&encode_address(recipient));
    aad
}

/// Seals outgoing messages.
pub struct Sealer {
    keyring: Keyring,
    cluster_id: String,
    /// This node's advertised gossip address, named in every datagram.
    sender: [u8; ADDRESS_LEN],
    instance: u64,
    sequence: u64,
    message: u64,
}

impl Sealer {
    pub fn new(keyring: Keyring, cluster_id: String, advertise: SocketAddr) -> Sealer {
        Sealer {
            keyring,
            cluster_id,
            sender: encode_address(advertise),
            instance: random_u64(),
            sequence: 0,
            message: 0,
        }
    }

    /// The sealed datagrams carrying `message` to the node whose advertised gossip address is
    /// `recipient` (one datagram unless the message is too large for one).
    pub fn seal(&mut self, message: &[u8], recipient: SocketAddr) -> Vec<Vec<u8>> {
        self.seal_at(message, recipient, unix_millis())
    }

    fn seal_at(&mut self, message: &[u8], recipient: SocketAddr, now_ms: u64) -> Vec<Vec<u8>> {
        self.message += 1;
        let chunks: Vec<&[u8]> = if message.is_empty() {
            vec![message]
        } else {
            message.chunks(FRAGMENT_PAYLOAD).collect()
        };
        let count = chunks.len() as u16;
        let cipher = &self.keyring.ciphers[0];
        let aad = associated_data(&self.cluster_id, recipient);
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
                plain.extend_from_slice(&self.sender);
                plain.extend_from_slice(chunk);
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &plain,
                            aad: &aad,
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

/// A chitchat message that opened, and the gossip address its sender names itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub message: Vec<u8>,
    pub sender: SocketAddr,
}

/// Opens incoming datagrams: authenticity (for this node), freshness, replay window,
/// reassembly.
pub struct Opener {
    keyring: Keyring,
    /// Cluster id and this node's advertised gossip address: only datagrams sealed for them open.
    aad: Vec<u8>,
    max_clock_skew: Duration,
    senders: HashMap<u64, SenderWindow>,
    partial: HashMap<(u64, u64), PartialMessage>,
}

impl Opener {
    pub fn new(
        keyring: Keyring,
        cluster_id: String,
        advertise: SocketAddr,
        max_clock_skew: Duration,
    ) -> Opener {
        Opener {
            keyring,
            aad: associated_data(&cluster_id, advertise),
            max_clock_skew,
            senders: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// The chitchat message a datagram completes (`None` while fragments are missing), or why
    /// it was dropped. A datagram sealed for another node does not open: [`Drop::Forged`].
    pub fn open(
        &mut self,
        datagram: &[u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<Option<Opened>, Drop> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(Drop::Oversized);
        }
        if datagram.len() < MIN_SEALED || &datagram[..2] != MAGIC || datagram[2] != FORMAT {
            return Err(Drop::Malformed);
        }
        let nonce = XNonce::from_slice(&datagram[3..PREFIX_LEN]);
        let payload = || Payload {
            msg: &datagram[PREFIX_LEN..],
            aad: &self.aad,
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
        let sender = decode_address(plain[36..HEADER_LEN].try_into().expect("address length"));
        if sent_ms.abs_diff(now_ms) > self.max_clock_skew.as_millis() as u64 {
            return Err(Drop::Stale);
        }
        if count == 0 || count > MAX_FRAGMENTS || index >= count {
            return Err(Drop::Malformed);
        }
        self.check_replay(instance, sequence, now)?;
        let body = plain[HEADER_LEN..].to_vec();
        if count == 1 {
            return Ok(Some(Opened {
                message: body,
                sender,
            }));
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
            return Ok(Some(Opened {
                message: partial.fragments.into_iter().flatten().flatten().collect(),
                sender,
            }));
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

    /// The advertised gossip addresses of the nodes in these tests: A seals, B opens.
    fn node(name: char) -> SocketAddr {
        match name {
            'A' => "10.0.0.1:7946",
            'B' => "10.0.0.2:7946",
            'C' => "10.0.0.3:7946",
            _ => "[fd00::4]:7946",
        }
        .parse()
        .unwrap()
    }

    fn new_sealer(key: u8, cluster_id: &str) -> Sealer {
        Sealer::new(keyring(key), cluster_id.to_owned(), node('A'))
    }

    fn opener(keys: &[[u8; 32]]) -> Opener {
        opener_at(keys, node('B'))
    }

    fn opener_at(keys: &[[u8; 32]], advertise: SocketAddr) -> Opener {
        Opener::new(
            Keyring::new(keys).unwrap(),
            "test".to_owned(),
            advertise,
            Duration::from_secs(60),
        )
    }

    /// What opening a whole message from A gives.
    fn from_a(message: &[u8]) -> Result<Option<Opened>, Drop> {
        Ok(Some(Opened {
            message: message.to_vec(),
            sender: node('A'),
        }))
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_sealed_message_opens_once() {
        let mut sealer = new_sealer(1, "test");
        let mut opener = opener(&[[1; 32]]);
        let datagrams = sealer.seal_at(b"hello chitchat", node('B'), NOW);
        assert_eq!(datagrams.len(), 1);
        assert_ne!(&datagrams[0][PREFIX_LEN..], b"hello chitchat");
        let now = Instant::now();
        assert_eq!(
            opener.open(&datagrams[0], NOW, now),
            from_a(b"hello chitchat")
        );
        assert_eq!(opener.open(&datagrams[0], NOW, now), Err(Drop::Replayed));
    }

    #[test]
    fn a_datagram_opens_only_at_the_node_it_was_sealed_for() {
        let mut sealer = new_sealer(1, "test");
        let now = Instant::now();
        let for_b = sealer.seal_at(b"state", node('B'), NOW).remove(0);
        // Captured on its way to B and sent to C (whose replay window has never seen it).
        let mut at_c = opener_at(&[[1; 32]], node('C'));
        assert_eq!(at_c.open(&for_b, NOW, now), Err(Drop::Forged));
        let mut at_b = opener_at(&[[1; 32]], node('B'));
        assert_eq!(at_b.open(&for_b, NOW, now), from_a(b"state"));
        // Another port of the same host is another node.
        let mut next_door = opener_at(&[[1; 32]], "10.0.0.2:7947".parse().unwrap());
        let for_b = sealer.seal_at(b"state", node('B'), NOW).remove(0);
        assert_eq!(next_door.open(&for_b, NOW, now), Err(Drop::Forged));
        // Both spellings of an IPv4 address are one recipient.
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:7946".parse().unwrap();
        let for_mapped = sealer.seal_at(b"mapped", mapped, NOW).remove(0);
        assert_eq!(at_b.open(&for_mapped, NOW, now), from_a(b"mapped"));
        // Every fragment is bound.
        let large = vec![9u8; MAX_DATAGRAM];
        let fragments = sealer.seal_at(&large, node('B'), NOW);
        assert_eq!(fragments.len(), 2);
        for fragment in &fragments {
            assert_eq!(at_c.open(fragment, NOW, now), Err(Drop::Forged));
        }
        assert_eq!(at_b.open(&fragments[0], NOW, now), Ok(None));
        assert_eq!(at_b.open(&fragments[1], NOW, now), from_a(&large));
    }

    #[test]
    fn a_datagram_names_its_sender() {
        let mut from_v6 = Sealer::new(keyring(1), "test".to_owned(), node('D'));
        let mut opener = opener(&[[1; 32]]);
        let datagram = from_v6.seal_at(b"hi", node('B'), NOW).remove(0);
        assert_eq!(
            opener.open(&datagram, NOW, Instant::now()),
            Ok(Some(Opened {
                message: b"hi".to_vec(),
                sender: node('D'),
            }))
        );
    }

    /// A peer whose datagrams come from another address than the one it advertises (behind
    /// NAT, or listening on 0.0.0.0 with several interfaces): chitchat replies to the source
    /// address, and the reply must still be sealed for the address the peer opens.
    #[tokio::test]
    async fn a_reply_is_sealed_for_the_address_the_peer_names() {
        use chitchat::{ChitchatMessage, ProtocolVersion};
        let transport = |advertise| GossipTransport {
            keyring: Some(keyring(1)),
            cluster_id: "test".to_owned(),
            advertise,
            max_clock_skew: Duration::from_secs(60),
            stats: Arc::default(),
        };
        let envelope = || ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        };
        let within = |what| {
            move |outcome: Result<anyhow::Result<RecvOutcome>, _>| {
                outcome
                    .unwrap_or_else(|_| panic!("{what} never arrived"))
                    .unwrap()
            }
        };
        let b_outer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_address = b_outer.local_addr().unwrap();
        let mut b = SealedSocket::new(b_outer, keyring(1), &transport(b_address))
            .await
            .unwrap();
        let a_outer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a_source = a_outer.local_addr().unwrap();
        let mut a = SealedSocket::new(a_outer, keyring(1), &transport(node('C')))
            .await
            .unwrap();

        a.send(b_address, envelope()).await.unwrap();
        let received =
            within("the message")(tokio::time::timeout(Duration::from_secs(5), b.recv()).await);
        assert_eq!(received.from_addr, a_source);
        assert_eq!(received.envelope, envelope());

        b.send(a_source, envelope()).await.unwrap();
        let reply =
            within("the reply")(tokio::time::timeout(Duration::from_secs(5), a.recv()).await);
        assert_eq!(reply.from_addr, b_address);
        assert_eq!(a.stats.dropped_forged.load(Ordering::Relaxed), 0);
    }

    /// Real chitchat over the sealed transport. Node A listens on 0.0.0.0 and advertises an
    /// address its datagrams do not come from: B reaches it as a peer at the advertised address,
    /// and answers its gossip at the source address; both must open.
    #[tokio::test]
    async fn chitchat_nodes_gossip_through_the_sealed_transport() {
        use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatId, FailureDetectorConfig};
        // Free ports, each probe held until both are picked (b's cannot be a's); released just
        // before the nodes bind them.
        let free_port = |ip: Ipv4Addr| {
            let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
            let port = socket.local_addr().unwrap().port();
            (socket, port)
        };
        let (a_probe, a_port) = free_port(Ipv4Addr::UNSPECIFIED);
        let (b_probe, b_port) = free_port(Ipv4Addr::LOCALHOST);
        drop((a_probe, b_probe));
        let a_listen = SocketAddr::from((Ipv4Addr::UNSPECIFIED, a_port));
        let a_advertise = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), a_port));
        let b_address = SocketAddr::from((Ipv4Addr::LOCALHOST, b_port));
        let start = |name: &str, listen, advertise, seeds: Vec<String>| {
            let config = ChitchatConfig {
                chitchat_id: ChitchatId::new(name.to_owned(), 1, advertise),
                cluster_id: "test".to_owned(),
                gossip_interval: Duration::from_millis(50),
                listen_addr: listen,
                seed_nodes: seeds,
                failure_detector_config: FailureDetectorConfig::default(),
                marked_for_deletion_grace_period: Duration::from_secs(60),
                catchup_callback: None,
                extra_liveness_predicate: None,
                protocol_version: chitchat::ProtocolVersion::V0,
            };
            let transport = GossipTransport {
                keyring: Some(keyring(1)),
                cluster_id: "test".to_owned(),
                advertise,
                max_clock_skew: Duration::from_secs(60),
                stats: Arc::default(),
            };
            let initial = vec![("name".to_owned(), name.to_owned())];
            async move {
                let handle = spawn_chitchat(config, initial, &transport).await.unwrap();
                (handle, transport.stats)
            }
        };
        let (a, a_stats) = start("a", a_listen, a_advertise, vec![b_address.to_string()]).await;
        let (b, b_stats) = start("b", b_address, b_address, Vec::new()).await;
        let knows = |handle: &chitchat::ChitchatHandle, other: &'static str| {
            let chitchat = handle.chitchat();
            async move {
                let chitchat = chitchat.lock().await;
                chitchat
                    .node_states()
                    .values()
                    .any(|state| state.get("name") == Some(other))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(knows(&a, "b").await && knows(&b, "a").await) {
            assert!(
                Instant::now() < deadline,
                "no exchange: a {a_stats:?}, b {b_stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a_stats.dropped_forged.load(Ordering::Relaxed), 0);
        assert_eq!(b_stats.dropped_forged.load(Ordering::Relaxed), 0);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }

    #[test]
    fn forged_truncated_stale_and_oversized_datagrams_are_dropped() {
        let mut sealer = new_sealer(1, "test");
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let datagram = sealer.seal_at(b"state", node('B'), NOW).remove(0);
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
        let mut stranger = new_sealer(2, "test");
        let foreign = stranger.seal_at(b"state", node('B'), NOW).remove(0);
        assert_eq!(opener.open(&foreign, NOW, now), Err(Drop::Forged));
        let mut other_cluster = new_sealer(1, "other");
        let foreign = other_cluster.seal_at(b"state", node('B'), NOW).remove(0);
        assert_eq!(opener.open(&foreign, NOW, now), Err(Drop::Forged));
        // Too old, too new.
        let old = sealer.seal_at(b"state", node('B'), NOW - 61_000).remove(0);
        assert_eq!(opener.open(&old, NOW, now), Err(Drop::Stale));
        let future = sealer.seal_at(b"state", node('B'), NOW + 61_000).remove(0);
        assert_eq!(opener.open(&future, NOW, now), Err(Drop::Stale));
        // The genuine one still opens.
        assert_eq!(opener.open(&datagram, NOW, now), from_a(b"state"));
    }

    #[test]
    fn the_replay_window_accepts_reordering_but_not_repeats() {
        let mut sealer = new_sealer(1, "test");
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let datagrams: Vec<Vec<u8>> = (0..200)
            .map(|_| sealer.seal_at(b"x", node('B'), NOW).remove(0))
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
        let mut old = new_sealer(1, "test");
        let mut new = new_sealer(2, "test");
        let mut rotating = opener(&[[2; 32], [1; 32]]);
        let now = Instant::now();
        assert!(rotating
            .open(&old.seal_at(b"a", node('B'), NOW).remove(0), NOW, now)
            .unwrap()
            .is_some());
        assert!(rotating
            .open(&new.seal_at(b"b", node('B'), NOW).remove(0), NOW, now)
            .unwrap()
            .is_some());
        let mut rotating_sealer = Sealer::new(
            Keyring::new(&[[2; 32], [1; 32]]).unwrap(),
            "test".to_owned(),
            node('A'),
        );
        let mut new_only = opener(&[[2; 32]]);
        assert!(new_only
            .open(
                &rotating_sealer.seal_at(b"c", node('B'), NOW).remove(0),
                NOW,
                now
            )
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_large_message_travels_in_fragments_that_fit_a_datagram() {
        let mut sealer = new_sealer(1, "test");
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let message: Vec<u8> = (0..MAX_DATAGRAM).map(|i| i as u8).collect();
        let datagrams = sealer.seal_at(&message, node('B'), NOW);
        assert_eq!(datagrams.len(), 2);
        assert!(datagrams.iter().all(|d| d.len() <= MAX_DATAGRAM));
        assert_eq!(opener.open(&datagrams[1], NOW, now), Ok(None));
        assert_eq!(opener.open(&datagrams[0], NOW, now), from_a(&message));
    }

    #[test]
    fn random_and_mutated_datagrams_never_open_or_panic() {
        let mut sealer = new_sealer(1, "test");
        let mut opener = opener(&[[1; 32]]);
        let now = Instant::now();
        let genuine = sealer.seal_at(&[7u8; 300], node('B'), NOW).remove(0);
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
