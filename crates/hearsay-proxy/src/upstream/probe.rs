//! Active health checks: every pool with a `[pool.health_check]` probes its backends
//! concurrently, jittered, off the data plane, and hands each result to the backend's health,
//! which flips after the configured number of consecutive results.

use std::sync::Weak;
use std::time::Duration;

use hearsay_config::{HealthCheckConfig, HealthCheckKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::backend::BackendState;
use super::health::unix_millis;
use super::pool::Pool;
use super::random::random;

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
            probes.spawn(async move {
                let started_at = unix_millis();
                let result = probe(&address, &config, &agent).await;
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

/// One check of one backend: `Ok` when healthy, else why not.
pub(crate) async fn probe(
    address: &str,
    config: &HealthCheckConfig,
    agent: &str,
) -> Result<(), String> {
    let check = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
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
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("send: {error}"))?;
        let mut head = Vec::with_capacity(128);
        let mut buffer = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let read = stream
                .read(&mut buffer)
                .await
                .map_err(|error| format!("read: {error}"))?;
            if read == 0 {
                return Err("closed before a status line".to_owned());
            }
            head.extend_from_slice(&buffer[..read]);
        }
        let line = String::from_utf8_lossy(&head);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| "not an HTTP response".to_owned())?;
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
