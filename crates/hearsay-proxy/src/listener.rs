//! A listener's runtime state: its current settings (changeable at runtime, versioned), its pool,
//! its counters and its per-client table.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hearsay_config::ListenerSettings;

use std::collections::HashMap;

use arc_swap::ArcSwap;

use crate::admission::{ClientKey, ClientTable};
use crate::log_limit::LogLimiter;
use crate::registry::{ListenerStats, Registry};
use crate::tls::ListenerTls;
use crate::upstream::Pool;

/// One listener of the node. Open connections read [`Listener::settings`] on every decision and
/// are woken when the settings change, so a change applies to connections already open.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// Largest request head accepted, in bytes; hyper answers a larger one with 431.
    pub max_request_header_size: usize,
    pub pool: Arc<Pool>,
    /// HTTPS: the certificates and the handshake; `None` for plain HTTP.
    pub tls: Option<ListenerTls>,
    /// `X-Forwarded-Proto` of the requests it forwards: `https` when it has TLS.
    pub(crate) forwarded_proto: &'static str,
    /// The settings in force, read on every decision of every connection (lock-free); replaced
    /// whole under `update_lock`.
    settings: ArcSwap<ListenerSettings>,
    /// Grows by one with every settings change; starts at 1.
    version: AtomicU64,
    /// Serialises read-modify-write updates so none is lost.
    update_lock: Mutex<()>,
    pub stats: Arc<ListenerStats>,
    pub clients: Arc<ClientTable>,
    /// The node's open connections, to wake this listener's when its settings change.
    registry: Arc<Registry>,
    /// Open connections per client key on the other live nodes of the cluster, as last
    /// published by gossip (empty on a single node).
    remote_clients: ArcSwap<RemoteClients>,
    /// Rate limits of the "request failed" warnings (a dead backend under load fails every
    /// request).
    pub(crate) failure_log: LogLimiter,
    /// The node's access log, when it keeps one.
    pub(crate) access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// Other nodes' open connections per client key.
pub type RemoteClients = HashMap<ClientKey, u32>;

/// Why a settings update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("listener is at version {current}, not the expected {expected}")]
    Conflict { expected: u64, current: u64 },
    #[error(transparent)]
    Rejected(E),
}

/// An applied settings update.
#[derive(Debug, Clone)]
pub struct SettingsUpdate {
    pub old: Arc<ListenerSettings>,
    pub new: Arc<ListenerSettings>,
    pub version: u64,
}

impl Listener {
    pub(crate) fn new(
        registry: &Arc<Registry>,
        name: &str,
        bind: SocketAddr,
        max_request_header_size: usize,
        pool: Arc<Pool>,
        settings: ListenerSettings,
        tls: Option<ListenerTls>,
    ) -> Listener {
        Listener {
            name: Arc::from(name),
            bind,
            max_request_header_size,
            pool,
            forwarded_proto: if tls.is_some() { "https" } else { "http" },
            tls,
            settings: ArcSwap::from_pointee(settings),
            version: AtomicU64::new(1),
            update_lock: Mutex::new(()),
            stats: Arc::default(),
            clients: ClientTable::new(),
            registry: Arc::clone(registry),
            remote_clients: ArcSwap::from_pointee(HashMap::new()),
            failure_log: LogLimiter::default(),
            access_log: None,
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<ListenerSettings> {
        self.settings.load_full()
    }

    /// The settings in force now, for a look that ends before the next `await`: no reference
    /// count is touched (one shared by every connection of the listener).
    pub(crate) fn settings_now(&self) -> arc_swap::Guard<Arc<ListenerSettings>> {
        self.settings.load()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Replaces the settings; open connections re-evaluate their deadlines at once.
    pub fn set_settings(&self, settings: ListenerSettings) -> SettingsUpdate {
        match self.update::<std::convert::Infallible>(None, |_| Ok(settings)) {
            Ok(update) => update,
            Err(UpdateError::Rejected(never)) => match never {},
            Err(UpdateError::Conflict { .. }) => unreachable!("no expected version given"),
        }
    }

    /// Derives new settings from the current ones and applies them, unless `expected_version` is
    /// given and is not the current version, or `change` rejects the update.
    pub fn update<E>(
        &self,
        expected_version: Option<u64>,
        change: impl FnOnce(&ListenerSettings) -> Result<ListenerSettings, E>,
    ) -> Result<SettingsUpdate, UpdateError<E>> {
        let _serialised = self
            .update_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let current = self.version();
        if let Some(expected) = expected_version {
            if expected != current {
                return Err(UpdateError::Conflict { expected, current });
            }
        }
        let old = self.settings();
        let new = Arc::new(change(&old).map_err(UpdateError::Rejected)?);
        self.settings.store(Arc::clone(&new));
        let version = current + 1;
        self.version.store(version, Ordering::Release);
        self.registry.wake_listener(&self.name);
        Ok(SettingsUpdate { old, new, version })
    }

    /// Replaces the settings with ones replicated from the cluster, at the cluster's version, unless
    /// they and the version are already in force. Returns the update when one was applied.
    pub fn apply_replicated(
        &self,
        settings: ListenerSettings,
        version: u64,
    ) -> Option<SettingsUpdate> {
        let _serialised = self
            .update_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let old = self.settings();
        if self.version() == version && *old == settings {
            return None;
        }
        let new = Arc::new(settings);
        self.settings.store(Arc::clone(&new));
        self.version.store(version, Ordering::Release);
        self.registry.wake_listener(&self.name);
        Some(SettingsUpdate { old, new, version })
    }

    /// Connections `key` holds on other live nodes.
    pub fn remote_count(&self, key: &ClientKey) -> u32 {
        let remote = self.remote_clients.load();
        if remote.is_empty() {
            return 0;
        }
        remote.get(key).copied().unwrap_or(0)
    }

    /// Replaces what other nodes hold (the cluster calls it once per gossip round).
    pub fn set_remote_clients(&self, remote: RemoteClients) {
        self.remote_clients.store(Arc::new(remote));
    }
}
