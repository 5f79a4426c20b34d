//! TLS for the tests (docs/tls.md): a test certificate authority made with `rcgen`
//! (ECDSA P-256 keys, a CA and leaves for `127.0.0.1` and `localhost`, written as PEM
//! files the gateway, the clients and HAProxy read), and a rustls client that trusts
//! only a given CA and reports the certificate and protocol it was served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

/// A test CA.
#[derive(Debug)]
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM: the only trust root a test client is given.
    pub pem: String,
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// Its serial number, lower-case hex without separators (as the gateway logs it).
    pub serial: String,
    /// SHA-256 of its SubjectPublicKeyInfo, base64 (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

/// Paths of a leaf written to disk.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA params"))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(fail("CA key"))?;
        let pem = params
            .self_signed(&key)
            .map_err(fail("CA certificate"))?
            .pem();
        Ok(TestCa { params, key, pem })
    }

    /// A leaf for `127.0.0.1` and `localhost` with serial `serial`, valid from a day
    /// ago for `valid_for`.
    pub fn leaf(&self, serial: u64, valid_for: Duration) -> Result<Leaf, String> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(fail("leaf params"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + valid_for;
        let key = KeyPair::generate().map_err(fail("leaf key"))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(fail("leaf certificate"))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex(serial),
            spki_sha256: spki_sha256(&key),
        })
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }
}

/// A serial number as X.509 writes it (big-endian, no leading zero bytes) in hex.
fn serial_hex(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].iter().map(|b| format!("{b:02x}")).collect()
}

/// base64 of the SHA-256 of the key's SubjectPublicKeyInfo.
fn spki_sha256(key: &KeyPair) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &rcgen::PublicKeyData::subject_public_key_info(key),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

impl Leaf {
    /// Writes the pair as `<stem>.pem` and `<stem>.key` in `dir`, each replaced by a
    /// rename (as certbot and Kubernetes do), so a reader never sees half a file.
    pub fn write(&self, dir: &Path, stem: &str) -> LeafFiles {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        for (path, text) in [(&key, &self.key_pem), (&cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
            std::fs::rename(&tmp, path)
                .unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
        }
        LeafFiles { cert, key }
    }

    /// HAProxy's `crt` file: the certificate followed by its key.
    pub fn write_combined(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{}{}", self.cert_pem, self.key_pem))
            .unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }
}

/// A client configuration that trusts only `ca_pem` and offers `alpn`, TLS 1.3 and 1.2.
pub fn client_config(ca_pem: &str, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    client_config_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] limited to `versions` (e.g. `&[&rustls::version::TLS12]`).
pub fn client_config_versions(
    ca_pem: &str,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.unwrap_or_else(|e| panic!("CA PEM: {e}"));
        roots.add(cert).unwrap_or_else(|e| panic!("CA: {e}"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects over TLS to `addr` as `127.0.0.1`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The serial number of the certificate a connection was served (as [`Leaf::serial`]).
pub fn served_serial(stream: &TlsStream<TcpStream>) -> String {
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .unwrap_or_else(|| panic!("no certificate served"));
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap_or_else(|e| panic!("{e}"));
    cert.raw_serial_as_string().replace(':', "")
}

/// The ALPN protocol a connection agreed on.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, conn) = stream.get_ref();
    conn.alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// Sends one HTTP/1.1 request (`Connection: close` is the caller's) over a TLS
/// connection and reads the answer to the end.
pub async fn exchange(stream: &mut TlsStream<TcpStream>, request: &[u8]) -> crate::http1::Response {
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    match read {
        Ok(Ok(_)) => {}
        // A peer that closes without close_notify after a complete answer.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Ok(Err(e)) => panic!("read: {e}"),
        Err(_) => panic!("no answer within 10 s"),
    }
    crate::http1::parse(&raw)
}

/// `GET target` over a new TLS connection, `Connection: close`.
pub async fn get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    target: &str,
) -> crate::http1::Response {
    let mut stream = connect(addr, config)
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}"));
    let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    exchange(&mut stream, request.as_bytes()).await
}
