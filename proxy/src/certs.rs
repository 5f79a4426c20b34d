//! The gateway's own certificate (docs/tls.md): `[proxy.tls]` `cert_file` (PEM chain,
//! leaf first) and `key_file` (PEM), checked the same way by `--check`, at start-up and
//! on every reload: both parse, the key matches the leaf, each certificate is issued by
//! the next one, and the leaf has not expired. Handshakes take the pair from a
//! [`CertResolver`], which the [`CertWatcher`] swaps when the files change (a renewal by
//! certbot, a Kubernetes secret update), so new handshakes get the new certificate
//! within seconds and open connections are untouched. A broken new pair keeps the last
//! good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::file_stamp::FileStamp;

/// A certificate that expires sooner than this is warned about (`--check`, start-up,
/// reload).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// How often the watcher looks at the files' metadata: well within the 10 seconds in
/// which a renewed pair must be served.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The crypto provider of every TLS connection of the gateway: aws-lc-rs, installed
/// as the process default before Pingora builds its listener and connectors (Pingora's
/// own `install_default_crypto_provider` keeps an installed default).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Why a certificate pair is refused. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or holds no PEM block of the needed kind.
    #[error("{path}: {what}")]
    Read { path: PathBuf, what: String },
    /// The private key is of a kind no TLS signature can be made with.
    #[error("{path}: unusable private key: {reason}")]
    Key { path: PathBuf, reason: String },
    /// A certificate is not valid DER X.509.
    #[error("{path}: certificate {index} does not parse: {reason}")]
    Parse {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    /// The key is not the leaf certificate's.
    #[error("the private key does not match the first certificate of {path}")]
    Mismatch { path: PathBuf },
    /// The chain is not in order: certificate `index` is not issued by the next one.
    #[error(
        "{path}: the chain is not in order: certificate {index} ({subject}) is issued by {issuer}, but certificate {next} is {next_subject}"
    )]
    Order {
        path: PathBuf,
        index: usize,
        next: usize,
        subject: String,
        issuer: String,
        next_subject: String,
    },
    /// The leaf's validity has ended.
    #[error("{path}: the certificate expired on {not_after}")]
    Expired { path: PathBuf, not_after: String },
}

/// A checked certificate pair, ready for handshakes.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// Chain and signing key as rustls serves them.
    pub key: Arc<CertifiedKey>,
    /// The leaf's serial number, in hex (logged on reload).
    pub serial: String,
    /// The leaf's subject.
    pub subject: String,
    /// The end of the leaf's validity.
    pub not_after: SystemTime,
}

impl CertPair {
    /// Reads and checks a pair.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, CertError> {
        let read = |path: &Path, what: &str| CertError::Read {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let cert_pem = std::fs::read(cert_file).map_err(|e| read(cert_file, &e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| read(cert_file, &format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(read(cert_file, "holds no CERTIFICATE block"));
        }
        let key_pem = std::fs::read(key_file).map_err(|e| read(key_file, &e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| read(key_file, &format!("holds no PEM private key: {e}")))?;
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| CertError::Key {
                path: key_file.to_path_buf(),
                reason: e.to_string(),
            })?;
        // The chain first: a chain in the wrong order would otherwise be reported as a
        // key that does not match its first certificate.
        let facts = check_chain(cert_file, &chain)?;
        let key = CertifiedKey::new(chain, signing);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            key.keys_match()
        {
            return Err(CertError::Mismatch {
                path: cert_file.to_path_buf(),
            });
        }
        if facts.not_after < SystemTime::now() {
            return Err(CertError::Expired {
                path: cert_file.to_path_buf(),
                not_after: humantime::format_rfc3339_seconds(facts.not_after).to_string(),
            });
        }
        Ok(CertPair {
            key: Arc::new(key),
            serial: facts.serial,
            subject: facts.subject,
            not_after: facts.not_after,
        })
    }

    /// How long until the leaf expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// A warning when the leaf expires within [`EXPIRY_WARNING`].
    pub fn expiry_warning(&self) -> Option<String> {
        let left = self.remaining();
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "the certificate ({}) expires in {} days, on {}: renew it",
                self.subject,
                left.as_secs() / 86_400,
                humantime::format_rfc3339_seconds(self.not_after)
            )
        })
    }
}

/// What the checks found out about the leaf.
struct LeafFacts {
    serial: String,
    subject: String,
    not_after: SystemTime,
}

/// Parses every certificate and checks that each is issued by the next one.
fn check_chain(path: &Path, chain: &[CertificateDer<'_>]) -> Result<LeafFacts, CertError> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse {
            path: path.to_path_buf(),
            index,
            reason: e.to_string(),
        })?;
        parsed.push(cert);
    }
    for (index, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer() != pair[1].subject() {
            return Err(CertError::Order {
                path: path.to_path_buf(),
                index,
                next: index + 1,
                subject: pair[0].subject().to_string(),
                issuer: pair[0].issuer().to_string(),
                next_subject: pair[1].subject().to_string(),
            });
        }
    }
    let leaf = &parsed[0];
    let not_after = leaf.validity().not_after.timestamp();
    Ok(LeafFacts {
        serial: leaf.raw_serial_as_string().replace(':', ""),
        subject: leaf.subject().to_string(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
    })
}

/// The certificate every new handshake gets: the last good pair.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// Serves `pair` until [`Self::install`] replaces it.
    pub fn new(pair: &CertPair) -> Self {
        CertResolver {
            current: ArcSwap::new(pair.key.clone()),
        }
    }

    /// New handshakes get `pair` from now on; open connections keep theirs.
    pub fn install(&self, pair: &CertPair) {
        self.current.store(pair.key.clone());
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The pair's files and the versions of them last read.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `proxy.tls.cert_file`
    pub cert_file: PathBuf,
    /// `proxy.tls.key_file`
    pub key_file: PathBuf,
    /// Both files' stamps, taken before they were read: a change during the read is
    /// seen by the next look.
    seen: [Option<FileStamp>; 2],
}

impl CertFiles {
    /// The files, and their pair as read now.
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> (Self, Result<CertPair, CertError>) {
        let seen = [FileStamp::of(&cert_file), FileStamp::of(&key_file)];
        let pair = CertPair::load(&cert_file, &key_file);
        let files = CertFiles {
            cert_file,
            key_file,
            seen,
        };
        (files, pair)
    }

    /// The pair read again, when either file changed since the last read.
    fn reload_if_changed(&mut self) -> Option<Result<CertPair, CertError>> {
        let now = [
            FileStamp::of(&self.cert_file),
            FileStamp::of(&self.key_file),
        ];
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(CertPair::load(&self.cert_file, &self.key_file))
    }
}

/// Re-reads the pair when either file changes (polls their metadata every second).
#[derive(Debug)]
pub struct CertWatcher {
    /// The resolver the new pair goes to.
    pub resolver: Arc<CertResolver>,
    /// The files, as read at start-up.
    pub files: CertFiles,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut files = self.files.clone();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let Some(reloaded) = files.reload_if_changed() else {
                continue;
            };
            match reloaded {
                Ok(pair) => {
                    self.resolver.install(&pair);
                    tracing::info!(
                        serial = pair.serial,
                        subject = pair.subject,
                        not_after = %humantime::format_rfc3339_seconds(pair.not_after),
                        "proxy.tls: new certificate installed"
                    );
                    if let Some(w) = pair.expiry_warning() {
                        tracing::warn!("proxy.tls.cert_file: {w}");
                    }
                }
                Err(e) => tracing::error!(
                    "proxy.tls: the changed certificate pair is refused, keeping the previous one: {e}"
                ),
            }
        }
    }
}
