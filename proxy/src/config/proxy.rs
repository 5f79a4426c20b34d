//! `[proxy]` and `[proxy.tls]` (docs/configuration.md, docs/tls.md): where the gateway
//! listens and how it runs; the schema with its defaults, its checks, and the runtime
//! [`ProxySettings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::Problems;
use super::values::{Dur, parse_addr};
use crate::certs::{CertError, CertFiles, CertPair};

/// `[proxy]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `address:port` the gateway serves on; required (validation says so when it is
    /// missing), because a default port would silently collide with whatever else
    /// runs on the host.
    #[serde(default)]
    pub listen: String,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Optional address for Prometheus metrics at `/metrics`; off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// How long open requests and WebSockets may drain after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// How long each read of a request body may wait for the client's next bytes: a
    /// client that announces a large body and then stalls or trickles would otherwise
    /// hold its connection and an upstream connection for ever (`408`, then closed).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Dur,
    /// `[proxy.tls]`: with it, `listen` serves HTTPS and WSS; without it, plain HTTP.
    #[serde(default)]
    pub tls: Option<ProxyTlsConfig>,
}

/// `[proxy.tls]`: the gateway's certificate, re-read when either file changes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// PEM certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        // An empty table yields every documented default (and no `listen`).
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [proxy] table is valid"))
    }
}

fn default_threads() -> usize {
    2
}
fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_body_read_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

/// `[proxy]`, validated.
#[derive(Debug)]
pub struct ProxySettings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Drain time after SIGTERM.
    pub shutdown_grace: Duration,
    /// Longest wait for each read of a request body (docs/request-handling.md).
    pub body_read_timeout: Duration,
    /// `[proxy.tls]`: the certificate pair checked at start-up, and its files for the
    /// watcher.
    pub tls: Option<ProxyTls>,
}

/// `[proxy.tls]`, validated.
#[derive(Debug)]
pub struct ProxyTls {
    /// The chain and key files (resolved against the config file's directory), for
    /// the watcher.
    pub files: CertFiles,
    /// The pair as read at start-up.
    pub pair: CertPair,
}

impl ProxyConfig {
    /// Checks `[proxy]`, every problem into `v`; the settings when it has none that
    /// leaves a value unknown.
    pub(super) fn validate(&self, v: &mut Problems<'_>, base_dir: &Path) -> Option<ProxySettings> {
        let listen = if self.listen.is_empty() {
            v.push(
                "proxy.listen",
                "is required: the address:port the gateway serves on".into(),
            );
            None
        } else {
            parse_addr(v, "proxy.listen", &self.listen)
        };
        if self.threads == 0 {
            v.push("proxy.threads", "must be at least 1".into());
        }
        if self.body_read_timeout.0.is_zero() {
            v.push("proxy.body_read_timeout", "must be more than 0s".into());
        }
        let metrics_listen = match self.metrics_listen.as_deref() {
            Some(a) => Some(parse_addr(v, "proxy.metrics_listen", a)?),
            None => None,
        };
        let tls = match &self.tls {
            Some(t) => Some(t.validate(v, base_dir)?),
            None => None,
        };
        Some(ProxySettings {
            listen: listen?,
            threads: self.threads,
            metrics_listen,
            shutdown_grace: self.shutdown_grace.0,
            body_read_timeout: self.body_read_timeout.0,
            tls,
        })
    }
}

impl ProxyTlsConfig {
    /// `[proxy.tls]`: the pair read and checked as every reload will check it.
    fn validate(&self, v: &mut Problems<'_>, base_dir: &Path) -> Option<ProxyTls> {
        let (files, pair) = CertFiles::load(
            base_dir.join(&self.cert_file),
            base_dir.join(&self.key_file),
        );
        match pair {
            Ok(pair) => {
                if let Some(w) = pair.expiry_warning() {
                    v.warn("proxy.tls.cert_file", w);
                }
                Some(ProxyTls { files, pair })
            }
            Err(e) => {
                v.push(cert_error_key(&e, &files.key_file), e.to_string());
                None
            }
        }
    }
}

/// The `[proxy.tls]` key a certificate problem is reported under.
fn cert_error_key(e: &CertError, key_file: &Path) -> &'static str {
    match e {
        CertError::Mismatch { .. } => "proxy.tls",
        CertError::Key { .. } => "proxy.tls.key_file",
        CertError::Read { path, .. } if path == key_file => "proxy.tls.key_file",
        _ => "proxy.tls.cert_file",
    }
}
