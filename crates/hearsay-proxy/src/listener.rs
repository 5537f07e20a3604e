//! A listener's runtime state: its current settings (changeable at runtime), its pool, its
//! counters and its per-client table.

use std::net::SocketAddr;
use std::sync::Arc;

use hearsay_config::ListenerSettings;
use tokio::sync::watch;

use crate::admission::ClientTable;
use crate::registry::ListenerStats;
use crate::upstream::Pool;

/// One listener of the node. Open connections read [`Listener::settings`] on every decision and
/// are woken when the settings change, so a change applies to connections already open.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub pool: Arc<Pool>,
    settings: watch::Sender<Arc<ListenerSettings>>,
    pub stats: Arc<ListenerStats>,
    pub clients: Arc<ClientTable>,
}

impl Listener {
    pub(crate) fn new(
        name: &str,
        bind: SocketAddr,
        pool: Arc<Pool>,
        settings: ListenerSettings,
    ) -> Listener {
        Listener {
            name: Arc::from(name),
            bind,
            pool,
            settings: watch::Sender::new(Arc::new(settings)),
            stats: Arc::default(),
            clients: ClientTable::new(),
        }
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<ListenerSettings> {
        self.settings.borrow().clone()
    }

    /// Replaces the settings; open connections re-evaluate their deadlines at once.
    pub fn set_settings(&self, settings: ListenerSettings) {
        self.settings.send_replace(Arc::new(settings));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<ListenerSettings>> {
        self.settings.subscribe()
    }
}
