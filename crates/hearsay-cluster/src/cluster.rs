//! The node's view of its cluster: membership, replicated entries, shared health and
//! cluster-wide client counts, kept in step with chitchat by one loop per node.
//!
//! Gossip key schema (each node's own chitchat state):
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `node:admin`, `node:version`, `node:listeners` | text | what `ListMembers` shows |
//! | `node:state` | `alive` / `draining` / `left` | graceful shutdown, announced |
//! | `node:ready` | `1` / `0` | listeners bound |
//! | `set:l:<listener>`, `set:b:<pool>/<backend>` | JSON [`Entry`]: stamped fields | replicated settings, merged field by field by every node |
//! | `c:<listener>/<client key>` | `<count>` / `<count>e` | this node's open connections of one client it leads / echoes (see [`client_counts`]) |
//! | `h:<pool>/<backend>` | `1` / `0` | this node's active-check verdict (assigned probers only) |
//! | `e:<pool>/<backend>` | `<until>,<since>` unix ms | this node's passive ejection: until then, begun then |
//! | `p:<pool>/<backend>` | unix ms | start of this prober's latest passing check (while its verdict is healthy and some node ejects the backend) |
//!
//! The proxy never waits on any of this: the loop pushes typed results into the proxy's own
//! structures (listener settings, remote client counts, backend health) once per gossip round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use hearsay_config::{ClusterConfig, ListenerSettings};
use hearsay_proxy::{
    Backend, BackendState, ClientKey, Pool, PoolError, Proxy, SettingsUpdate, UpdateError,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client_counts;
use crate::hlc::unix_millis;
use crate::replicated::{
    self, backend_key, listener_key, BackendStateValue, Entry, FileValues, ListenerField, Loaded,
    Origin, Source, Store, Write, BACKEND_PREFIX, LISTENER_PREFIX,
};
use crate::shared_health;
use crate::transport::{GossipTransport, Keyring, TransportStats};

const COUNT_PREFIX: &str = "c:";
const VERDICT_PREFIX: &str = "h:";
const EJECTION_PREFIX: &str = "e:";
const PASS_PREFIX: &str = "p:";
const KEY_ADMIN: &str = "node:admin";
const KEY_VERSION: &str = "node:version";
const KEY_LISTENERS: &str = "node:listeners";
const KEY_STATE: &str = "node:state";
const KEY_READY: &str = "node:ready";
/// Largest count believed from a peer.
const MAX_PEER_COUNT: u32 = 10_000_000;
/// Longest ejection believed from a peer.
const MAX_PEER_EJECTION: Duration = Duration::from_secs(3600);

/// What a node needs to join its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub admin_address: SocketAddr,
    pub version: String,
    /// `None`: the node runs alone (changes are still versioned and persisted).
    pub config: Option<ClusterConfig>,
    /// The config file's values of the replicated settings ([`FileValues::of`]).
    pub file: FileValues,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    State(String),
    #[error("cannot start gossip: {0:#}")]
    Gossip(anyhow::Error),
}

/// A member's state as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Draining,
    Dead,
    Left,
}

impl MemberState {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> MemberState {
        match code {
            0 => MemberState::Alive,
            1 => MemberState::Draining,
            2 => MemberState::Dead,
            _ => MemberState::Left,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Draining => "draining",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
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

/// Where the current value of a replicated setting on this node came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingOrigin {
    /// This node's config file, never written to the cluster.
    File,
    /// A write: a node's changed config file, an admin call or a reset.
    Written {
        source: Source,
        node: String,
        /// Unix milliseconds of the write's stamp.
        at_ms: u64,
        /// The admin client's address.
        peer: Option<String>,
    },
}

impl SettingOrigin {
    fn of<T>(field: Option<&replicated::Field<T>>) -> SettingOrigin {
        match field {
            None => SettingOrigin::File,
            Some(field) => SettingOrigin::Written {
                source: field.source,
                node: field.stamp.node.clone(),
                at_ms: field.stamp.millis,
                peer: field.peer.clone(),
            },
        }
    }
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

#[derive(Debug, Default)]
struct Views {
    members: Vec<Member>,
    /// listener → client key → connections per peer node (not this node).
    clients: HashMap<String, HashMap<ClientKey, Vec<(String, u32)>>>,
    /// node id → how long ago we last heard from it.
    ages: HashMap<String, Duration>,
    /// `pool/backend` → views of other nodes.
    backends: HashMap<String, Vec<BackendView>>,
    /// `pool/backend` → assigned probers.
    probers: HashMap<String, Vec<String>>,
}

/// A peer's passive ejection of a backend.
#[derive(Debug)]
struct PeerEjection {
    node: String,
    /// Unix ms.
    until: u64,
    /// Unix ms; `None` from a node that does not say (no check lifts it).
    since: Option<u64>,
}

/// What live peers published about backends, read once per round (keyed by `pool/backend`).
#[derive(Debug, Default)]
struct PeerBackends {
    verdicts: HashMap<String, Vec<(String, bool)>>,
    ejections: HashMap<String, Vec<PeerEjection>>,
    /// The start of the latest passing check a peer reported.
    passes: HashMap<String, u64>,
}

struct Gossip {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    self_id: ChitchatId,
    stats: Arc<TransportStats>,
    authenticated: bool,
    config: ClusterConfig,
    /// Keys of counts, verdicts and ejections this node has published.
    published: Mutex<HashSet<String>>,
    /// When each node's heartbeat last moved, as seen here.
    heard: Mutex<HashMap<ChitchatId, (chitchat::Heartbeat, Instant)>>,
    /// Listeners whose published client counts the cap cut in the last round (logged once).
    capped: Mutex<HashSet<String>>,
    /// Client counts the cap left out, summed over rounds.
    unpublished_clients: std::sync::atomic::AtomicU64,
    /// Clients this node trimmed lately: no second trim until peers have seen the first.
    trimmed: Mutex<HashMap<(String, ClientKey), Instant>>,
    /// Key-change subscriptions that wake the loop (dropping them unsubscribes).
    subscriptions: Mutex<Vec<chitchat::ListenerHandle>>,
}

/// This node's membership in its cluster. Always present: a node without `[cluster]` is a
/// cluster of one, whose admin changes are still versioned and persisted.
pub struct Cluster {
    node_id: String,
    proxy: Arc<Proxy>,
    /// The config file's values of the replicated settings, as read at start.
    file: FileValues,
    store: Mutex<Store>,
    /// Writes the state file off the runtime.
    persister: crate::persist::Persister,
    gossip: Option<Gossip>,
    views: ArcSwap<Views>,
    /// Entries changed locally and not yet written to the gossip state.
    dirty: AtomicBool,
    /// Runs the loop now: a local change to publish, or a peer's entry or ejection to adopt.
    wake: Arc<Notify>,
    state: AtomicU8,
    ready: AtomicBool,
    stop: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("gossip", &self.gossip_address())
            .finish_non_exhaustive()
    }
}

fn pool_backend(pool: &str, address: &str) -> String {
    format!("{pool}/{address}")
}

impl Cluster {
    /// Loads the persisted entries, applies them, and joins the cluster when one is configured.
    pub async fn start(
        proxy: Arc<Proxy>,
        options: ClusterOptions,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let (mut store, loaded) = Store::load(&options.data_dir).map_err(ClusterError::State)?;
        if loaded == Loaded::Converted {
            tracing::warn!(
                data_dir = %options.data_dir.display(),
                entries = store.entries.len(),
                "cluster state written by an older hearsay converted: each setting keeps its entry's version; config file edits made before this start are not detected (ResetListener / ResetBackends apply the file)"
            );
        }
        match store.read_file(&options.file, unix_millis(), &options.node_id) {
            None => tracing::info!(
                "first start with this data directory's state: the config file's values are recorded, and a value changed in the file from now on becomes a cluster write at start-up"
            ),
            Some(writes) => {
                for write in &writes {
                    let (field, value) = write.describe();
                    tracing::info!(key = %write.key(), field, value = %value, "config file changed since the last start: written to the cluster");
                }
            }
        }
        // Fail now, not at the first admin change, if the state cannot be made durable.
        store.persist().map_err(|error| {
            ClusterError::State(format!(
                "cannot write the cluster state under node.data_dir {}: {error}",
                options.data_dir.display()
            ))
        })?;
        for (key, entry) in &store.entries {
            match replicated::apply(&proxy, &options.file, key, entry) {
                Ok(true) => {
                    tracing::info!(%key, version = entry.version(), "persisted cluster setting applied")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%key, %error, "persisted cluster setting not applied"),
            }
        }
        let gossip = match &options.config {
            None => None,
            Some(config) => Some(Self::join(&proxy, &options, config, &store).await?),
        };
        let persister =
            crate::persist::Persister::start(store.path().to_owned()).map_err(|error| {
                ClusterError::State(format!("cannot start the state writer: {error}"))
            })?;
        let cluster = Arc::new(Cluster {
            node_id: options.node_id.clone(),
            proxy,
            file: options.file,
            store: Mutex::new(store),
            persister,
            gossip,
            views: ArcSwap::from_pointee(Views::default()),
            dirty: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            state: AtomicU8::new(MemberState::Alive.code()),
            ready: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        if let Some(gossip) = &cluster.gossip {
            for pool in cluster.proxy.pools() {
                if pool.has_health_check() {
                    pool.set_shared_health(true);
                }
            }
            // A peer's replicated entry, ejection or passing check is acted on as soon as it
            // arrives, not at the next tick.
            let chitchat = gossip.chitchat.lock().await;
            let mut subscriptions = Vec::new();
            for prefix in [
                LISTENER_PREFIX,
                BACKEND_PREFIX,
                EJECTION_PREFIX,
                PASS_PREFIX,
            ] {
                let wake = Arc::clone(&cluster.wake);
                let me = gossip.self_id.clone();
                subscriptions.push(chitchat.subscribe_event(prefix, move |event| {
                    if *event.node != me {
                        wake.notify_one();
                    }
                }));
            }
            drop(chitchat);
            *gossip
                .subscriptions
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = subscriptions;
            let interval = gossip.config.gossip_interval;
            tokio::spawn(Arc::clone(&cluster).run(interval));
        }
        Ok(cluster)
    }

    async fn join(
        proxy: &Proxy,
        options: &ClusterOptions,
        config: &ClusterConfig,
        store: &Store,
    ) -> Result<Gossip, ClusterError> {
        let generation = unix_millis();
        let self_id = ChitchatId::new(options.node_id.clone(), generation, config.advertise);
        let failure_detector = FailureDetectorConfig {
            phi_threshold: config.failure_threshold,
            sampling_window_size: 1000,
            max_interval: (config.gossip_interval * 10).max(Duration::from_secs(2)),
            initial_interval: config.gossip_interval,
            dead_node_grace_period: config.dead_node_grace,
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: failure_detector,
            marked_for_deletion_grace_period: Duration::from_secs(120),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let listeners: Vec<&str> = proxy.listeners().iter().map(|l| &*l.name).collect();
        let mut initial = vec![
            (KEY_ADMIN.to_owned(), options.admin_address.to_string()),
            (KEY_VERSION.to_owned(), options.version.clone()),
            (KEY_LISTENERS.to_owned(), listeners.join(",")),
            (KEY_STATE.to_owned(), MemberState::Alive.as_str().to_owned()),
            (KEY_READY.to_owned(), "0".to_owned()),
        ];
        initial.extend(
            store
                .entries
                .iter()
                .map(|(key, entry)| (key.clone(), entry.to_json())),
        );
        let keyring = Keyring::new(&config.keys);
        let authenticated = keyring.is_some();
        let transport = GossipTransport {
            keyring,
            cluster_id: config.cluster_id.clone(),
            advertise: config.advertise,
            max_clock_skew: config.max_clock_skew,
            stats: Arc::default(),
        };
        let stats = Arc::clone(&transport.stats);
        let handle = spawn_chitchat(chitchat_config, initial, &transport)
            .await
            .map_err(ClusterError::Gossip)?;
        tracing::info!(
            node = %options.node_id,
            generation,
            listen = %config.listen,
            advertise = %config.advertise,
            seeds = ?config.seeds,
            authenticated,
            "gossip started"
        );
        Ok(Gossip {
            chitchat: handle.chitchat(),
            handle: tokio::sync::Mutex::new(Some(handle)),
            self_id,
            stats,
            authenticated,
            config: config.clone(),
            published: Mutex::default(),
            heard: Mutex::default(),
            capped: Mutex::default(),
            unpublished_clients: Default::default(),
            trimmed: Mutex::default(),
            subscriptions: Mutex::default(),
        })
    }

    /// The address other nodes gossip with; `None` when the node runs alone.
    pub fn gossip_address(&self) -> Option<SocketAddr> {
        self.gossip
            .as_ref()
            .map(|gossip| gossip.self_id.gossip_advertise_addr)
    }

    /// The gossip transport's counters and whether gossip is sealed; `None` when alone.
    pub fn transport_stats(&self) -> Option<(Arc<TransportStats>, bool)> {
        self.gossip
            .as_ref()
            .map(|gossip| (Arc::clone(&gossip.stats), gossip.authenticated))
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stamps `writes` as one operation, merges them, persists, applies them to this node and
    /// has the loop gossip them. Returns the keys written.
    fn write(&self, store: &mut Store, writes: &[Write], origin: &Origin) -> Vec<String> {
        let keys = store.write(writes, unix_millis(), &self.node_id, origin);
        self.persister.save(store.snapshot());
        for key in &keys {
            if let Some(entry) = store.entries.get(key) {
                if let Err(error) = replicated::apply(&self.proxy, &self.file, key, entry) {
                    tracing::warn!(%key, %error, "cluster setting written but not applicable here");
                }
            }
        }
        self.dirty.store(true, Ordering::Release);
        self.wake.notify_one();
        keys
    }

    /// Changes the named settings of a listener cluster-wide (each field is its own write, so
    /// a concurrent change to another field is never undone). `expected_version`, when given,
    /// must be the listener's current version. `peer` is the admin client's address.
    pub fn update_listener<E>(
        &self,
        name: &str,
        expected_version: Option<u64>,
        fields: &[ListenerField],
        peer: Option<String>,
        change: impl FnOnce(&ListenerSettings) -> Result<ListenerSettings, E>,
    ) -> Option<Result<SettingsUpdate, UpdateError<E>>> {
        let listener = self.proxy.listener(name)?;
        let mut store = self.lock_store();
        let current = listener.version();
        if let Some(expected) = expected_version {
            if expected != current {
                return Some(Err(UpdateError::Conflict { expected, current }));
            }
        }
        let old = listener.settings();
        let new = match change(&old) {
            Ok(new) => new,
            Err(error) => return Some(Err(UpdateError::Rejected(error))),
        };
        let writes: Vec<Write> = fields
            .iter()
            .map(|field| Write::Listener {
                name: name.to_owned(),
                field: *field,
                value: field.get(&new),
            })
            .collect();
        self.write(&mut store, &writes, &Origin::admin(peer));
        Some(Ok(SettingsUpdate {
            old,
            new: listener.settings(),
            version: listener.version(),
        }))
    }

    /// Returns a listener's replicated settings to this node's config file values on every
    /// node: a new write of every field. `None` when there is no such listener.
    pub fn reset_listener(&self, name: &str, peer: Option<String>) -> Option<SettingsUpdate> {
        let listener = self.proxy.listener(name)?;
        let file = self.file.listeners.get(name)?;
        let mut store = self.lock_store();
        let old = listener.settings();
        let writes: Vec<Write> = file
            .iter()
            .map(|(field, value)| Write::Listener {
                name: name.to_owned(),
                field: *field,
                value: *value,
            })
            .collect();
        self.write(&mut store, &writes, &Origin::reset(peer));
        Some(SettingsUpdate {
            old,
            new: listener.settings(),
            version: listener.version(),
        })
    }

    fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.proxy.pools().iter().find(|pool| pool.name == name)
    }

    /// Adds a backend to a pool on every node (member, enabled, `weight`).
    pub fn add_backend(
        &self,
        pool: &str,
        address: &str,
        weight: u32,
        peer: Option<String>,
    ) -> Option<Result<Arc<Backend>, PoolError>> {
        let pool_ref = self.pool(pool)?;
        let mut store = self.lock_store();
        Some(pool_ref.add_backend(address, weight).inspect(|_| {
            let (pool, address) = (pool.to_owned(), address.to_owned());
            let writes = [
                Write::Member {
                    pool: pool.clone(),
                    address: address.clone(),
                    member: true,
                },
                Write::State {
                    pool: pool.clone(),
                    address: address.clone(),
                    state: BackendStateValue::Enabled,
                },
                Write::Weight {
                    pool,
                    address,
                    weight,
                },
            ];
            self.write(&mut store, &writes, &Origin::admin(peer));
        }))
    }

    /// Removes a backend from a pool on every node (a tombstone: only a later add brings it
    /// back).
    pub fn remove_backend(
        &self,
        pool: &str,
        address: &str,
        peer: Option<String>,
    ) -> Option<Result<Arc<Backend>, PoolError>> {
        let pool_ref = self.pool(pool)?;
        let mut store = self.lock_store();
        Some(pool_ref.remove_backend(address).inspect(|_| {
            let write = Write::Member {
                pool: pool.to_owned(),
                address: address.to_owned(),
                member: false,
            };
            self.write(&mut store, &[write], &Origin::admin(peer));
        }))
    }

    /// Sets a backend's operator state on every node.
    pub fn set_backend_state(
        &self,
        pool: &str,
        address: &str,
        state: BackendState,
        peer: Option<String>,
    ) -> Option<Result<(Arc<Backend>, BackendState), PoolError>> {
        let pool_ref = self.pool(pool)?;
        let mut store = self.lock_store();
        Some(pool_ref.set_backend_state(address, state).inspect(|_| {
            let write = Write::State {
                pool: pool.to_owned(),
                address: address.to_owned(),
                state: state.into(),
            };
            self.write(&mut store, &[write], &Origin::admin(peer));
        }))
    }

    /// Returns a pool's backends to this node's config file on every node: every backend of the
    /// file is written back (member, state, weight) and every other backend this node knows of
    /// is removed. `None` when there is no such pool. Returns the number of writes.
    pub fn reset_backends(&self, pool: &str, peer: Option<String>) -> Option<usize> {
        let pool_ref = self.pool(pool)?;
        let empty = BTreeMap::new();
        let file = self.file.pools.get(pool).unwrap_or(&empty);
        let mut store = self.lock_store();
        let mut writes = Vec::new();
        for (address, backend) in file {
            writes.extend([
                Write::Member {
                    pool: pool.to_owned(),
                    address: address.clone(),
                    member: true,
                },
                Write::State {
                    pool: pool.to_owned(),
                    address: address.clone(),
                    state: backend.state,
                },
                Write::Weight {
                    pool: pool.to_owned(),
                    address: address.clone(),
                    weight: backend.weight,
                },
            ]);
        }
        let prefix = backend_key(pool, "");
        let mut others: Vec<String> = pool_ref
            .backends()
            .iter()
            .map(|backend| backend.address.clone())
            .chain(
                store
                    .entries
                    .keys()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned)),
            )
            .filter(|address| !file.contains_key(address))
            .collect();
        others.sort();
        others.dedup();
        writes.extend(others.into_iter().map(|address| Write::Member {
            pool: pool.to_owned(),
            address,
            member: false,
        }));
        self.write(&mut store, &writes, &Origin::reset(peer));
        Some(writes.len())
    }

    /// Where each replicated setting of a listener got its current value on this node.
    pub fn listener_origins(&self, name: &str) -> Vec<(ListenerField, SettingOrigin)> {
        let store = self.lock_store();
        let fields = match store.entries.get(&listener_key(name)) {
            Some(Entry::Listener(fields)) => Some(fields),
            _ => None,
        };
        ListenerField::ALL
            .into_iter()
            .map(|field| {
                (
                    field,
                    SettingOrigin::of(fields.and_then(|fields| fields.get(&field))),
                )
            })
            .collect()
    }

    /// Where a backend's membership, state and weight got their current values on this node
    /// ([`replicated::BACKEND_FIELDS`] order).
    pub fn backend_origins(&self, pool: &str, address: &str) -> [(&'static str, SettingOrigin); 3] {
        let store = self.lock_store();
        let entry = match store.entries.get(&backend_key(pool, address)) {
            Some(Entry::Backend(entry)) => Some(entry),
            _ => None,
        };
        let [member, state, weight] = replicated::BACKEND_FIELDS;
        [
            (
                member,
                SettingOrigin::of(entry.and_then(|e| e.member.as_ref())),
            ),
            (
                state,
                SettingOrigin::of(entry.and_then(|e| e.state.as_ref())),
            ),
            (
                weight,
                SettingOrigin::of(entry.and_then(|e| e.weight.as_ref())),
            ),
        ]
    }

    /// Every member this node knows (just itself when it runs alone).
    pub fn members(&self) -> Vec<Member> {
        if self.gossip.is_none() {
            return vec![Member {
                node_id: self.node_id.clone(),
                generation: 0,
                state: MemberState::from_code(self.state.load(Ordering::Relaxed)),
                gossip_address: SocketAddr::from(([0, 0, 0, 0], 0)),
                admin_address: String::new(),
                version: String::new(),
                listeners: self
                    .proxy
                    .listeners()
                    .iter()
                    .map(|l| l.name.to_string())
                    .collect(),
                ready: self.ready.load(Ordering::Relaxed),
                is_self: true,
            }];
        }
        self.views.load().members.clone()
    }

    /// A client's connections on a listener across the cluster.
    pub fn client(&self, listener: &str, key: &ClientKey, local: u32) -> ClientView {
        let views = self.views.load();
        let mut nodes = Vec::new();
        if local > 0 {
            nodes.push(NodeCount {
                node_id: self.node_id.clone(),
                open_connections: local,
                age: Duration::ZERO,
            });
        }
        let mut total = local;
        if let Some(peers) = views.clients.get(listener).and_then(|c| c.get(key)) {
            for (node, count) in peers {
                total = total.saturating_add(*count);
                nodes.push(NodeCount {
                    node_id: node.clone(),
                    open_connections: *count,
                    age: views.ages.get(node).copied().unwrap_or_default(),
                });
            }
        }
        let uncertainty = match &self.gossip {
            None => Duration::ZERO,
            Some(gossip) => {
                gossip.config.gossip_interval
                    + views.ages.values().copied().max().unwrap_or_default()
            }
        };
        ClientView {
            total,
            nodes,
            uncertainty,
        }
    }

    /// What the other nodes see of a backend, and this node's own view.
    pub fn backend_views(&self, pool: &str, backend: &Backend) -> Vec<BackendView> {
        if self.gossip.is_none() {
            return Vec::new();
        }
        let views = self.views.load();
        let id = pool_backend(pool, &backend.address);
        let probers = views.probers.get(&id);
        let mut all = vec![BackendView {
            node_id: self.node_id.clone(),
            prober: probers.is_some_and(|p| p.contains(&self.node_id)),
            verdict: backend.local_verdict().map(|(healthy, _)| healthy),
            ejected: backend.local_ejection_remaining().is_some(),
        }];
        all.extend(views.backends.get(&id).cloned().unwrap_or_default());
        all
    }

    /// Announces whether this node's listeners are bound and serving.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Announces a graceful shutdown: peers show this node as draining.
    pub async fn set_draining(&self) {
        self.state
            .store(MemberState::Draining.code(), Ordering::Relaxed);
        if let Some(gossip) = &self.gossip {
            let mut chitchat = gossip.chitchat.lock().await;
            chitchat
                .self_node_state()
                .set(KEY_STATE, MemberState::Draining.as_str());
        }
    }

    /// Leaves the cluster cleanly: announces it, gives gossip a few rounds to carry the news
    /// (bounded), then stops gossiping. Peers drop this node's client counts at once.
    pub async fn leave(self: &Arc<Self>) {
        self.stop.cancel();
        // What is still to be written reaches the disk before the node goes.
        let cluster = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || cluster.persister.finish()).await;
        let Some(gossip) = &self.gossip else {
            return;
        };
        {
            let mut chitchat = gossip.chitchat.lock().await;
            let state = chitchat.self_node_state();
            state.set(KEY_STATE, MemberState::Left.as_str());
            state.set(KEY_READY, "0");
        }
        // chitchat does not say which peers have seen our latest version; a few rounds let the
        // news reach every node of a small cluster (and the failure detector covers the rest).
        tokio::time::sleep(gossip.config.gossip_interval * 3).await;
        if let Some(handle) = gossip.handle.lock().await.take() {
            if let Err(error) = handle.shutdown().await {
                tracing::warn!(%error, "gossip did not stop cleanly");
            }
        }
        tracing::info!("left the cluster");
    }

    async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
                _ = self.stop.cancelled() => return,
            }
            self.tick().await;
        }
    }

    /// One round: adopt newer entries, publish ours, and recompute what the proxy uses.
    async fn tick(&self) {
        let Some(gossip) = &self.gossip else {
            return;
        };
        let now_ms = unix_millis();
        let now = Instant::now();
        let chitchat = gossip.chitchat.lock().await;
        let self_id = gossip.self_id.clone();
        let live: HashSet<ChitchatId> = chitchat.live_nodes().cloned().collect();

        // Replicated entries from every node's state (dead ones too: entries outlive writers).
        // Once converged every node holds the same text, so only a differing one is parsed.
        let own = chitchat.node_state(&self_id);
        let mut offered: Vec<(String, Entry)> = Vec::new();
        for (id, state) in chitchat.node_states() {
            if *id == self_id {
                continue;
            }
            for prefix in [LISTENER_PREFIX, BACKEND_PREFIX] {
                for (key, value) in state.iter_prefix(prefix) {
                    if own.and_then(|own| own.get(key)) == Some(value.value.as_str()) {
                        continue;
                    }
                    match Entry::parse(key, &value.value, now_ms) {
                        Ok(entry) => offered.push((key.to_owned(), entry)),
                        Err(error) => {
                            tracing::debug!(node = %id.node_id, %key, %error, "ignored a malformed replicated entry")
                        }
                    }
                }
            }
        }

        // Members, heartbeats, and which peers count.
        let (mut members, counting, ages) = {
            let mut heard = gossip
                .heard
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let mut members: Vec<Member> = Vec::new();
            let mut counting: Vec<ChitchatId> = Vec::new();
            let mut ages: HashMap<String, Duration> = HashMap::new();
            for (id, state) in chitchat.node_states() {
                let is_self = *id == self_id;
                let announced = state.get(KEY_STATE).unwrap_or("alive");
                let member_state = if is_self {
                    MemberState::from_code(self.state.load(Ordering::Relaxed))
                } else if announced == "left" {
                    MemberState::Left
                } else if !live.contains(id) {
                    MemberState::Dead
                } else if announced == "draining" {
                    MemberState::Draining
                } else {
                    MemberState::Alive
                };
                if !is_self {
                    let heartbeat = state.heartbeat();
                    let entry = heard.entry(id.clone()).or_insert((heartbeat, now));
                    if entry.0 != heartbeat {
                        *entry = (heartbeat, now);
                    }
                    if matches!(member_state, MemberState::Alive | MemberState::Draining) {
                        counting.push(id.clone());
                        ages.insert(id.node_id.to_string(), now.duration_since(entry.1));
                    }
                }
                members.push(Member {
                    node_id: id.node_id.to_string(),
                    generation: id.generation_id,
                    state: member_state,
                    gossip_address: id.gossip_advertise_addr,
                    admin_address: state
                        .get(KEY_ADMIN)
                        .unwrap_or_default()
                        .chars()
                        .take(128)
                        .collect(),
                    version: state
                        .get(KEY_VERSION)
                        .unwrap_or_default()
                        .chars()
                        .take(64)
                        .collect(),
                    listeners: state
                        .get(KEY_LISTENERS)
                        .unwrap_or_default()
                        .split(',')
                        .filter(|name| !name.is_empty())
                        .take(256)
                        .map(|name| name.chars().take(128).collect())
                        .collect(),
                    ready: if is_self {
                        self.ready.load(Ordering::Relaxed)
                    } else {
                        state.get(KEY_READY) == Some("1")
                    },
                    is_self,
                });
            }
            heard.retain(|id, _| chitchat.node_states().contains_key(id));
            (members, counting, ages)
        };
        // A restarted node shows once, by its newest generation.
        let newest: HashMap<String, u64> =
            members.iter().fold(HashMap::new(), |mut newest, member| {
                let generation = newest.entry(member.node_id.clone()).or_insert(0);
                *generation = (*generation).max(member.generation);
                newest
            });
        members.retain(|member| newest.get(&member.node_id) == Some(&member.generation));
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));

        // Peers' client counts, verdicts and ejections.
        let mut clients: HashMap<String, HashMap<ClientKey, Vec<(String, u32)>>> = HashMap::new();
        // Per listener: the clients some live peer leads (this node echoes its count of them).
        let mut led_by_peers: HashMap<String, HashSet<ClientKey>> = HashMap::new();
        let mut verdicts: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        // Per backend: the peers ejecting it, with the end and start of each ejection.
        let mut ejections: HashMap<String, Vec<PeerEjection>> = HashMap::new();
        // Per backend: the start of the latest passing check a peer reported.
        let mut passes: HashMap<String, u64> = HashMap::new();
        for id in &counting {
            let Some(state) = chitchat.node_state(id) else {
                continue;
            };
            let node = id.node_id.to_string();
            for (key, value) in state.iter_prefix(COUNT_PREFIX) {
                let Some((listener, client)) = key[COUNT_PREFIX.len()..].split_once('/') else {
                    continue;
                };
                let (Ok(ip), Some((count, role))) = (
                    client.parse::<IpAddr>(),
                    client_counts::Role::decode(&value.value),
                ) else {
                    continue;
                };
                let Some(settings) = self.proxy.listener(listener).map(|l| l.settings()) else {
                    continue;
                };
                let client_key = ClientKey::new(ip, settings.client_ipv6_prefix);
                if role == client_counts::Role::Lead {
                    led_by_peers
                        .entry(listener.to_owned())
                        .or_default()
                        .insert(client_key);
                }
                clients
                    .entry(listener.to_owned())
                    .or_default()
                    .entry(client_key)
                    .or_default()
                    .push((node.clone(), count.min(MAX_PEER_COUNT)));
            }
            for (key, value) in state.iter_prefix(VERDICT_PREFIX) {
                let healthy = match value.value.as_str() {
                    "1" => true,
                    "0" => false,
                    _ => continue,
                };
                verdicts
                    .entry(key[VERDICT_PREFIX.len()..].to_owned())
                    .or_default()
                    .push((node.clone(), healthy));
            }
            for (key, value) in state.iter_prefix(EJECTION_PREFIX) {
                let Some((until, since)) = shared_health::parse_ejection(&value.value) else {
                    continue;
                };
                if until > now_ms {
                    let until = until.min(now_ms + MAX_PEER_EJECTION.as_millis() as u64);
                    ejections
                        .entry(key[EJECTION_PREFIX.len()..].to_owned())
                        .or_default()
                        .push(PeerEjection {
                            node: node.clone(),
                            until,
                            since,
                        });
                }
            }
            // A passing check from the far future would lift every later ejection: refused.
            let latest_believable = now_ms + gossip.config.max_clock_skew.as_millis() as u64;
            for (key, value) in state.iter_prefix(PASS_PREFIX) {
                let Ok(passed) = value.value.parse::<u64>() else {
                    continue;
                };
                if passed <= latest_believable {
                    let latest = passes
                        .entry(key[PASS_PREFIX.len()..].to_owned())
                        .or_insert(0);
                    *latest = (*latest).max(passed);
                }
            }
        }
        let mut live_ids: Vec<&str> = counting.iter().map(|id| &*id.node_id).collect();
        live_ids.push(&self.node_id);
        live_ids.sort_unstable();
        live_ids.dedup();

        // Push to the proxy: remote counts, probers, shared health, remote ejections.
        for listener in self.proxy.listeners() {
            let remote = clients
                .get(&*listener.name)
                .map(|per_key| {
                    per_key
                        .iter()
                        .map(|(key, per_node)| {
                            (
                                *key,
                                per_node
                                    .iter()
                                    .map(|(_, count)| *count)
                                    .fold(0u32, u32::saturating_add),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            listener.set_remote_clients(remote);
            self.trim(gossip, listener, clients.get(&*listener.name), &ages, now);
        }
        let peer_backends = PeerBackends {
            verdicts,
            ejections,
            passes,
        };
        let (backend_views, probers_of) =
            self.backends_round(gossip, &counting, &live_ids, &peer_backends, now_ms);

        // Publish this node's own state.
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        self.publish_clients(gossip, &led_by_peers, live_ids.len(), &mut wanted);
        for pool in self.proxy.pools() {
            for backend in pool.backends().iter() {
                let id = pool_backend(&pool.name, &backend.address);
                if pool.has_health_check() && backend.probes_here() {
                    if let Some((healthy, _)) = backend.local_verdict() {
                        wanted.insert(
                            format!("{VERDICT_PREFIX}{id}"),
                            if healthy { "1" } else { "0" }.to_owned(),
                        );
                    }
                }
                let ejected_here = backend.local_ejection();
                if let Some((remaining, since)) = ejected_here {
                    // Rounded up to the second, so the value does not change every round.
                    let until = (now_ms + remaining.as_millis() as u64).div_ceil(1000) * 1000;
                    wanted.insert(
                        format!("{EJECTION_PREFIX}{id}"),
                        shared_health::format_ejection(until, since),
                    );
                }
                // What lifts ejections elsewhere, only while some node ejects the backend.
                let ejected_somewhere =
                    ejected_here.is_some() || peer_backends.ejections.contains_key(&id);
                let healthy_here = backend.local_verdict().is_some_and(|(healthy, _)| healthy);
                if let Some(passed) = backend.last_pass() {
                    if ejected_somewhere
                        && healthy_here
                        && pool.has_health_check()
                        && backend.probes_here()
                    {
                        wanted.insert(format!("{PASS_PREFIX}{id}"), passed.to_string());
                    }
                }
            }
        }
        // Adopting persists to disk: not while holding chitchat's lock.
        drop(chitchat);
        let adopted = self.adopt(offered);
        let mut chitchat = gossip.chitchat.lock().await;
        let self_state = chitchat.self_node_state();
        {
            let mut published = gossip
                .published
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for stale in published.iter().filter(|key| !wanted.contains_key(*key)) {
                self_state.delete(stale);
            }
            for (key, value) in &wanted {
                self_state.set(key, value);
            }
            *published = wanted.into_keys().collect();
        }
        self_state.set(
            KEY_READY,
            if self.ready.load(Ordering::Relaxed) {
                "1"
            } else {
                "0"
            },
        );
        if adopted || self.dirty.swap(false, Ordering::AcqRel) {
            let store = self.lock_store();
            for (key, entry) in &store.entries {
                self_state.set(key, entry.to_json());
            }
        }
        drop(chitchat);

        self.views.store(Arc::new(Views {
            members,
            clients,
            ages,
            backends: backend_views,
            probers: probers_of,
        }));
    }

    /// Backends for one round: assigns probers, derives the shared verdict, ends passive
    /// ejections (this node's and the peers' it honours) that a later passing check lifted, and
    /// returns every node's view of each backend and its probers.
    fn backends_round(
        &self,
        gossip: &Gossip,
        counting: &[ChitchatId],
        live_ids: &[&str],
        peers: &PeerBackends,
        now_ms: u64,
    ) -> (
        HashMap<String, Vec<BackendView>>,
        HashMap<String, Vec<String>>,
    ) {
        let mut backend_views: HashMap<String, Vec<BackendView>> = HashMap::new();
        let mut probers_of: HashMap<String, Vec<String>> = HashMap::new();
        for pool in self.proxy.pools() {
            let probers_per_backend = gossip.config.probers_per_backend;
            for backend in pool.backends().iter() {
                let id = pool_backend(&pool.name, &backend.address);
                let probers = shared_health::probers(live_ids, &id, probers_per_backend);
                let peer_verdicts = peers.verdicts.get(&id).map_or(&[][..], Vec::as_slice);
                if pool.has_health_check() {
                    backend.set_probes_here(probers.contains(&self.node_id.as_str()));
                    self.apply_verdict(pool, backend, &probers, peer_verdicts);
                }

                // Passive ejections, unless a check begun after them passed.
                let passed = peers.passes.get(&id).copied().max(backend.last_pass());
                let lifted = |since: Option<u64>| {
                    shared_health::ejection_lifted(
                        pool.unejects_on_healthy_check(),
                        backend.checked_healthy(),
                        since,
                        passed,
                    )
                };
                if let Some((_, since)) = backend.local_ejection() {
                    if lifted(Some(since)) && backend.lift_ejection(passed.unwrap_or(0)) {
                        tracing::info!(pool = %pool.name, backend = %backend.address, "ejection lifted: passed an active check");
                    }
                }
                let peer_ejections = peers.ejections.get(&id).map_or(&[][..], Vec::as_slice);
                let honoured: Vec<&PeerEjection> = peer_ejections
                    .iter()
                    .filter(|ejection| !lifted(ejection.since))
                    .collect();
                let was_ejected = backend.set_remote_ejection(
                    honoured
                        .iter()
                        .map(|ejection| ejection.until)
                        .max()
                        .map(|until| Duration::from_millis(until.saturating_sub(now_ms))),
                );
                if was_ejected && honoured.is_empty() && !peer_ejections.is_empty() {
                    let nodes: Vec<&str> = peer_ejections.iter().map(|e| &*e.node).collect();
                    tracing::info!(pool = %pool.name, backend = %backend.address, ejected_by = ?nodes, "peers' ejection lifted: passed an active check");
                }

                let mut views: Vec<BackendView> = counting
                    .iter()
                    .map(|peer| {
                        let node = peer.node_id.to_string();
                        BackendView {
                            prober: probers.contains(&node.as_str()),
                            verdict: peer_verdicts
                                .iter()
                                .find(|(n, _)| *n == node)
                                .map(|(_, healthy)| *healthy),
                            ejected: peer_ejections.iter().any(|ejection| ejection.node == node),
                            node_id: node,
                        }
                    })
                    .collect();
                views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                views.dedup_by(|a, b| a.node_id == b.node_id);
                backend_views.insert(id.clone(), views);
                probers_of.insert(id, probers.iter().map(|p| (*p).to_owned()).collect());
            }
        }
        (backend_views, probers_of)
    }

    /// Sets a backend's health from the verdicts of its probers (this node's and its peers').
    fn apply_verdict(
        &self,
        pool: &Pool,
        backend: &Backend,
        probers: &[&str],
        peer_verdicts: &[(String, bool)],
    ) {
        let mut all: Vec<(&str, bool)> = peer_verdicts
            .iter()
            .map(|(node, healthy)| (node.as_str(), *healthy))
            .collect();
        let local = backend.local_verdict();
        if let Some((healthy, _)) = &local {
            all.push((&self.node_id, *healthy));
        }
        let healthy = shared_health::verdict(probers, &all).unwrap_or(true);
        if healthy == backend.checked_healthy() {
            return;
        }
        let unhealthy_on: Vec<&str> = all
            .iter()
            .filter(|(_, healthy)| !healthy)
            .map(|(node, _)| *node)
            .collect();
        let reason = if healthy {
            "passing checks (cluster verdict)".to_owned()
        } else {
            let detail = local
                .as_ref()
                .filter(|(healthy, _)| !healthy)
                .map(|(_, reason)| format!(": {reason}"))
                .unwrap_or_default();
            format!("failing checks on {}{detail}", unhealthy_on.join(", "))
        };
        // The transition is counted and logged by the backend's health (one place).
        tracing::debug!(pool = %pool.name, backend = %backend.address, probers = ?probers, unhealthy_on = ?unhealthy_on, healthy, "cluster verdict changed");
        backend.set_checked_health(healthy, reason);
    }

    /// The client counts this node publishes: per listener with a limit, the clients at or above
    /// the publish threshold here and the ones live peers lead ([`client_counts`]), at most
    /// `cluster.published_clients`; nothing for a listener without a limit.
    fn publish_clients(
        &self,
        gossip: &Gossip,
        led_by_peers: &HashMap<String, HashSet<ClientKey>>,
        live_nodes: usize,
        wanted: &mut BTreeMap<String, String>,
    ) {
        let none = HashSet::new();
        let mut capped = gossip
            .capped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for listener in self.proxy.listeners() {
            let settings = listener.settings();
            let Some(limit) = settings.max_connections_per_client else {
                capped.remove(&*listener.name);
                continue;
            };
            let threshold = client_counts::publish_threshold(limit, live_nodes);
            let selection = client_counts::select(
                &*listener.clients,
                led_by_peers.get(&*listener.name).unwrap_or(&none),
                threshold,
                gossip.config.published_clients,
                |ip| settings.is_exempt(ip),
            );
            if selection.left_out > 0 {
                gossip
                    .unpublished_clients
                    .fetch_add(selection.left_out as u64, Ordering::Relaxed);
                if capped.insert(listener.name.to_string()) {
                    tracing::warn!(listener = %listener.name, published = selection.entries.len(), left_out = selection.left_out, threshold, "client counts over cluster.published_clients: the cluster-wide cap is not guaranteed for the clients left out; raise it");
                }
            } else if capped.remove(&*listener.name) {
                tracing::info!(listener = %listener.name, published = selection.entries.len(), "client counts within cluster.published_clients again");
            }
            for (key, count, role) in selection.entries {
                wanted.insert(
                    format!("{COUNT_PREFIX}{}/{}", listener.name, key),
                    role.encode(count),
                );
            }
        }
    }

    /// Client counts the cap on published entries left out, summed over rounds and listeners
    /// (0 while every client at risk is published).
    pub fn unpublished_clients(&self) -> u64 {
        self.gossip.as_ref().map_or(0, |gossip| {
            gossip.unpublished_clients.load(Ordering::Relaxed)
        })
    }

    /// Once counts have converged, a client over its cluster-wide cap (gossip lag let it overshoot)
    /// loses its newest surplus connections: each holder closes its share of the surplus
    /// ([`trim_share`]), gracefully and idle ones first, counted as `over_limit`.
    fn trim(
        &self,
        gossip: &Gossip,
        listener: &hearsay_proxy::Listener,
        peers: Option<&HashMap<ClientKey, Vec<(String, u32)>>>,
        ages: &HashMap<String, Duration>,
        now: Instant,
    ) {
        let Some(peers) = peers else { return };
        let settings = listener.settings();
        let Some(limit) = settings.max_connections_per_client else {
            return;
        };
        let settle = gossip.config.gossip_interval * 3;
        let mut trimmed = gossip
            .trimmed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        trimmed.retain(|_, at| now.duration_since(*at) < settle * 2);
        for (key, per_node) in peers {
            if settings.is_exempt(key.address()) {
                continue;
            }
            let local = listener.clients.count(key);
            if local == 0 || trimmed.contains_key(&(listener.name.to_string(), *key)) {
                continue;
            }
            // Only act on fresh counts: a peer not heard from lately may have closed some.
            if per_node
                .iter()
                .any(|(node, _)| ages.get(node).is_none_or(|age| *age > settle))
            {
                continue;
            }
            let mut holders: Vec<(&str, u32)> = per_node
                .iter()
                .map(|(node, count)| (node.as_str(), *count))
                .collect();
            holders.push((&self.node_id, local));
            let share = trim_share(&holders, limit, &self.node_id);
            if share == 0 {
                continue;
            }
            let mut mine: Vec<Arc<hearsay_proxy::Connection>> = self
                .proxy
                .registry()
                .connections()
                .into_iter()
                .filter(|connection| {
                    let info = connection.info();
                    *info.listener == *listener.name
                        && ClientKey::new(info.client.ip(), settings.client_ipv6_prefix) == *key
                })
                .collect();
            // Idle ones first, then the newest.
            mine.sort_by_cached_key(|connection| {
                let info = connection.info();
                (
                    info.state != hearsay_proxy::ConnectionState::Idle,
                    std::cmp::Reverse(info.id),
                )
            });
            for connection in mine.iter().take(share as usize) {
                connection.request_close(hearsay_proxy::CloseReason::OverLimit);
            }
            tracing::info!(listener = %listener.name, client = %key, limit, closed = share.min(mine.len() as u32), holders = ?holders, "client over its cluster-wide cap: closing this node's share of the surplus");
            trimmed.insert((listener.name.to_string(), *key), now);
        }
    }

    /// Merges every offered entry into ours, field by field, and applies what changed. Returns
    /// whether anything was adopted.
    fn adopt(&self, offered: Vec<(String, Entry)>) -> bool {
        if offered.is_empty() {
            return false;
        }
        let mut store = self.lock_store();
        let mut adopted = false;
        for (key, entry) in offered {
            if !store.offer(&key, &entry) {
                continue;
            }
            adopted = true;
            let mut writers: Vec<&str> = entry
                .stamps()
                .into_iter()
                .map(|stamp| stamp.node.as_str())
                .collect();
            writers.sort_unstable();
            writers.dedup();
            let merged = &store.entries[&key];
            match replicated::apply(&self.proxy, &self.file, &key, merged) {
                Ok(_) => {
                    tracing::info!(%key, version = merged.version(), writers = ?writers, "cluster setting adopted")
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "cluster setting kept for the cluster but not applicable here")
                }
            }
        }
        if adopted {
            self.persister.save(store.snapshot());
        }
        adopted
    }
}

/// How many of its connections of one client node `me` closes when the holders' counts add up
/// to more than `limit`: the surplus is split in proportion to what each holder has (rounded
/// down), and what rounding leaves goes one by one to the biggest holders (ties by node id).
/// Every node computes the same split from the same counts, so together they close the surplus
/// once.
pub fn trim_share(holders: &[(&str, u32)], limit: u32, me: &str) -> u32 {
    let total: u64 = holders.iter().map(|(_, count)| u64::from(*count)).sum();
    if total <= u64::from(limit) {
        return 0;
    }
    let surplus = total - u64::from(limit);
    let mut order: Vec<(&str, u32)> = holders.to_vec();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut shares: Vec<u64> = order
        .iter()
        .map(|(_, count)| surplus * u64::from(*count) / total)
        .collect();
    let mut left = surplus - shares.iter().sum::<u64>();
    for (index, (_, count)) in order.iter().enumerate().cycle().take(order.len() * 2) {
        if left == 0 {
            break;
        }
        if shares[index] < u64::from(*count) {
            shares[index] += 1;
            left -= 1;
        }
    }
    order
        .iter()
        .zip(shares)
        .find(|((node, _), _)| *node == me)
        .map_or(0, |(_, share)| share as u32)
}

#[cfg(test)]
mod tests {
    use super::trim_share;

    #[test]
    fn the_surplus_is_split_once_across_holders() {
        let holders = [("n1", 12), ("n2", 11), ("n3", 10)];
        let shares: Vec<u32> = ["n1", "n2", "n3"]
            .iter()
            .map(|me| trim_share(&holders, 30, me))
            .collect();
        assert_eq!(shares.iter().sum::<u32>(), 3, "{shares:?}");
        assert_eq!(
            shares,
            [2, 1, 0],
            "rounding leftovers go to the biggest holder"
        );
        let skewed = [("n1", 20), ("n2", 15), ("n3", 0)];
        let shares: Vec<u32> = ["n1", "n2", "n3"]
            .iter()
            .map(|me| trim_share(&skewed, 30, me))
            .collect();
        assert_eq!(shares, [3, 2, 0]);
        assert_eq!(trim_share(&holders, 33, "n1"), 0);
        assert_eq!(trim_share(&[("n1", 5)], 0, "n1"), 5);
        assert_eq!(trim_share(&[("a", 1), ("b", 1), ("c", 1)], 1, "c"), 0);
        assert_eq!(
            ["a", "b", "c"]
                .iter()
                .map(|me| trim_share(&[("a", 1), ("b", 1), ("c", 1)], 1, me))
                .sum::<u32>(),
            2
        );
    }
}
