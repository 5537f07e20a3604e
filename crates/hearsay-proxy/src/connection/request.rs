//! One request on a client connection: forwarded to the pool, its answer (the backend's or a
//! synthetic one from `error.rs`) framed for the client, with the close decision of
//! [`persistence`] applied.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::response::Parts;
use http::{header, HeaderValue, Request, Response, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use super::rules::{persistence, Persistence, RequestFacts};
use crate::body::{AccessFacts, Finish, InFlight, RequestBody, ResponseBody};
use crate::error::ForwardError;
use crate::headers;
use crate::listener::Listener;
use crate::registry::{nanos, now_nanos, Connection};
use crate::trace;
use crate::upstream::{SpanFacts, Trail};

/// Handles one request: forwards it and decides whether the connection stays open after it.
pub(super) async fn handle(
    request: Request<Incoming>,
    connection: Arc<Connection>,
    listener: Arc<Listener>,
    draining: bool,
) -> Result<Response<ResponseBody>, Infallible> {
    let began = connection.request_began();
    let served = connection.request_started(!request.body().is_end_stream());
    let mut in_flight = InFlight::new(Arc::clone(&connection), began);
    connection.idle_hint.store(
        nanos(listener.settings_now().keepalive_timeout),
        Ordering::Relaxed,
    );
    let version = request.version();
    let head_request = request.method() == http::Method::HEAD;
    let mut facts = RequestFacts {
        draining,
        served,
        age: Duration::from_nanos(now_nanos().saturating_sub(connection.accepted_nanos)),
        client_wants_close: headers::wants_close(version, request.headers()),
        client_error: false,
    };

    let (mut head, body) = request.into_parts();
    let checked = headers::check_request(&head.method, head.version, &head.uri, &mut head.headers);
    let (mut trail, access) = begin_trail(&mut head, &connection, &listener, served);
    let request = Request::from_parts(head, RequestBody::new(body, Arc::clone(&connection)));
    let forwarded = match checked {
        // Boxed: hyper keeps room for one request future per connection for the connection's
        // whole life, so a large future inline would cost every idle connection its size.
        Ok(()) => {
            Box::pin(listener.pool.forward(
                request,
                &connection,
                listener.forwarded_proto,
                &mut trail,
            ))
            .await
        }
        Err(error) => Err(error),
    };
    let error_kind = forwarded.as_ref().err().map(ForwardError::kind);
    let response = match forwarded {
        Ok(response) => response.map(Either::Left),
        Err(error) if error.closes_connection() => {
            // The client's fault: its framing can no longer be trusted.
            tracing::debug!(
                listener = %listener.name,
                client = %connection.client,
                %error,
                "bad request"
            );
            facts.client_error = true;
            error.to_response().map(Either::Right)
        }
        Err(error) => {
            // A dead backend under load fails every request: one line per kind per second.
            log_failure(&error, &listener, &connection, &trail);
            error.to_response().map(Either::Right)
        }
    };
    let (mut parts, body) = response.into_parts();
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): the body was decoded as
    // chunked, so a length must not go on with it (it would cut the body); a backend that sent
    // both framed its message ambiguously, so its connection is not used again (`http1.rs`).
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    // Read after the answer came: the settings in force when the response goes out.
    let settings = listener.settings_now();
    let persistence = persistence(&facts, &settings);
    if let Persistence::ServerCloses(reason) = persistence {
        connection.set_close_reason(reason);
    } else if persistence == Persistence::ClientCloses {
        connection.set_close_reason(crate::registry::CloseReason::ClientClosed);
    }
    // Answered before the request body was read to its end: hyper will most likely close the
    // connection after this response (and say so), so promise no idle timeout.
    let keep_alive = if persistence == Persistence::KeepAlive
        && settings.keepalive_header
        && !connection.body_unread.load(Ordering::Relaxed)
    {
        headers::keep_alive_value(settings.keepalive_timeout)
    } else {
        None
    };
    frame_response(&mut parts, version, persistence, keep_alive);
    // Kept to the response's end only when there is something to write then.
    let finish = (trail.recorded() || access.is_some()).then(|| {
        Box::new(Finish {
            trail,
            error: error_kind,
            access,
        })
    });
    in_flight.answered(parts.status, finish);
    let bodiless = head_request || !carries_body(parts.status);
    Ok(Response::from_parts(
        parts,
        ResponseBody::new(body, in_flight, bodiless),
    ))
}

/// Starts the request's trail (its spans, from the client's trace context, which never goes on as
/// it came: ours, or with traces off a valid copy) and its access log facts.
fn begin_trail(
    head: &mut http::request::Parts,
    connection: &Arc<Connection>,
    listener: &Listener,
    served: u64,
) -> (Trail, Option<AccessFacts>) {
    let parent = trace::extract(&mut head.headers);
    let mut trail = Trail::start(
        parent,
        &SpanFacts {
            method: &head.method,
            path: head.uri.path(),
            version: head.version,
            headers: &head.headers,
            scheme: listener.forwarded_proto,
            listener: &listener.name,
            connection,
            index: served,
        },
    );
    // The connection's own events (its timeouts) join its last recorded request's trace.
    if trail.recorded() {
        connection.last_trace.store(trail.context().map(Arc::new));
    } else if trace::requests().is_some() && connection.last_trace.load().is_some() {
        connection.last_trace.store(None);
    }
    trail.keep_backend = listener.access_log.is_some();
    let access = listener.access_log.as_ref().map(|log| AccessFacts {
        log: Arc::clone(log),
        time: std::time::SystemTime::now(),
        listener: Arc::clone(&listener.name),
        method: head.method.clone(),
        // Bounded: the queue holds thousands of lines.
        path: crate::upstream::cut(
            head.uri.path_and_query().map_or("/", |path| path.as_str()),
            crate::access_log::MAX_PATH,
        )
        .to_owned(),
        index: served,
    });
    (trail, access)
}

/// A request the proxy answered itself because forwarding failed: one warning per kind per
/// listener per second (a dead backend under load fails every request), with its trace.
fn log_failure(error: &ForwardError, listener: &Listener, connection: &Connection, trail: &Trail) {
    let Some(suppressed) = listener.failure_log.allow(error, now_nanos()) else {
        return;
    };
    let (trace_id, span_id) = log_ids(trail);
    if suppressed == 0 {
        tracing::warn!(
            listener = %listener.name,
            pool = %listener.pool.name,
            client = %connection.client,
            %error,
            trace_id,
            span_id,
            "request failed"
        );
    } else {
        tracing::warn!(
            listener = %listener.name,
            pool = %listener.pool.name,
            client = %connection.client,
            %error,
            suppressed,
            trace_id,
            span_id,
            "request failed (and {suppressed} more like it since the last line)"
        );
    }
}

/// Whether a response with `status` has a body (RFC 9110 §6.4.1: 1xx, 204 and 304 have none).
fn carries_body(status: http::StatusCode) -> bool {
    !(status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED)
}

/// The trace and span ids a request's log lines carry (empty when it has no trace).
fn log_ids(trail: &Trail) -> (String, String) {
    match trail.context().filter(|context| context.is_valid()) {
        Some(context) => (
            format!("{:032x}", context.trace_id()),
            format!("{:016x}", context.span_id()),
        ),
        None => (String::new(), String::new()),
    }
}

/// The connection headers of a response to a request in `version`: `Connection: close` when the
/// server ends the connection; for a connection that stays open, `Connection: keep-alive` to an
/// HTTP/1.0 client and `Keep-Alive` (`keep_alive`, when promised).
fn frame_response(
    parts: &mut Parts,
    version: Version,
    persistence: Persistence,
    keep_alive: Option<HeaderValue>,
) {
    // Answer in the client's version: hyper then frames the keep-alive decision for an HTTP/1.0
    // client from our `Connection` header alone. An HTTP/1.1 client gets HTTP/1.1 whatever the
    // backend spoke (hearsay is the server it talks to): hyper would otherwise frame the body of
    // an HTTP/1.0 backend's response for HTTP/1.0 and lose a body of unknown length.
    parts.version = if version == Version::HTTP_10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    match persistence {
        Persistence::ServerCloses(_) => {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Persistence::ClientCloses => {}
        Persistence::KeepAlive => {
            if version == Version::HTTP_10 {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            }
            if let Some(value) = keep_alive {
                parts
                    .headers
                    .insert(headers::keep_alive_name().clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CloseReason;

    #[test]
    fn connection_headers_follow_the_close_decision() {
        let timeout = HeaderValue::from_static("timeout=75");
        let close = Persistence::ServerCloses(CloseReason::MaxRequests);
        // (version, persistence, keep-alive promised, Connection, Keep-Alive, response version)
        let cases: &[(
            Version,
            Persistence,
            bool,
            Option<&str>,
            Option<&str>,
            Version,
        )] = &[
            (
                Version::HTTP_11,
                Persistence::KeepAlive,
                true,
                None,
                Some("timeout=75"),
                Version::HTTP_11,
            ),
            (
                Version::HTTP_11,
                Persistence::KeepAlive,
                false,
                None,
                None,
                Version::HTTP_11,
            ),
            (
                Version::HTTP_10,
                Persistence::KeepAlive,
                true,
                Some("keep-alive"),
                Some("timeout=75"),
                Version::HTTP_10,
            ),
            (
                Version::HTTP_11,
                close,
                true,
                Some("close"),
                None,
                Version::HTTP_11,
            ),
            (
                Version::HTTP_10,
                close,
                true,
                Some("close"),
                None,
                Version::HTTP_10,
            ),
            (
                Version::HTTP_11,
                Persistence::ClientCloses,
                true,
                None,
                None,
                Version::HTTP_11,
            ),
            (
                Version::HTTP_10,
                Persistence::ClientCloses,
                true,
                None,
                None,
                Version::HTTP_10,
            ),
        ];
        for (version, persistence, promised, connection, keep_alive, answered) in cases {
            let (mut parts, ()) = Response::new(()).into_parts();
            frame_response(
                &mut parts,
                *version,
                *persistence,
                promised.then(|| timeout.clone()),
            );
            let case = format!("{version:?} {persistence:?} promised {promised}");
            let value = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap());
            assert_eq!(value("connection"), *connection, "{case}");
            assert_eq!(value("keep-alive"), *keep_alive, "{case}");
            assert_eq!(parts.version, *answered, "{case}");
        }
    }
}
