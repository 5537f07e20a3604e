//! The rules of a client connection, as pure functions of its state, the listener's settings and
//! the time: when it ends ([`evaluate`], [`decide`]), when it is parked ([`ParkPause`]) and whether
//! a response keeps it open ([`persistence`]). The connection task gathers the inputs and acts.

use std::time::Duration;

use hearsay_config::ListenerSettings;

use crate::registry::{nanos, CloseReason};

/// What the connection state looks like at one moment, in nanoseconds of [`now_nanos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub accepted: u64,
    pub last_read: u64,
    pub last_write: u64,
    /// First byte of a not yet complete request head; 0 = none.
    pub head_started: u64,
    pub in_flight: u32,
    pub body_reading: bool,
    pub requests: u64,
}

/// What the connection task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing yet; look again at this time (or when woken, if `None`).
    WaitUntil(Option<u64>),
    /// Finish the in-flight request (if any) and close; closes at once when idle.
    Close(CloseReason),
    /// Drop the connection now.
    Abort(CloseReason),
}

/// How long a connection must be quiet, with hyper holding nothing for it, before it is parked
/// (hyper's connection and its buffers dropped; see [`super::serve`]). Parking right away would rebuild
/// hyper's connection for every request of a busy keep-alive client (measured: a fifth fewer
/// requests per second); after this pause only connections that went quiet pay it.
const PARK_AFTER_NANOS: u64 = 10_000_000;
/// Each time the pause ends and finds the connection busy again, the next pause doubles, up to
/// this: a busy connection is looked at about once a second, not a hundred times.
const PARK_AFTER_MAX_NANOS: u64 = 1_000_000_000;

/// Added to the idle deadline so that a client, which sees our last byte a little after we wrote
/// it, never sees the close before its full `keepalive_timeout` (the timer has 1 ms resolution).
const IDLE_MARGIN_NANOS: u64 = 2_000_000;

/// The connection rules:
/// - no request in flight, part of a head received: the head must be complete `header_timeout`
///   after its first byte;
/// - nothing received yet on a new connection: the first head must be complete `header_timeout`
///   after accept;
/// - idle between requests: closed `keepalive_timeout` after the last byte moved either way;
/// - reading a request body: aborted when no byte came for `body_timeout`;
/// - older than `max_connection_age`: closed after its current request.
pub(crate) fn evaluate(state: &State, settings: &ListenerSettings, now: u64) -> Verdict {
    let mut deadline: Option<u64> = None;
    if let Some(max_age) = settings.max_connection_age {
        let expires = state.accepted.saturating_add(nanos(max_age));
        if now >= expires {
            return Verdict::Close(CloseReason::MaxAge);
        }
        deadline = Some(expires);
    }
    let (expires, verdict) = if state.in_flight > 0 {
        if !state.body_reading {
            return Verdict::WaitUntil(deadline);
        }
        (
            state.last_read.saturating_add(nanos(settings.body_timeout)),
            Verdict::Abort(CloseReason::BodyTimeout),
        )
    } else if state.head_started != 0 {
        (
            state
                .head_started
                .saturating_add(nanos(settings.header_timeout)),
            Verdict::Abort(CloseReason::HeaderTimeout),
        )
    } else if state.requests == 0 {
        (
            state
                .accepted
                .saturating_add(nanos(settings.header_timeout)),
            Verdict::Abort(CloseReason::HeaderTimeout),
        )
    } else {
        let last = state.last_read.max(state.last_write);
        (
            last.saturating_add(nanos(settings.keepalive_timeout) + IDLE_MARGIN_NANOS),
            Verdict::Close(CloseReason::IdleTimeout),
        )
    };
    if now >= expires {
        return verdict;
    }
    Verdict::WaitUntil(Some(
        deadline.map_or(expires, |deadline| deadline.min(expires)),
    ))
}

/// What the connection task should do now, a close requested from outside (an operator, the
/// drain) taken into account: `requested` is its reason and the moment it applies to an idle
/// connection (0: at once; a drain spreads the closes of idle connections). `wake_at` is a
/// moment the task wants to look again anyway (to park the connection).
pub(crate) fn decide(
    state: &State,
    settings: &ListenerSettings,
    now: u64,
    requested: Option<(CloseReason, u64)>,
    wake_at: Option<u64>,
) -> Verdict {
    let earliest = |at: Option<u64>, first: Option<u64>| -> Option<u64> {
        [at, wake_at].into_iter().flatten().chain(first).min()
    };
    match requested {
        // Idle while the node drains: closed at its moment of the spread (a request arriving
        // first is served, with `Connection: close`).
        Some((_, close_at)) if close_at > now && state.in_flight == 0 => {
            match evaluate(state, settings, now) {
                Verdict::WaitUntil(at) => Verdict::WaitUntil(earliest(at, Some(close_at))),
                verdict => verdict,
            }
        }
        Some((reason, _)) => Verdict::Close(reason),
        None => match evaluate(state, settings, now) {
            Verdict::WaitUntil(at) => Verdict::WaitUntil(earliest(at, None)),
            verdict => verdict,
        },
    }
}

/// When a connection served by hyper is parked: once it has been quiet for `after` with hyper
/// holding nothing for it. Each time the pause ends and finds the connection busy again, the next
/// pause doubles (up to [`PARK_AFTER_MAX_NANOS`]), so busy connections never pay the rebuild of
/// hyper's connection and are looked at about once a second; parking starts over at the minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParkPause {
    /// The quiet time that parks the connection now.
    after: u64,
    /// The moment the last pause was to end.
    due: Option<u64>,
}

impl ParkPause {
    pub(crate) const fn new() -> ParkPause {
        ParkPause {
            after: PARK_AFTER_NANOS,
            due: None,
        }
    }

    /// The moment the connection is to be parked (`None`: hyper holds something for it, see
    /// `parkable`), quiet since `last_activity`; `polled`: hyper has looked at the socket since
    /// the current hyper connection began.
    pub(crate) fn park_at(
        &mut self,
        now: u64,
        polled: bool,
        parkable: bool,
        last_activity: u64,
    ) -> Option<u64> {
        let mut park_at = parkable.then(|| last_activity.saturating_add(self.after));
        if polled && self.due.is_some_and(|due| now >= due) && park_at.is_none_or(|at| now < at) {
            // The pause ended and the connection was busy: look less often.
            self.after = (self.after * 2).min(PARK_AFTER_MAX_NANOS);
            park_at = parkable.then(|| last_activity.saturating_add(self.after));
        }
        self.due = park_at;
        park_at
    }

    /// The connection is being parked: the next pause is the shortest again.
    pub(crate) fn parked(&mut self) {
        *self = ParkPause::new();
    }
}

/// What one request tells about its connection, gathered when the request starts (and, for
/// `client_error`, when its answer is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestFacts {
    /// The node is draining.
    pub draining: bool,
    /// Requests served on the connection, this one included.
    pub served: u64,
    /// The connection's age when the request started.
    pub age: Duration,
    /// The client asked for a one-request connection (HTTP/1.0 without `keep-alive`,
    /// `Connection: close`).
    pub client_wants_close: bool,
    /// The answer is the client's own mistake (see `ForwardError::closes_connection`): its
    /// framing can no longer be trusted.
    pub client_error: bool,
}

/// Whether the connection stays open after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// The server ends the connection after this response, which says `Connection: close`.
    ServerCloses(CloseReason),
    /// The client asked to end it after this response (hyper frames that).
    ClientCloses,
    /// It stays open for the next request.
    KeepAlive,
}

/// The close decision of one response: the client's mistake first, then the drain, keep-alive
/// off, the request cap and the age cap, then the client's own wish.
pub(crate) fn persistence(facts: &RequestFacts, settings: &ListenerSettings) -> Persistence {
    let server_close = if facts.client_error {
        Some(CloseReason::Error)
    } else if facts.draining {
        Some(CloseReason::Shutdown)
    } else if settings.keepalive_timeout.is_zero() {
        Some(CloseReason::KeepaliveOff)
    } else if settings
        .max_requests_per_connection
        .is_some_and(|max| facts.served >= max)
    {
        Some(CloseReason::MaxRequests)
    } else if settings
        .max_connection_age
        .is_some_and(|max| facts.age >= max)
    {
        Some(CloseReason::MaxAge)
    } else {
        None
    };
    match server_close {
        Some(reason) => Persistence::ServerCloses(reason),
        None if facts.client_wants_close => Persistence::ClientCloses,
        None => Persistence::KeepAlive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn settings() -> ListenerSettings {
        ListenerSettings {
            keepalive_timeout: Duration::from_millis(500),
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(300),
            ..ListenerSettings::default()
        }
    }

    fn idle_after_one_request() -> State {
        State {
            accepted: 1000 * MS,
            last_read: 1010 * MS,
            last_write: 1020 * MS,
            head_started: 0,
            in_flight: 0,
            body_reading: false,
            requests: 1,
        }
    }

    #[test]
    fn connection_rules() {
        let idle = idle_after_one_request();
        let new = State {
            requests: 0,
            last_read: 1000 * MS,
            last_write: 1000 * MS,
            ..idle
        };
        let head = State {
            head_started: 1100 * MS,
            last_read: 1150 * MS,
            ..idle
        };
        let body = State {
            in_flight: 1,
            body_reading: true,
            last_read: 1100 * MS,
            ..idle
        };
        let waiting_for_backend = State {
            in_flight: 1,
            ..idle
        };
        let aged = ListenerSettings {
            max_connection_age: Some(Duration::from_millis(700)),
            ..settings()
        };
        let cases: &[(&str, State, &ListenerSettings, u64, Verdict)] = &[
            (
                "idle, before timeout",
                idle,
                &settings(),
                1521 * MS,
                Verdict::WaitUntil(Some(1522 * MS)),
            ),
            (
                "idle, at timeout",
                idle,
                &settings(),
                1522 * MS,
                Verdict::Close(CloseReason::IdleTimeout),
            ),
            (
                "new, waiting for first head",
                new,
                &settings(),
                1100 * MS,
                Verdict::WaitUntil(Some(1200 * MS)),
            ),
            (
                "new, head too late",
                new,
                &settings(),
                1200 * MS,
                Verdict::Abort(CloseReason::HeaderTimeout),
            ),
            (
                "slow head counts from its first byte",
                head,
                &settings(),
                1299 * MS,
                Verdict::WaitUntil(Some(1300 * MS)),
            ),
            (
                "slow head cut",
                head,
                &settings(),
                1300 * MS,
                Verdict::Abort(CloseReason::HeaderTimeout),
            ),
            (
                "body flowing",
                body,
                &settings(),
                1399 * MS,
                Verdict::WaitUntil(Some(1400 * MS)),
            ),
            (
                "body stalled",
                body,
                &settings(),
                1400 * MS,
                Verdict::Abort(CloseReason::BodyTimeout),
            ),
            (
                "waiting for backend has no deadline",
                waiting_for_backend,
                &settings(),
                9999 * MS,
                Verdict::WaitUntil(None),
            ),
            (
                "idle deadline comes before max age",
                idle,
                &aged,
                1510 * MS,
                Verdict::WaitUntil(Some(1522 * MS)),
            ),
            (
                "max age comes before idle deadline",
                State {
                    last_write: 1300 * MS,
                    ..idle
                },
                &aged,
                1510 * MS,
                Verdict::WaitUntil(Some(1700 * MS)),
            ),
            (
                "max age reached while busy",
                waiting_for_backend,
                &aged,
                1700 * MS,
                Verdict::Close(CloseReason::MaxAge),
            ),
        ];
        for (name, state, settings, now, expected) in cases {
            assert_eq!(evaluate(state, settings, *now), *expected, "{name}");
        }
    }

    #[test]
    fn a_shorter_timeout_applies_to_an_idle_connection_at_once() {
        let idle = idle_after_one_request();
        let mut changed = settings();
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::WaitUntil(Some(1522 * MS))
        );
        changed.keepalive_timeout = Duration::from_millis(50);
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::Close(CloseReason::IdleTimeout)
        );
        changed.keepalive_timeout = Duration::from_secs(10);
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::WaitUntil(Some(11_022 * MS))
        );
    }

    #[test]
    fn a_requested_close_waits_for_its_moment_only_while_idle() {
        let idle = idle_after_one_request();
        let busy = State {
            in_flight: 1,
            ..idle
        };
        let drain = Some((CloseReason::Shutdown, 1200 * MS));
        let admin = Some((CloseReason::Admin, 0));
        // (name, state, now, requested close, wake_at, expected)
        let cases: &[(
            &str,
            State,
            u64,
            Option<(CloseReason, u64)>,
            Option<u64>,
            Verdict,
        )] = &[
            (
                "nothing asked: the idle deadline",
                idle,
                1100 * MS,
                None,
                None,
                Verdict::WaitUntil(Some(1522 * MS)),
            ),
            (
                "nothing asked: an earlier wake-up",
                idle,
                1100 * MS,
                None,
                Some(1110 * MS),
                Verdict::WaitUntil(Some(1110 * MS)),
            ),
            (
                "nothing asked, busy: only the wake-up",
                busy,
                1100 * MS,
                None,
                Some(1110 * MS),
                Verdict::WaitUntil(Some(1110 * MS)),
            ),
            (
                "nothing asked, busy, no wake-up",
                busy,
                1100 * MS,
                None,
                None,
                Verdict::WaitUntil(None),
            ),
            (
                "drain, idle: waits for its moment",
                idle,
                1100 * MS,
                drain,
                None,
                Verdict::WaitUntil(Some(1200 * MS)),
            ),
            (
                "drain, idle: an earlier wake-up first",
                idle,
                1100 * MS,
                drain,
                Some(1150 * MS),
                Verdict::WaitUntil(Some(1150 * MS)),
            ),
            (
                "drain, idle: its moment came",
                idle,
                1200 * MS,
                drain,
                None,
                Verdict::Close(CloseReason::Shutdown),
            ),
            (
                "drain, idle: its own deadline first",
                idle,
                1600 * MS,
                Some((CloseReason::Shutdown, 1700 * MS)),
                None,
                Verdict::Close(CloseReason::IdleTimeout),
            ),
            (
                "drain, busy: closes after the request",
                busy,
                1100 * MS,
                drain,
                None,
                Verdict::Close(CloseReason::Shutdown),
            ),
            (
                "operator: at once",
                idle,
                1100 * MS,
                admin,
                None,
                Verdict::Close(CloseReason::Admin),
            ),
        ];
        for (name, state, now, requested, wake_at, expected) in cases {
            assert_eq!(
                decide(state, &settings(), *now, *requested, *wake_at),
                *expected,
                "{name}"
            );
        }
    }

    #[test]
    fn the_pause_before_parking_doubles_while_the_connection_stays_busy() {
        let mut pause = ParkPause::new();
        // (now, polled, parkable, last activity, expected park moment)
        let steps: &[(u64, bool, bool, u64, Option<u64>)] = &[
            // A new hyper connection: 10 ms after the last activity.
            (100 * MS, false, true, 100 * MS, Some(110 * MS)),
            // A request in flight: not parkable.
            (105 * MS, true, false, 100 * MS, None),
            // Quiet again after the request.
            (106 * MS, true, true, 106 * MS, Some(116 * MS)),
            // The pause ended, but the connection was busy meanwhile: the next pause is 20 ms.
            (116 * MS, true, true, 112 * MS, Some(132 * MS)),
            // And again: 40 ms.
            (132 * MS, true, true, 130 * MS, Some(170 * MS)),
            // Quiet for the whole pause: park now (the caller parks when now >= the moment).
            (170 * MS, true, true, 130 * MS, Some(170 * MS)),
        ];
        for (step, (now, polled, parkable, last, expected)) in steps.iter().enumerate() {
            assert_eq!(
                pause.park_at(*now, *polled, *parkable, *last),
                *expected,
                "step {step}"
            );
        }
        // Parked: the next pause is the shortest again.
        pause.parked();
        assert_eq!(
            pause.park_at(200 * MS, true, true, 200 * MS),
            Some(210 * MS)
        );
        // Never longer than a second.
        let mut pause = ParkPause::new();
        let mut last = 0;
        for _ in 0..20 {
            let at = pause.park_at(last + 1, true, true, last).unwrap();
            last = at - 1;
            let _ = pause.park_at(at, true, true, last);
        }
        assert_eq!(
            pause.park_at(last, true, true, last),
            Some(last + PARK_AFTER_MAX_NANOS)
        );
    }

    #[test]
    fn the_close_decision_of_a_response() {
        let keep = ListenerSettings {
            keepalive_timeout: Duration::from_secs(75),
            max_requests_per_connection: Some(3),
            max_connection_age: Some(Duration::from_secs(60)),
            ..ListenerSettings::default()
        };
        let off = ListenerSettings {
            keepalive_timeout: Duration::ZERO,
            ..keep.clone()
        };
        let plain = RequestFacts {
            draining: false,
            served: 1,
            age: Duration::from_secs(1),
            client_wants_close: false,
            client_error: false,
        };
        let server = Persistence::ServerCloses;
        // (name, facts, settings, expected)
        let cases: &[(&str, RequestFacts, &ListenerSettings, Persistence)] = &[
            ("an ordinary request", plain, &keep, Persistence::KeepAlive),
            (
                "the client asked to close",
                RequestFacts {
                    client_wants_close: true,
                    ..plain
                },
                &keep,
                Persistence::ClientCloses,
            ),
            (
                "the last request allowed",
                RequestFacts { served: 3, ..plain },
                &keep,
                server(CloseReason::MaxRequests),
            ),
            (
                "below the request cap",
                RequestFacts { served: 2, ..plain },
                &keep,
                Persistence::KeepAlive,
            ),
            (
                "old enough",
                RequestFacts {
                    age: Duration::from_secs(60),
                    ..plain
                },
                &keep,
                server(CloseReason::MaxAge),
            ),
            (
                "keep-alive off",
                plain,
                &off,
                server(CloseReason::KeepaliveOff),
            ),
            (
                "draining",
                RequestFacts {
                    draining: true,
                    served: 3,
                    ..plain
                },
                &keep,
                server(CloseReason::Shutdown),
            ),
            (
                "draining, keep-alive off",
                RequestFacts {
                    draining: true,
                    ..plain
                },
                &off,
                server(CloseReason::Shutdown),
            ),
            (
                "keep-alive off before the caps",
                RequestFacts { served: 3, ..plain },
                &off,
                server(CloseReason::KeepaliveOff),
            ),
            (
                "the request cap before the age",
                RequestFacts {
                    served: 3,
                    age: Duration::from_secs(61),
                    ..plain
                },
                &keep,
                server(CloseReason::MaxRequests),
            ),
            (
                "the client's mistake before all",
                RequestFacts {
                    client_error: true,
                    draining: true,
                    client_wants_close: true,
                    ..plain
                },
                &keep,
                server(CloseReason::Error),
            ),
            (
                "the server's reason before the client's wish",
                RequestFacts {
                    client_wants_close: true,
                    served: 3,
                    ..plain
                },
                &keep,
                server(CloseReason::MaxRequests),
            ),
        ];
        for (name, facts, settings, expected) in cases {
            assert_eq!(persistence(facts, settings), *expected, "{name}");
        }
    }
}
