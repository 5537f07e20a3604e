//! A backend's idle keep-alive connections (LIFO stacks, one per way of talking to a backend),
//! the checkout that lends one to a request and gives it back, and the task that prunes them.

use std::sync::Weak;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, BackendLoad, BackendState};
use super::http1::{Release, UpstreamBody, UpstreamConn};
use super::pool::Pool;
use super::request_body::RequestBody;

/// A backend's idle keep-alive connections, most recently used last.
#[derive(Debug, Default)]
pub(super) struct Idle {
    pub(super) hyper: Vec<Parked<HyperConn>>,
    pub(super) direct: Vec<Parked<UpstreamConn>>,
}

impl Idle {
    pub(super) fn len(&self) -> usize {
        self.hyper.len() + self.direct.len()
    }
}

/// An idle connection and since when.
#[derive(Debug)]
pub(super) struct Parked<C> {
    pub(super) since: Instant,
    pub(super) conn: C,
}

/// A kind of upstream connection that can sit idle.
pub(super) trait Reusable {
    /// Whether the backend closed it (or it cannot carry a request any more).
    fn is_dead(&self) -> bool;
}

/// A hyper client connection: the handle that sends requests, and its connection task.
#[derive(Debug)]
pub(crate) struct HyperConn {
    pub(super) sender: SendRequest<RequestBody>,
    pub(super) task: tokio::task::AbortHandle,
}

impl Reusable for HyperConn {
    fn is_dead(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Reusable for UpstreamConn {
    fn is_dead(&self) -> bool {
        self.is_stale()
    }
}

impl<C: Reusable> Parked<C> {
    pub(super) fn usable(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.since) < idle_timeout && !self.conn.is_dead()
    }
}

/// The most recently parked usable connection of `stack`; dead or expired ones on the way are
/// dropped.
pub(super) fn pop_usable<C: Reusable>(
    stack: &mut Vec<Parked<C>>,
    idle_timeout: Duration,
) -> Option<C> {
    let now = Instant::now();
    while let Some(parked) = stack.pop() {
        if parked.usable(now, idle_timeout) {
            return Some(parked.conn);
        }
    }
    None
}

/// A connection lent to one request; [`Checkout::give_back`] returns it to its backend's stack.
/// The backend counts the request as in flight until the checkout is given back or dropped.
/// A checkout dropped without being given back (its response abandoned or broken, or answered
/// before its request body was sent whole) closes the connection at once: it is in the middle of
/// a message, so nothing else may ever be sent on it.
#[derive(Debug)]
pub(crate) struct Checkout {
    pub(super) load: BackendLoad,
    pub(super) conn: Option<HyperConn>,
    pub(super) max_idle: usize,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.task.abort();
        }
    }
}

impl Backend {
    pub(super) fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(super) fn take_idle(&self, idle_timeout: Duration) -> Option<HyperConn> {
        pop_usable(&mut self.idle().hyper, idle_timeout)
    }

    pub(super) fn take_idle_direct(&self, idle_timeout: Duration) -> Option<UpstreamConn> {
        pop_usable(&mut self.idle().direct, idle_timeout)
    }

    pub(super) fn put_idle(&self, conn: HyperConn, max_idle: usize) {
        self.park(conn, max_idle, |idle| &mut idle.hyper);
    }

    pub(super) fn put_idle_direct(&self, conn: UpstreamConn, max_idle: usize) {
        self.park(conn, max_idle, |idle| &mut idle.direct);
    }

    /// Keeps `conn` for a later request, unless `max_idle` are kept already. (Whether it is
    /// still alive is checked when it is taken, and by the pruning.)
    pub(super) fn park<C: Reusable>(
        &self,
        conn: C,
        max_idle: usize,
        stack: impl FnOnce(&mut Idle) -> &mut Vec<Parked<C>>,
    ) {
        let mut idle = self.idle();
        if idle.len() < max_idle {
            stack(&mut idle).push(Parked {
                since: Instant::now(),
                conn,
            });
        }
    }

    /// Drops idle connections that are closed or idle too long.
    pub(super) fn prune_idle(&self, idle_timeout: Duration) {
        let mut idle = self.idle();
        let now = Instant::now();
        idle.hyper.retain(|parked| parked.usable(now, idle_timeout));
        idle.direct
            .retain(|parked| parked.usable(now, idle_timeout));
    }

    pub(super) fn close_idle(&self) {
        let mut idle = self.idle();
        idle.hyper.clear();
        idle.direct.clear();
    }

    /// Idle keep-alive connections to this backend.
    pub fn idle_connections(&self) -> usize {
        self.idle().len()
    }
}

/// Where a direct (in-task) connection goes once its response has been read: back to its
/// backend's idle stack. Until then the backend counts the request as in flight.
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
            backend.put_idle_direct(conn, self.max_idle);
        }
    }
}

/// A response body streamed by the in-task client.
pub(crate) type DirectBody = UpstreamBody<DirectHome>;

impl Checkout {
    /// Returns the connection to its backend for the next request, once its response has been
    /// read to the end, if `reusable`; otherwise it is closed. Not reusable: a connection whose
    /// request body did not go out whole (a backend may answer before it read the body, a 401 or
    /// 413 to an upload: the connection is still in the middle of the request, and a request
    /// queued behind it would wait for a body that may never come and never reach the backend),
    /// or whose response was framed ambiguously.
    pub(crate) fn give_back(mut self, reusable: bool) {
        let backend = &self.load.0;
        // A draining or unhealthy backend's connections are closed, not kept.
        if reusable && backend.state() == BackendState::Enabled {
            if let Some(conn) = self.conn.take() {
                backend.put_idle(conn, self.max_idle);
            }
        }
    }
}

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
