//! hearsay's gRPC admin API: the `hearsay.admin.v1.Admin` service over the node's data plane,
//! served with gRPC server reflection (v1 and v1alpha, so `grpcurl` needs no .proto file),
//! `grpc.health.v1.Health`, and bearer-token auth. Only this crate knows protobuf types.

mod auth;
mod convert;
pub mod ctl;
mod error;
mod rpc_span;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use hearsay_proxy::Proxy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::AdminError;
pub use service::AdminService;

/// The generated protobuf types, server and client.
#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    include!("generated/hearsay.admin.v1.rs");

    /// The encoded descriptors of admin.proto and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/admin_descriptor.bin");
}

/// What the admin API knows about the node it administers.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub version: String,
    pub started_at: SystemTime,
    pub admin_address: SocketAddr,
}

/// Why the admin server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("admin server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read {}: {reason}", .path.display())]
    TlsFile {
        path: std::path::PathBuf,
        reason: std::io::Error,
    },
}

/// How long a client may take over the TLS handshake of the admin API.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// tonic's TLS settings from the (already checked) files of `[admin] tls`.
fn server_tls(
    tls: &hearsay_config::AdminTls,
) -> Result<tonic::transport::ServerTlsConfig, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|reason| ServeError::TlsFile {
            path: path.to_owned(),
            reason,
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
    let mut config = tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

/// Serves the admin API on `listener` until `shutdown` is cancelled. When `token` is set, every
/// call except the health service needs `authorization: Bearer <token>`. With `tls` the API is
/// served over TLS only, and with its `client_ca` only to clients with a certificate it signed.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    cluster: Arc<hearsay_cluster::Cluster>,
    node: NodeInfo,
    token: Option<String>,
    tls: Option<hearsay_config::AdminTls>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        server = server.tls_config(server_tls(tls)?)?;
    }
    // Outermost: a span per Admin call, refused ones (a missing token) included.
    let mut server = server.layer(rpc_span::RpcSpanLayer);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let check = auth::BearerToken::new(token);
    let admin = pb::admin_server::AdminServer::with_interceptor(
        AdminService::new(proxy, cluster, node),
        check.clone(),
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = tonic::service::interceptor::InterceptedService::new(
        reflection().build_v1()?,
        check.clone(),
    );
    let reflection_v1alpha =
        tonic::service::interceptor::InterceptedService::new(reflection().build_v1alpha()?, check);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stopping = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<pb::admin_server::AdminServer<AdminService>>()
                .await;
        }
    };
    server
        .add_service(health_service)
        .add_service(admin)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stopping)
        .await?;
    Ok(())
}
