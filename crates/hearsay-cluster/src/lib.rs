//! hearsay's cluster layer: membership, authenticated gossip, replicated settings, shared health
//! and cluster-wide client counts. Only this crate knows chitchat; the rest of the node sees
//! [`Cluster`] and the typed views it returns.

mod client_counts;
mod cluster;
mod hlc;
mod keys;
mod persist;
mod replicated;
mod round;
mod shared_health;
mod trace;
mod transport;
mod views;

/// The transport gossip travels over ([`ClusterOptions::transport`]): chitchat's trait, whose
/// methods return `anyhow::Result` (so `anyhow` is part of this crate's API there), and its
/// in-process implementation for tests.
pub use chitchat::transport::{ChannelTransport, Transport};
pub use cluster::{Caller, Cluster, ClusterError, ClusterOptions, SettingOrigin};
pub use replicated::{FileValues, ListenerField, Source};
pub use transport::TransportStats;
pub use views::{BackendView, ClientView, Member, MemberState, NodeCount};

/// A deterministic xorshift generator for the tests that throw random input at parsers.
#[cfg(test)]
fn test_rng(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
