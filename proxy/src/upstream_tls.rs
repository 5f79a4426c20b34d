//! TLS to the upstreams (docs/tls.md): `upstream.tls = true` reaches `https://` and
//! `wss://` socket.io servers, verifying their certificate against `upstream.ca_file`
//! (else the system's roots) for `upstream.sni` (else the server's IP address). The
//! HTTP path gives the same CA file and name to Pingora's connector; WebSocket tunnels
//! and health checks connect with the [`UpstreamTls`] here, so all three verify alike.
//! A certificate that does not verify is never talked to: the request is `502`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the gateway speaks TLS to its upstreams.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    /// `upstream.sni`: the name sent and verified; `None` verifies the server's IP.
    sni: Option<ServerName<'static>>,
    /// `upstream.ca_file`, for Pingora's connector (`None`: the system's roots).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Why the upstream TLS settings are refused; the key each is about is in its name.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// `upstream.ca_file` could not be read or holds no certificate.
    #[error("{path}: {what}")]
    CaFile { path: PathBuf, what: String },
    /// No system root certificate could be loaded and no `ca_file` is set.
    #[error("no system root certificates found ({0}); set upstream.ca_file")]
    NoSystemRoots(String),
    /// `upstream.sni` is not a DNS name or an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    Sni(String),
    /// rustls refused the client configuration.
    #[error("cannot build the TLS client: {0}")]
    Client(rustls::Error),
}

impl UpstreamTlsError {
    /// The config key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            UpstreamTlsError::CaFile { .. } | UpstreamTlsError::NoSystemRoots(_) => {
                "upstream.ca_file"
            }
            UpstreamTlsError::Sni(_) => "upstream.sni",
            UpstreamTlsError::Client(_) => "upstream.tls",
        }
    }
}

impl UpstreamTls {
    /// Loads the roots and checks the name, once at start-up.
    pub fn new(ca_file: Option<&Path>, sni: Option<&str>) -> Result<Self, UpstreamTlsError> {
        let sni = sni
            .map(|s| {
                ServerName::try_from(s.to_string()).map_err(|_| UpstreamTlsError::Sni(s.into()))
            })
            .transpose()?;
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let err = |what: String| UpstreamTlsError::CaFile {
                    path: path.to_path_buf(),
                    what,
                };
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| err(format!("not a usable root certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(err("holds no CERTIFICATE block".into()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none installed".to_string(), ToString::to_string);
                    return Err(UpstreamTlsError::NoSystemRoots(why));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(UpstreamTlsError::Client)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A tunnel speaks HTTP/1.1: the upgrade is an HTTP/1.1 request.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    /// The name sent and verified for `addr`: `upstream.sni`, else its IP address.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The same name as text, for Pingora's `HttpPeer` (which skips verification when
    /// the name is empty, so it never is).
    pub fn sni_text(&self, addr: SocketAddr) -> String {
        match &self.sni {
            Some(ServerName::DnsName(d)) => d.as_ref().to_string(),
            _ => addr.ip().to_string(),
        }
    }

    /// A TLS connection to `addr` over an open TCP connection, certificate verified.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name_for(addr), tcp).await
    }
}

/// A tunnel's connection to its upstream: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum UpstreamStream {
    /// `upstream.tls = false`
    Plain(TcpStream),
    /// `upstream.tls = true`
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Connects to `addr` within `timeout` (TCP and, with TLS, the handshake);
    /// `Err(true)` on timeout.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        timeout: Duration,
    ) -> Result<Self, (bool, io::Error)> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            match tls {
                None => Ok(UpstreamStream::Plain(tcp)),
                Some(tls) => Ok(UpstreamStream::Tls(Box::new(
                    tls.handshake(addr, tcp).await?,
                ))),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r.map_err(|e| (false, e)),
            Err(_) => Err((true, io::ErrorKind::TimedOut.into())),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The health check of TLS upstreams: a TCP connect and a verified TLS handshake with
/// the tunnels' own settings, each server checked under its own name.
#[derive(Debug)]
pub struct TlsHealthCheck {
    /// The upstream TLS settings.
    pub tls: UpstreamTls,
    /// `upstream.connect_timeout`
    pub timeout: Duration,
}

#[async_trait]
impl HealthCheck for TlsHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let fail = |why: String| pingora::Error::explain(pingora::ErrorType::ConnectError, why);
        let addr = *target
            .addr
            .as_inet()
            .ok_or_else(|| fail("not an IP upstream".into()))?;
        UpstreamStream::connect(addr, Some(&self.tls), self.timeout)
            .await
            .map(|_| ())
            .map_err(|(_, e)| fail(format!("TLS health check of {addr}: {e}")))
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
