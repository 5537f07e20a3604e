//! The metrics endpoint: a small HTTP/1 server on its own socket (`[telemetry] metrics_listen`)
//! answering `GET /metrics` (and `HEAD`); any other path is 404, any other method 405. Scrapes
//! are rare and small, so each connection is a task of its own; they are cut at shutdown.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Format, Metrics};

/// Connections the metrics endpoint holds at most at once (more are closed at accept).
const MAX_CONNECTIONS: usize = 64;

/// Serves the metrics on an already-bound socket until `shutdown` is cancelled.
pub async fn serve(socket: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = socket.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was taken: keep serving.
                tracing::debug!(%error, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            // A few scrapers hold a connection each; a flood must not take the node's descriptors.
            drop(stream);
            continue;
        }
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
}

/// The answer to one request.
fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::from_accept(accept);
    let mut response = Response::new(Full::new(Bytes::from(metrics.render(format))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn scrape(address: std::net::SocketAddr) -> Option<String> {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_a_freed_place_serves_again() {
        let (metrics, data_dir) = crate::metrics::tests::metrics().await;
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(socket, Arc::new(metrics), shutdown.clone()));
        let first = scrape(address).await.unwrap();
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");

        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(address).await.unwrap());
        }
        // One over the cap: closed at accept, without an answer.
        let mut over = TcpStream::connect(address).await.unwrap();
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), over.read(&mut buffer))
            .await
            .expect("closed within 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // A place freed: the next scrape is served (once the server has seen the close).
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(response) = scrape(address).await {
                if response.starts_with("HTTP/1.1 200 OK") {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no scrape served after a close"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        // Shutdown ends the server and cuts the idle connections it held.
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .unwrap();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), held[0].read(&mut buffer))
                .await
                .expect("cut within 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let _ = std::fs::remove_dir_all(data_dir);
    }
}
