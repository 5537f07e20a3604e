//! A backend's idle keep-alive connections (one LIFO stack per backend), where a connection goes
//! back once its response was read, and the task that prunes them.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, BackendLoad, BackendState};
use super::http1::{Release, UpstreamBody, UpstreamConn};
use super::pool::Pool;
use super::request_body::RequestBody;

/// A backend's idle keep-alive connections, most recently used last.
pub(super) type Idle = Vec<Parked>;

/// An idle connection and since when.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) since: Instant,
    pub(super) conn: UpstreamConn,
}

impl Parked {
    /// Not idle too long, and not closed by the backend.
    pub(super) fn usable(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.since) < idle_timeout && !self.conn.is_stale()
    }
}

impl Backend {
    pub(super) fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The most recently parked usable connection; dead or expired ones on the way are dropped.
    pub(super) fn take_idle(&self, idle_timeout: Duration) -> Option<UpstreamConn> {
        let mut idle = self.idle();
        let now = Instant::now();
        while let Some(parked) = idle.pop() {
            if parked.usable(now, idle_timeout) {
                return Some(parked.conn);
            }
        }
        None
    }

    /// Keeps `conn` for a later request, unless `max_idle` are kept already. (Whether it is
    /// still alive is checked when it is taken, and by the pruning.)
    pub(super) fn put_idle(&self, conn: UpstreamConn, max_idle: usize) {
        let mut idle = self.idle();
        if idle.len() < max_idle {
            idle.push(Parked {
                since: Instant::now(),
                conn,
            });
        }
    }

    /// Drops idle connections that are closed or idle too long.
    pub(super) fn prune_idle(&self, idle_timeout: Duration) {
        let mut idle = self.idle();
        let now = Instant::now();
        idle.retain(|parked| parked.usable(now, idle_timeout));
    }

    pub(super) fn close_idle(&self) {
        self.idle().clear();
    }

    /// Idle keep-alive connections to this backend.
    pub fn idle_connections(&self) -> usize {
        self.idle().len()
    }
}

/// Where a connection goes once its response has been read (and its request body sent whole):
/// back to its backend's idle stack. Until then the backend counts the request as in flight.
#[derive(Debug)]
pub(crate) struct DirectHome {
    pub(super) load: BackendLoad,
    pub(super) max_idle: usize,
}

impl Release for DirectHome {
    fn release(self, conn: UpstreamConn) {
        let backend = &self.load.0;
        // A draining or unhealthy backend's connections are closed, not kept.
        if backend.state() == BackendState::Enabled {
            backend.put_idle(conn, self.max_idle);
        }
    }
}

/// A backend's response body on its way to the client (and the client's request body on its way
/// to the backend).
pub(crate) type DirectBody = UpstreamBody<DirectHome, RequestBody>;

/// Closes idle upstream connections that outlived the idle timeout, until the pool is dropped.
pub(super) async fn prune_idle_connections(pool: Weak<Pool>, stop: CancellationToken) {
    let Some(period) = pool.upgrade().map(|pool| pool.idle_timeout / 4) else {
        return;
    };
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(pool) = pool.upgrade() else { return };
        for backend in pool.backends().iter() {
            backend.prune_idle(pool.idle_timeout);
        }
    }
}
