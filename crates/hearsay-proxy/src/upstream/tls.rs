//! TLS to a pool's backends: the pool's rustls client configuration (built by `hearsay-tls`:
//! roots or no verification, client certificate, ALPN, session resumption shared by the pool's
//! connections) and the name each backend must prove.

use std::sync::Arc;

use hearsay_config::PoolTls;
use hearsay_tls::rustls::pki_types::ServerName;
use hearsay_tls::rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::stream::UpstreamStream;

/// How a pool's connections to its backends are secured.
#[derive(Debug)]
pub(crate) struct UpstreamTls {
    /// Shared by every connection of the pool, and with it the session cache (resumption).
    client: Arc<ClientConfig>,
    /// `tls.server_name`; `None`: each backend's host.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Reads the files `config` names (checked when the config was loaded, read again here).
    pub(crate) fn new(config: &PoolTls) -> Result<UpstreamTls, String> {
        let client = hearsay_tls::client_config(&config.client, std::time::SystemTime::now())
            .map_err(|error| error.to_string())?;
        let server_name = match &config.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("tls.server_name {name:?} is not a server name"))?,
            ),
        };
        Ok(UpstreamTls {
            client,
            server_name,
        })
    }

    /// The TLS handshake on a connected socket to the backend at `address`: SNI is
    /// `tls.server_name` or the backend's host name (none for an IP address). Unbounded: the
    /// caller's connect timeout covers it.
    pub(crate) async fn handshake(
        &self,
        address: &str,
        socket: TcpStream,
    ) -> Result<UpstreamStream, String> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => hearsay_tls::backend_server_name(address).ok_or_else(|| {
                format!("the host of {address} cannot name a certificate; set tls.server_name")
            })?,
        };
        let stream = TlsConnector::from(Arc::clone(&self.client))
            .connect(name, socket)
            .await
            .map_err(|error| format!("TLS handshake: {error}"))?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    }
}
