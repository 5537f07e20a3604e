//! Active health checks: every pool with a `[pool.health_check]` probes its backends
//! concurrently, jittered, off the data plane, and hands each result to the backend's health,
//! which flips after the configured number of consecutive results.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use hearsay_config::{HealthCheckConfig, HealthCheckKind};
use http::Method;
use http_body_util::Empty;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::backend::BackendState;
use super::health::unix_millis;
use super::http1::{Release, Upload, UpstreamConn};
use super::pool::Pool;
use super::stream::UpstreamStream;
use super::tls::UpstreamTls;
use crate::random::random;

/// Probes the pool's backends every interval until the pool is dropped or `stop` is cancelled;
/// each result goes to the backend's [`BackendHealth`](super::health::BackendHealth).
pub(crate) async fn run_checks(pool: Weak<Pool>, stop: CancellationToken) {
    let Some(config) = pool.upgrade().and_then(|pool| pool.health_check.clone()) else {
        return;
    };
    // Start at a random point of the first interval, so pools and nodes do not probe in step.
    let mut wait = jittered(config.interval, 1.0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = jittered(config.interval, 0.1);
        let Some(pool) = pool.upgrade() else { return };
        let backends = pool.backends();
        let mut probes = JoinSet::new();
        for (index, backend) in backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.state() != BackendState::Disabled && b.probes_here())
        {
            let address = backend.address.clone();
            let config = config.clone();
            let agent = pool.probe_agent().to_owned();
            let tls = pool.tls.clone();
            probes.spawn(async move {
                let started_at = unix_millis();
                let result = probe(&address, tls.as_deref(), &config, &agent).await;
                (index, started_at, result)
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((index, started_at, result)) = joined else {
                continue;
            };
            backends[index].record_probe(
                &result,
                started_at,
                &config,
                pool.shared_health(),
                pool.unejects_on_healthy_check(),
            );
        }
    }
}

/// `interval` varied by up to `spread` of itself (0.1 = ±5 %).
fn jittered(interval: Duration, spread: f64) -> Duration {
    let fraction = (random() % 10_000) as f64 / 10_000.0; // 0..1
    let factor = 1.0 - spread / 2.0 + spread * fraction;
    interval.mul_f64(factor.max(0.0))
}

/// One check of one backend: `Ok` when healthy, else why not. An HTTP check is a GET whose
/// answer is read by the same HTTP/1 client as requests (`http1.rs`: the same head limits,
/// framing and 1xx handling), on a connection of its own that closes after the response head.
pub(crate) async fn probe(
    address: &str,
    tls: Option<&UpstreamTls>,
    config: &HealthCheckConfig,
    agent: &str,
) -> Result<(), String> {
    let check = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        // A TLS pool's checks shake hands as its requests do (a TCP check too: a backend
        // whose certificate the pool refuses is not healthy for it).
        let stream = match tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => tls.handshake(address, stream).await?,
        };
        let HealthCheckKind::Http {
            path,
            expected_status,
            host,
        } = &config.kind
        else {
            return Ok(());
        };
        let host = host.as_deref().unwrap_or(address);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
        );
        let response = UpstreamConn::new(stream)
            .exchange_encoded(
                request.into_bytes(),
                &Method::GET,
                None::<Upload<Empty<Bytes>>>,
                Close,
            )
            .await
            .map_err(|(error, _, _)| error.to_string())?;
        let status = response.status().as_u16();
        if (expected_status.0..=expected_status.1).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                expected_status.0, expected_status.1
            ))
        }
    };
    match tokio::time::timeout(config.timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            hearsay_config::format_duration(config.timeout)
        )),
    }
}

/// A check's connection is not kept: it closes when the response is dropped.
#[derive(Debug)]
struct Close;

impl Release for Close {
    fn release(self, _conn: UpstreamConn) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend that answers one connection with `answer` once the request head is in, and
    /// hands back that head.
    async fn backend(answer: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert!(read > 0, "closed in the request head");
                head.extend_from_slice(&buffer[..read]);
            }
            stream.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (address, served)
    }

    fn http_check(expected_status: (u16, u16)) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Http {
                path: "/healthz?deep=1".to_owned(),
                expected_status,
                host: Some("app.internal".to_owned()),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        }
    }

    #[tokio::test]
    async fn an_http_check_is_read_as_requests_are() {
        // (backend's answer, expected result)
        let cases: &[(&'static [u8], Result<(), &str>)] = &[
            (b"HTTP/1.1 204 No Content\r\n\r\n", Ok(())),
            // Interim responses are skipped, as for requests.
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                Ok(()),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                Err("status 503, expected 200-399"),
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", Err("invalid response head")),
            (b"", Err("connection closed before the response")),
        ];
        for (answer, expected) in cases {
            let (address, served) = backend(answer).await;
            let result = probe(&address, None, &http_check((200, 399)), "hearsay-test").await;
            match expected {
                Ok(()) => assert_eq!(result, Ok(()), "{answer:?}"),
                Err(reason) => {
                    let error = result.expect_err("unhealthy");
                    assert!(error.contains(reason), "{answer:?}: {error}");
                }
            }
            let head = served.await.unwrap();
            assert!(
                head.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
                "{head}"
            );
            for line in [
                "Host: app.internal\r\n",
                "User-Agent: hearsay-test\r\n",
                "Connection: close\r\n",
            ] {
                assert!(head.contains(line), "{line:?} in {head}");
            }
        }
    }
}
