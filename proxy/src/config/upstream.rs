//! `[upstream]` (docs/configuration.md, docs/tls.md): the socket.io servers behind the
//! gateway and how they are reached; the schema with its defaults, its checks, and the
//! runtime [`UpstreamSettings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::Problems;
use super::values::{Dur, parse_addr};
use crate::upstream_tls::UpstreamTls;

/// `[upstream]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The socket.io servers, `address:port`; at least one (checked by validation).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Which request property keeps an Engine.IO session on one server.
    #[serde(default)]
    pub sticky: Sticky,
    /// Give up one connect to an upstream after this long; long enough for the SYN
    /// retransmissions (1 s, 3 s) of an upstream whose accept queue overflowed.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Connects that time out or are refused are tried again this many times (HAProxy's
    /// `retries`); then the request is answered `502`/`504`.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Connects in flight to one server at most; more wait at the gateway for their
    /// turn (within `connect_timeout * (retries + 1)`). `0`: no cap.
    #[serde(default = "default_max_connecting")]
    pub max_connecting: u32,
    /// How long the upstream may take to answer, and between reads of its answer: a
    /// long poll waits up to Engine.IO's ping interval plus its ping timeout.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// How long an idle keep-alive connection to an upstream is kept for reuse.
    #[serde(default = "default_pool_idle")]
    pub pool_idle: Dur,
    /// Interval of TCP health checks; `"0s"` disables them.
    #[serde(default = "default_health_check")]
    pub health_check: Dur,
    /// Speak TLS to the servers (`https://`/`wss://`), certificate verified.
    #[serde(default)]
    pub tls: bool,
    /// PEM root certificates the servers' certificates must chain to; the system's
    /// roots when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name sent (SNI) and verified in the servers' certificates; their IP address when
    /// unset.
    #[serde(default)]
    pub sni: Option<String>,
}

/// `[upstream].sticky`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// Hash the raw token: one client, one server.
    #[default]
    Token,
    /// Hash the verified user: all tabs of a user on one server.
    User,
    /// Hash the client address.
    Ip,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [upstream] table is valid"))
    }
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_retries() -> u32 {
    3
}
fn default_max_connecting() -> u32 {
    // Below Node's default listen backlog (511): a reconnect storm of any size leaves
    // room in a socket.io server's accept queue, so no SYN of it is dropped and waits
    // out a retransmission (1 s, then 3 s); the rest queue at the gateway
    // (docs/configuration.md, `upstream.max_connecting`).
    256
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_pool_idle() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_health_check() -> Dur {
    Dur(Duration::from_secs(5))
}

/// Most connect retries `upstream.retries` allows: a storm queues at the gateway, it
/// does not multiply its connects.
const MAX_RETRIES: u32 = 10;

/// `[upstream]`, validated.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// The servers.
    pub servers: Vec<SocketAddr>,
    /// Which request property picks the server when there are several.
    pub sticky: Sticky,
    /// TCP health-check interval with several servers (zero: off).
    pub health_check: Duration,
    /// Connect timeout, per attempt.
    pub connect_timeout: Duration,
    /// Connect attempts after the first, for connects that time out or are refused.
    pub retries: u32,
    /// Connects in flight to one server at most (`None`: no cap).
    pub max_connecting: Option<usize>,
    /// How long an upstream may take to answer, and between reads of its answer.
    pub read_timeout: Duration,
    /// How long an idle keep-alive upstream connection is kept.
    pub pool_idle: Duration,
    /// TLS to the servers (`upstream.tls`), with its roots and name.
    pub tls: Option<UpstreamTls>,
}

impl UpstreamConfig {
    /// Checks `[upstream]`, every problem into `v`.
    pub(super) fn validate(
        &self,
        v: &mut Problems<'_>,
        base_dir: &Path,
    ) -> Option<UpstreamSettings> {
        if self.servers.is_empty() {
            v.push("upstream.servers", "at least one server is required".into());
        }
        let mut servers = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            if let Some(addr) = parse_addr(v, &format!("upstream.servers[{i}]"), s) {
                servers.push(addr);
            }
        }
        for (d, key) in [
            (self.connect_timeout.0, "upstream.connect_timeout"),
            (self.read_timeout.0, "upstream.read_timeout"),
        ] {
            if d.is_zero() {
                v.push(key, "must be more than 0s".into());
            }
        }
        if self.retries > MAX_RETRIES {
            v.push("upstream.retries", format!("must be at most {MAX_RETRIES}"));
        }
        // `0`: no cap. A number is never refused for being large: the dialer caps it at
        // what a semaphore holds.
        let max_connecting = (self.max_connecting > 0).then_some(self.max_connecting as usize);
        let tls = if self.tls {
            let ca_file = self.ca_file.as_ref().map(|f| base_dir.join(f));
            UpstreamTls::new(ca_file.as_deref(), self.sni.as_deref())
                .map_err(|e| v.push(e.key(), e.to_string()))
                .ok()
        } else {
            for (set, key) in [
                (self.ca_file.is_some(), "upstream.ca_file"),
                (self.sni.is_some(), "upstream.sni"),
            ] {
                if set {
                    v.push(key, "has no effect without upstream.tls = true".into());
                }
            }
            None
        };
        Some(UpstreamSettings {
            servers,
            sticky: self.sticky,
            health_check: self.health_check.0,
            connect_timeout: self.connect_timeout.0,
            retries: self.retries,
            max_connecting,
            read_timeout: self.read_timeout.0,
            pool_idle: self.pool_idle.0,
            tls,
        })
    }
}
