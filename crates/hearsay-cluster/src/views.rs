//! The typed views of the cluster the rest of the node reads (the admin API): members, a
//! client's connections across the cluster, every node's view of a backend.

use std::net::SocketAddr;
use std::time::Duration;

/// A member's state as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Draining,
    Dead,
    Left,
}

impl MemberState {
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> MemberState {
        match code {
            0 => MemberState::Alive,
            1 => MemberState::Draining,
            2 => MemberState::Dead,
            _ => MemberState::Left,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    pub state: MemberState,
    pub gossip_address: SocketAddr,
    pub admin_address: String,
    pub version: String,
    pub listeners: Vec<String>,
    pub ready: bool,
    pub is_self: bool,
}

/// One node's connections of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCount {
    pub node_id: String,
    pub open_connections: u32,
    /// How long ago this node last heard from that node.
    pub age: Duration,
}

/// A client's connections on one listener across the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// This node's count plus the latest counts live peers published.
    pub total: u32,
    pub nodes: Vec<NodeCount>,
    /// How old the peers' counts may be (publish interval plus the age of the oldest).
    pub uncertainty: Duration,
}

/// One node's view of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub node_id: String,
    pub prober: bool,
    /// The node's active-check verdict, when it has one.
    pub verdict: Option<bool>,
    pub ejected: bool,
}
