//! The node's view of its cluster: membership, replicated entries, shared health and
//! cluster-wide client counts, kept in step with chitchat by one loop per node.
//!
//! The gossip keys and their values are in [`crate::keys`].
//!
//! The proxy never waits on any of this: the loop pushes typed results into the proxy's own
//! structures (listener settings, remote client counts, backend health) once per gossip round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::transport::Transport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use hearsay_config::{ClusterConfig, ListenerSettings};
use hearsay_proxy::{
    Backend, BackendState, ClientKey, Pool, PoolError, Proxy, SettingsUpdate, UpdateError,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hlc::unix_millis;
use crate::keys::{
    self, backend_key, listener_key, Announced, BACKEND_PREFIX, EJECTION_PREFIX, KEY_ADMIN,
    KEY_LISTENERS, KEY_READY, KEY_STATE, KEY_VERSION, LISTENER_PREFIX, PASS_PREFIX, TELEMETRY_KEY,
    TELEMETRY_PREFIX,
};
use crate::replicated::{
    self, BackendStateValue, Entry, FileValues, ListenerField, Loaded, Origin, Source, Store, Write,
};
use crate::round::{
    self, BackendRound, LocalBackend, LocalListener, NodeInput, Observation, PublishedClients,
    RemoteClients, RoundInput, Trim,
};
use crate::transport::{GossipTransport, Keyring, TransportStats};
use crate::views::{BackendView, ClientView, Member, MemberState, NodeCount};

/// What a node needs to join its cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub admin_address: SocketAddr,
    pub version: String,
    /// `None`: the node runs alone (changes are still versioned and persisted).
    pub config: Option<ClusterConfig>,
    /// The config file's values of the replicated settings ([`FileValues::of`]).
    pub file: FileValues,
    /// What gossip travels over. `None`: the authenticated UDP transport `config` describes
    /// (sealed under its keys, or plain on loopback); tests pass chitchat's in-process
    /// [`ChannelTransport`](chitchat::transport::ChannelTransport). An injected transport is
    /// trusted as it is: it is not sealed and has no transport counters.
    pub transport: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .field("admin_address", &self.admin_address)
            .field("version", &self.version)
            .field("config", &self.config)
            .field("injected_transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    State(String),
    #[error("cannot start gossip: {0:#}")]
    Gossip(anyhow::Error),
}

/// Who makes an admin write: the client's address (kept with the write) and the trace context
/// of the call (a sampled one is carried to every node that applies the write).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub peer: Option<String>,
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

/// How long a write's trace note is gossiped: a node that first sees the write later records
/// no span for it (its delay would say more about when it joined than about gossip).
const TRACE_NOTE_LIFETIME_MS: u64 = 10 * 60 * 1000;

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
                TELEMETRY_PREFIX,
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
            (KEY_STATE.to_owned(), Announced::Alive.encode().to_owned()),
            (KEY_READY.to_owned(), keys::encode_ready(false).to_owned()),
        ];
        initial.extend(
            store
                .entries
                .iter()
                .map(|(key, entry)| (key.clone(), entry.to_json())),
        );
        let (handle, stats, authenticated) = match &options.transport {
            Some(transport) => (
                spawn_chitchat(chitchat_config, initial, transport.as_ref()).await,
                Arc::default(),
                false,
            ),
            None => {
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
                let handle = spawn_chitchat(chitchat_config, initial, &transport).await;
                (handle, stats, authenticated)
            }
        };
        let handle = handle.map_err(ClusterError::Gossip)?;
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
    /// has the loop gossip them. A sampled `trace` goes with them (and this node records its
    /// apply span in it). Returns the keys written.
    fn write(
        &self,
        store: &mut Store,
        writes: &[Write],
        origin: &Origin,
        trace: Option<&opentelemetry::trace::SpanContext>,
    ) -> Vec<String> {
        let written_ms = unix_millis();
        let (stamp, keys) = store.write_stamped(writes, written_ms, &self.node_id, origin);
        let note = trace.and_then(|context| crate::trace::note_of(context, &stamp, written_ms));
        self.persister.save(store.snapshot());
        for key in &keys {
            if let Some(note) = &note {
                store.traces.insert(key.clone(), note.clone());
            }
            if let Some(entry) = store.entries.get(key) {
                let span = note.as_ref().and_then(|note| {
                    crate::trace::start_apply(note, &self.node_id, key, entry, unix_millis())
                });
                let outcome = replicated::apply(&self.proxy, &self.file, key, entry);
                if let Err(error) = &outcome {
                    tracing::warn!(%key, %error, "cluster setting written but not applicable here");
                }
                crate::trace::end_apply(span, &outcome);
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
        caller: Caller,
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
        self.write(
            &mut store,
            &writes,
            &Origin::admin(caller.peer),
            caller.trace.as_ref(),
        );
        Some(Ok(SettingsUpdate {
            old,
            new: listener.settings(),
            version: listener.version(),
        }))
    }

    /// Returns a listener's replicated settings to this node's config file values on every
    /// node: a new write of every field. `None` when there is no such listener.
    pub fn reset_listener(&self, name: &str, caller: Caller) -> Option<SettingsUpdate> {
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
        self.write(
            &mut store,
            &writes,
            &Origin::reset(caller.peer),
            caller.trace.as_ref(),
        );
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
        caller: Caller,
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
            self.write(
                &mut store,
                &writes,
                &Origin::admin(caller.peer),
                caller.trace.as_ref(),
            );
        }))
    }

    /// Removes a backend from a pool on every node (a tombstone: only a later add brings it
    /// back).
    pub fn remove_backend(
        &self,
        pool: &str,
        address: &str,
        caller: Caller,
    ) -> Option<Result<Arc<Backend>, PoolError>> {
        let pool_ref = self.pool(pool)?;
        let mut store = self.lock_store();
        Some(pool_ref.remove_backend(address).inspect(|_| {
            let write = Write::Member {
                pool: pool.to_owned(),
                address: address.to_owned(),
                member: false,
            };
            self.write(
                &mut store,
                &[write],
                &Origin::admin(caller.peer),
                caller.trace.as_ref(),
            );
        }))
    }

    /// Sets a backend's operator state on every node.
    pub fn set_backend_state(
        &self,
        pool: &str,
        address: &str,
        state: BackendState,
        caller: Caller,
    ) -> Option<Result<(Arc<Backend>, BackendState), PoolError>> {
        let pool_ref = self.pool(pool)?;
        let mut store = self.lock_store();
        Some(pool_ref.set_backend_state(address, state).inspect(|_| {
            let write = Write::State {
                pool: pool.to_owned(),
                address: address.to_owned(),
                state: state.into(),
            };
            self.write(
                &mut store,
                &[write],
                &Origin::admin(caller.peer),
                caller.trace.as_ref(),
            );
        }))
    }

    /// Returns a pool's backends to this node's config file on every node: every backend of the
    /// file is written back (member, state, weight) and every other backend this node knows of
    /// is removed. `None` when there is no such pool. Returns the number of writes.
    pub fn reset_backends(&self, pool: &str, caller: Caller) -> Option<usize> {
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
        self.write(
            &mut store,
            &writes,
            &Origin::reset(caller.peer),
            caller.trace.as_ref(),
        );
        Some(writes.len())
    }

    /// Sets the share of new traces recorded, cluster-wide (`telemetry.sample_ratio`). Returns
    /// the ratio before and after, or why `ratio` is not a share.
    pub fn set_sample_ratio(&self, ratio: f64, caller: Caller) -> Result<(f64, f64), String> {
        let ratio = replicated::Ratio::checked(ratio)?;
        let mut store = self.lock_store();
        let old = self.proxy.sample_ratio().get();
        self.write(
            &mut store,
            &[Write::SampleRatio(ratio)],
            &Origin::admin(caller.peer),
            caller.trace.as_ref(),
        );
        Ok((old, self.proxy.sample_ratio().get()))
    }

    /// Where this node's sample ratio came from.
    pub fn sample_ratio_origin(&self) -> SettingOrigin {
        let store = self.lock_store();
        let field = match store.entries.get(TELEMETRY_KEY) {
            Some(Entry::Telemetry(telemetry)) => telemetry.sample_ratio.as_ref(),
            _ => None,
        };
        SettingOrigin::of(field)
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
        let id = keys::backend_id(pool, &backend.address);
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
                .set(KEY_STATE, Announced::Draining.encode());
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
            state.set(KEY_STATE, Announced::Left.encode());
            state.set(KEY_READY, keys::encode_ready(false));
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

    /// One round: read every node's gossip state and this node's own, decide ([`round::observe`],
    /// pure), apply the decisions to the proxy and the store, publish this node's state.
    async fn tick(&self) {
        let Some(gossip) = &self.gossip else {
            return;
        };
        let (observation, handles) = {
            let chitchat = gossip.chitchat.lock().await;
            self.observe(gossip, &chitchat)
        };
        let Observation {
            offered,
            members,
            ages,
            clients,
            remote,
            trims,
            backends,
            published_clients,
            publish,
        } = observation;
        self.apply_clients(gossip, remote, &trims, &published_clients);
        let (backend_views, probers) = self.apply_backends(&handles, backends);
        // Adopting persists to disk: not while holding chitchat's lock.
        let adopted = self.adopt(offered);
        let mut publish = publish;
        // Set before the entries (publish's order): a peer that has the entry has its note.
        publish.extend(self.trace_notes());
        self.publish(gossip, publish, adopted).await;
        self.views.store(Arc::new(Views {
            members,
            clients,
            ages,
            backends: backend_views,
            probers,
        }));
    }

    /// The round's input (chitchat's node states, this node's listeners and backends) and what
    /// [`round::observe`] decides from it, with the backends it decided for (in its order).
    fn observe(
        &self,
        gossip: &Gossip,
        chitchat: &chitchat::Chitchat,
    ) -> (Observation, Vec<(Arc<Pool>, Arc<Backend>)>) {
        let now = Instant::now();
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let ages = heartbeat_ages(gossip, chitchat, now);
        let nodes = chitchat
            .node_states()
            .iter()
            .map(|(id, state)| NodeInput {
                id,
                live: live.contains(id),
                age: ages.get(id).copied().unwrap_or_default(),
                state,
            })
            .collect();
        let listeners = self
            .proxy
            .listeners()
            .iter()
            .map(|listener| LocalListener {
                name: &listener.name,
                settings: listener.settings(),
                clients: &*listener.clients,
            })
            .collect();
        let mut handles = Vec::new();
        let mut backends = Vec::new();
        for pool in self.proxy.pools() {
            for backend in pool.backends().iter() {
                backends.push(LocalBackend {
                    pool: pool.name.to_string(),
                    address: backend.address.clone(),
                    health_check: pool.has_health_check(),
                    unejects_on_healthy_check: pool.unejects_on_healthy_check(),
                    verdict: backend.local_verdict(),
                    ejection: backend.local_ejection(),
                    last_pass: backend.last_pass(),
                    checked_healthy: backend.checked_healthy(),
                });
                handles.push((Arc::clone(pool), Arc::clone(backend)));
            }
        }
        let recently_trimmed: HashSet<(String, ClientKey)> = {
            let settle = gossip.config.gossip_interval * 3;
            let mut trimmed = gossip
                .trimmed
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            trimmed.retain(|_, at| now.duration_since(*at) < settle * 2);
            trimmed.keys().cloned().collect()
        };
        let input = RoundInput {
            self_id: &gossip.self_id,
            nodes,
            self_state: MemberState::from_code(self.state.load(Ordering::Relaxed)),
            self_ready: self.ready.load(Ordering::Relaxed),
            listeners,
            backends,
            recently_trimmed: &recently_trimmed,
            config: &gossip.config,
            now_ms: unix_millis(),
        };
        (round::observe(&input), handles)
    }

    /// Pushes the peers' client counts into admission, closes this node's share of surplus
    /// connections, and accounts for counts the cap on published entries left out.
    fn apply_clients(
        &self,
        gossip: &Gossip,
        remote: Vec<(String, RemoteClients)>,
        trims: &[Trim],
        published: &[PublishedClients],
    ) {
        for (name, remote) in remote {
            if let Some(listener) = self.proxy.listener(&name) {
                listener.set_remote_clients(remote);
            }
        }
        for trim in trims {
            self.close_surplus(gossip, trim);
        }
        let mut capped = gossip
            .capped
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        capped.retain(|name| published.iter().any(|p| p.listener == *name));
        for listener in published {
            if listener.left_out > 0 {
                gossip
                    .unpublished_clients
                    .fetch_add(listener.left_out as u64, Ordering::Relaxed);
                if capped.insert(listener.listener.clone()) {
                    tracing::warn!(listener = %listener.listener, published = listener.published, left_out = listener.left_out, threshold = listener.threshold, "client counts over cluster.published_clients: the cluster-wide cap is not guaranteed for the clients left out; raise it");
                }
            } else if capped.remove(&listener.listener) {
                tracing::info!(listener = %listener.listener, published = listener.published, "client counts within cluster.published_clients again");
            }
        }
    }

    /// Applies each backend's round (probers, shared verdict, lifted and honoured ejections) and
    /// returns every node's view of each backend and its probers, by `pool/backend`.
    fn apply_backends(
        &self,
        handles: &[(Arc<Pool>, Arc<Backend>)],
        rounds: Vec<BackendRound>,
    ) -> (
        HashMap<String, Vec<BackendView>>,
        HashMap<String, Vec<String>>,
    ) {
        let mut views = HashMap::new();
        let mut probers = HashMap::new();
        for ((pool, backend), round) in handles.iter().zip(rounds) {
            apply_backend(pool, backend, &round);
            let id = keys::backend_id(&pool.name, &backend.address);
            views.insert(id.clone(), round.views);
            probers.insert(id, round.probers);
        }
        (views, probers)
    }

    /// Sets this node's published keys (counts, verdicts, ejections, passing checks: the stale
    /// ones deleted), its readiness, and its entries when any changed.
    async fn publish(&self, gossip: &Gossip, wanted: BTreeMap<String, String>, adopted: bool) {
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
            keys::encode_ready(self.ready.load(Ordering::Relaxed)),
        );
        if adopted || self.dirty.swap(false, Ordering::AcqRel) {
            let store = self.lock_store();
            for (key, entry) in &store.entries {
                self_state.set(key, entry.to_json());
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

    /// Closes this node's share of a client's surplus connections, gracefully and idle ones
    /// first, then the newest, counted as `over_limit`.
    fn close_surplus(&self, gossip: &Gossip, trim: &Trim) {
        let Some(listener) = self.proxy.listener(&trim.listener) else {
            return;
        };
        let prefix = listener.settings().client_ipv6_prefix;
        let mut mine: Vec<Arc<hearsay_proxy::Connection>> = self
            .proxy
            .registry()
            .connections()
            .into_iter()
            .filter(|connection| {
                let info = connection.info();
                *info.listener == *listener.name
                    && ClientKey::new(info.client.ip(), prefix) == trim.client
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
        let closing = mine.len().min(trim.share as usize);
        for connection in &mine[..closing] {
            connection.request_close(hearsay_proxy::CloseReason::OverLimit);
        }
        listener.stats.on_trim(closing as u64);
        tracing::info!(listener = %listener.name, client = %trim.client, limit = trim.limit, closed = closing, holders = ?trim.holders, "client over its cluster-wide cap: closing this node's share of the surplus");
        gossip
            .trimmed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert((trim.listener.clone(), trim.client), Instant::now());
    }

    /// Merges every offered entry into ours, field by field, and applies what changed. Returns
    /// whether anything was adopted.
    fn adopt(&self, offered: Vec<(String, Entry, Option<keys::TraceNote>)>) -> bool {
        if offered.is_empty() {
            return false;
        }
        let mut store = self.lock_store();
        let mut adopted = false;
        let mut changed = false;
        for (key, entry, note) in offered {
            let merged_now = store.offer(&key, &entry);
            // A trace note new here, about a write the merged entry holds: this node applies
            // that write now (or has just received the note of one it applied a moment ago).
            let now = unix_millis();
            let note = note.filter(|note| {
                now.saturating_sub(note.written_ms) < TRACE_NOTE_LIFETIME_MS
                    && store.entries[&key].stamps().contains(&&note.stamp)
                    && store
                        .traces
                        .get(&key)
                        .is_none_or(|mine| mine.stamp < note.stamp)
            });
            if let Some(note) = &note {
                store.traces.insert(key.clone(), note.clone());
                adopted = true;
            }
            if !merged_now && note.is_none() {
                continue;
            }
            adopted = true;
            let merged = &store.entries[&key];
            let span = note.as_ref().and_then(|note| {
                crate::trace::start_apply(note, &self.node_id, &key, merged, unix_millis())
            });
            if !merged_now {
                crate::trace::end_apply(span, &Ok(false));
                continue;
            }
            changed = true;
            let mut writers: Vec<&str> = entry
                .stamps()
                .into_iter()
                .map(|stamp| stamp.node.as_str())
                .collect();
            writers.sort_unstable();
            writers.dedup();
            let outcome = replicated::apply(&self.proxy, &self.file, &key, merged);
            match &outcome {
                Ok(_) => {
                    tracing::info!(%key, version = merged.version(), writers = ?writers, "cluster setting adopted")
                }
                Err(error) => {
                    tracing::warn!(%key, %error, "cluster setting kept for the cluster but not applicable here")
                }
            }
            crate::trace::end_apply(span, &outcome);
        }
        if changed {
            self.persister.save(store.snapshot());
        }
        adopted
    }

    /// This node's trace notes to gossip (`t:<key>`), the expired ones forgotten.
    fn trace_notes(&self) -> Vec<(String, String)> {
        let mut store = self.lock_store();
        let now = unix_millis();
        store
            .traces
            .retain(|_, note| now.saturating_sub(note.written_ms) < TRACE_NOTE_LIFETIME_MS);
        store
            .traces
            .iter()
            .map(|(key, note)| (keys::trace_key(key), keys::encode_trace(note)))
            .collect()
    }
}

/// How long since each node's heartbeat last moved, as seen here (remembered across rounds in
/// `gossip.heard`; forgotten with the node).
fn heartbeat_ages(
    gossip: &Gossip,
    chitchat: &chitchat::Chitchat,
    now: Instant,
) -> HashMap<ChitchatId, Duration> {
    let mut heard = gossip
        .heard
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let mut ages = HashMap::new();
    for (id, state) in chitchat.node_states() {
        if *id == gossip.self_id {
            continue;
        }
        let heartbeat = state.heartbeat();
        let entry = heard.entry(id.clone()).or_insert((heartbeat, now));
        if entry.0 != heartbeat {
            *entry = (heartbeat, now);
        }
        ages.insert(id.clone(), now.duration_since(entry.1));
    }
    heard.retain(|id, _| chitchat.node_states().contains_key(id));
    ages
}

/// One backend's round, applied in the order the round decided it: prober assignment, shared
/// verdict, this node's lifted ejection, the peers' ejection honoured.
fn apply_backend(pool: &Pool, backend: &Backend, round: &BackendRound) {
    if let Some(probes_here) = round.probes_here {
        backend.set_probes_here(probes_here);
    }
    if let Some(change) = &round.health_change {
        // The transition is counted and logged by the backend's health (one place).
        tracing::debug!(pool = %pool.name, backend = %backend.address, probers = ?round.probers, unhealthy_on = ?change.unhealthy_on, healthy = change.healthy, "cluster verdict changed");
        backend.set_checked_health(change.healthy, change.reason.clone());
    }
    if let Some(passed) = round.lift_local {
        if backend.lift_ejection(passed) {
            tracing::info!(pool = %pool.name, backend = %backend.address, "ejection lifted: passed an active check");
        }
    }
    let was_ejected = backend.set_remote_ejection(round.remote_ejection);
    if was_ejected && round.remote_ejection.is_none() && !round.ejected_by.is_empty() {
        tracing::info!(pool = %pool.name, backend = %backend.address, ejected_by = ?round.ejected_by, "peers' ejection lifted: passed an active check");
    }
}
