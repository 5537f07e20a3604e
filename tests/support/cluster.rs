//! The cluster fixture of the process tests: node configs that seed from each other, starting a
//! cluster and waiting until every node sees every other alive, stopping and killing nodes, and
//! a blocking admin API client.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearsay_admin::pb;
use hearsay_admin::pb::admin_client::AdminClient;

use super::{temp_data_dir, wait_for, Node};

/// The cluster key of the test clusters.
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A free UDP port on `ip` for a node's gossip socket. Taken below the kernel's ephemeral range
/// (32768-60999 by default): a port the kernel handed out for port 0 and the test released could
/// be handed to another test's node (its relay sockets bind port 0) before this test's node
/// binds it. A per-process counter keeps this binary's tests apart; the bind checks the rest.
pub fn free_udp_port(ip: [u8; 4]) -> SocketAddr {
    free_udp_port_on(IpAddr::from(ip))
}

/// As [`free_udp_port`], on any address (`::1` too).
pub fn free_udp_port_on(ip: IpAddr) -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start.wrapping_add(offset) % 12_000) as u16;
        let address = SocketAddr::from((ip, port));
        if UdpSocket::bind(address).is_ok() {
            return address;
        }
    }
    panic!("no free UDP port in 20000-31999 on {ip:?}");
}

/// A blocking admin API client.
pub struct Admin {
    pub runtime: tokio::runtime::Runtime,
    pub client: AdminClient<tonic::transport::Channel>,
}

impl Admin {
    pub fn connect(address: SocketAddr) -> Admin {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(AdminClient::connect(format!("http://{address}")))
            .unwrap();
        Admin { runtime, client }
    }

    pub fn members(&mut self) -> Vec<pb::Member> {
        self.runtime
            .block_on(self.client.list_members(pb::ListMembersRequest {}))
            .unwrap()
            .into_inner()
            .members
    }

    pub fn alive(&mut self) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|m| m.state == pb::MemberState::MemberAlive as i32)
            .map(|m| m.node_id)
            .collect()
    }

    pub fn node(&mut self) -> pb::Node {
        self.runtime
            .block_on(self.client.get_node(pb::GetNodeRequest {}))
            .unwrap()
            .into_inner()
    }

    pub fn listener(&mut self) -> pb::Listener {
        self.runtime
            .block_on(
                self.client
                    .get_listener(pb::GetListenerRequest { name: "web".into() }),
            )
            .unwrap()
            .into_inner()
    }

    pub fn keepalive(&mut self) -> (Duration, u64) {
        let listener = self.listener();
        let timeout = listener.settings.unwrap().keepalive_timeout.unwrap();
        (
            Duration::new(timeout.seconds as u64, timeout.nanos as u32),
            listener.version,
        )
    }

    pub fn set_keepalive(
        &mut self,
        timeout: Duration,
        expected_version: u64,
    ) -> Result<pb::Listener, tonic::Status> {
        self.runtime
            .block_on(self.client.update_listener(pb::UpdateListenerRequest {
                name: "web".into(),
                settings: Some(pb::ListenerSettings {
                    keepalive_timeout: Some(prost_duration(timeout)),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["settings.keepalive_timeout".into()],
                }),
                expected_version,
            }))
            .map(tonic::Response::into_inner)
    }

    /// Sets one duration setting of listener `web` to `seconds`, without an expected version.
    pub fn set_timeout(
        &mut self,
        field: &str,
        seconds: u64,
    ) -> Result<pb::Listener, tonic::Status> {
        let value = Some(prost_duration(Duration::from_secs(seconds)));
        let mut settings = pb::ListenerSettings::default();
        match field {
            "keepalive_timeout" => settings.keepalive_timeout = value,
            "header_timeout" => settings.header_timeout = value,
            "body_timeout" => settings.body_timeout = value,
            _ => panic!("not a timeout: {field}"),
        }
        self.runtime
            .block_on(self.client.update_listener(pb::UpdateListenerRequest {
                name: "web".into(),
                settings: Some(settings),
                update_mask: None,
                expected_version: 0,
            }))
            .map(tonic::Response::into_inner)
    }

    pub fn client(&mut self, address: &str) -> pb::ClientListenerCount {
        self.runtime
            .block_on(self.client.get_client(pb::GetClientRequest {
                address: address.into(),
            }))
            .unwrap()
            .into_inner()
            .listeners
            .remove(0)
    }

    pub fn set_limit(&mut self, limit: u32) {
        self.runtime
            .block_on(self.client.update_listener(pb::UpdateListenerRequest {
                name: "web".into(),
                settings: Some(pb::ListenerSettings {
                    max_connections_per_client: Some(limit),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["settings.max_connections_per_client".into()],
                }),
                expected_version: 0,
            }))
            .unwrap();
    }

    pub fn add_backend(&mut self, address: &str) -> Result<pb::Backend, tonic::Status> {
        self.runtime
            .block_on(self.client.add_backend(pb::AddBackendRequest {
                pool: "app".into(),
                address: address.into(),
                weight: 2,
            }))
            .map(tonic::Response::into_inner)
    }

    pub fn remove_backend(&mut self, address: &str) -> Result<(), tonic::Status> {
        self.runtime
            .block_on(self.client.remove_backend(pb::RemoveBackendRequest {
                pool: "app".into(),
                address: address.into(),
            }))
            .map(|_| ())
    }

    pub fn set_backend_state(
        &mut self,
        address: &str,
        state: pb::BackendState,
    ) -> Result<pb::Backend, tonic::Status> {
        self.runtime
            .block_on(self.client.set_backend_state(pb::SetBackendStateRequest {
                pool: "app".into(),
                address: address.into(),
                state: state as i32,
            }))
            .map(tonic::Response::into_inner)
    }

    pub fn backends(&mut self) -> Vec<pb::Backend> {
        self.runtime
            .block_on(
                self.client
                    .list_backends(pb::ListBackendsRequest { pool: "app".into() }),
            )
            .unwrap()
            .into_inner()
            .backends
    }
}

pub fn prost_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

pub struct ClusterNode {
    pub id: String,
    /// Where the node receives gossip.
    pub gossip: SocketAddr,
    pub config: String,
    pub node: Option<Node>,
}

impl ClusterNode {
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node running")
    }

    pub fn admin(&self) -> Admin {
        Admin::connect(self.node().admin)
    }

    pub fn start(&mut self) {
        self.node = Some(Node::start(&self.config));
    }
}

/// Configs for `count` nodes that all seed from each other. `pool` is the `[[pool]]` body and
/// `listener` extra listener keys.
pub fn cluster_configs(
    count: usize,
    listener: &str,
    pool: &str,
    cluster_extra: &str,
) -> Vec<ClusterNode> {
    let gossip: Vec<SocketAddr> = (0..count).map(|_| free_udp_port([127, 0, 0, 1])).collect();
    cluster_configs_at(&gossip, listener, pool, cluster_extra)
}

/// As [`cluster_configs`], one node per gossip address.
pub fn cluster_configs_at(
    gossip: &[SocketAddr],
    listener: &str,
    pool: &str,
    cluster_extra: &str,
) -> Vec<ClusterNode> {
    let seeds = gossip
        .iter()
        .map(|address| format!("\"{address}\""))
        .collect::<Vec<_>>()
        .join(", ");
    gossip
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let id = format!("n{}", index + 1);
            let config = format!(
                "[node]\nid = \"{id}\"\ndata_dir = \"{data}\"\nshutdown_grace = \"1s\"\n\
                 [runtime]\nworker_threads = 1\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\
                 [cluster]\nlisten = \"{address}\"\nseeds = [{seeds}]\nsecret = \"{KEY}\"\n{cluster_extra}\n\
                 [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener}\n\
                 [[pool]]\nname = \"app\"\n{pool}\n",
                data = temp_data_dir(),
            );
            ClusterNode {
                id,
                gossip: *address,
                config,
                node: None,
            }
        })
        .collect()
}

pub fn start_cluster(nodes: &mut [ClusterNode]) {
    for node in nodes.iter_mut() {
        node.start();
    }
    // As ListMembers orders them: by id ("n10" before "n2").
    let mut expected: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    expected.sort();
    for node in nodes.iter() {
        let mut admin = node.admin();
        wait_for(
            &format!("{} to see every node alive", node.id),
            Duration::from_secs(10),
            || (admin.alive() == expected).then_some(()),
        );
    }
}

pub fn kill(node: &mut ClusterNode) {
    let mut running = node.node.take().unwrap();
    let _ = running.child.kill();
    let _ = running.child.wait();
}

pub fn stop(node: &mut ClusterNode) {
    let mut running = node.node.take().unwrap();
    running.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            assert!(status.success(), "{} exited with {status}", node.id);
            return;
        }
        if Instant::now() > deadline {
            let log: Vec<String> = running.log.try_iter().collect();
            panic!(
                "{} did not exit within 10 s of SIGTERM; its log:\n{}",
                node.id,
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
