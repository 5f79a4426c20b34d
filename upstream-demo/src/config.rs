//! The demo's configuration: `[demo]`, plus the `[auth]` keys it shares with the
//! gateway (the same file serves both, so the two can never disagree).

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy::config::{AssertionConfig, AuthConfig, Dur, parse_duration};
use serde::Deserialize;

/// The parts of the file the demo reads; `[proxy]` and `[upstream]` are the gateway's.
#[derive(Debug, Deserialize)]
struct File {
    demo: DemoConfig,
    #[serde(default)]
    auth: Option<AuthConfig>,
    #[serde(default)]
    assertion: Option<AssertionConfig>,
}

/// `[demo]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Where the demo app listens (port 0 picks a free port and prints it).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Lifetime of minted socket.io tokens: short, because the page fetches a fresh one
    /// before every (re)connect.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Dur,
    /// Demo accounts with argon2 password hashes.
    #[serde(default)]
    pub users: Vec<DemoUser>,
    /// socket.io ping interval: also the longest an expired WebSocket stays open behind a
    /// gateway with `close_on_expiry`.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: Dur,
    /// SQLite file for sessions, so that signed-in users survive a restart of the demo
    /// (the scenario the original article struggled with); in memory when unset.
    #[serde(default)]
    pub session_db: Option<PathBuf>,
    /// Mark the session cookie `Secure`: set it when the site is served over TLS.
    #[serde(default)]
    pub secure_cookies: bool,
    /// The gateway's JWK Set URL (its `[assertion].jwks_path`). When set, every socket.io
    /// request must carry a valid signed assertion (`[assertion]` of the same file says
    /// which header, audience and issuer); without one it is refused with `401`.
    #[serde(default)]
    pub assertion_jwks_url: Option<String>,
    /// A Redis server (`redis://127.0.0.1:6379`): socket.io's Redis adapter carries
    /// broadcasts and room membership between the instances that share it (docs/clusters.md). Off: one process, no Redis.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The gateway's `auth.revocation_file`: on a single machine, `/logout` appends the
    /// user's sign-out there so that the gateway closes the user's sockets (relative to
    /// this file). With `redis_url`, the sign-out goes to the gateways' Redis stream
    /// instead, and this file is written only when set as well.
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
    /// The gateways' `cluster.key_prefix`: with `redis_url`, `/logout` adds the sign-out
    /// to the stream `<prefix>revocations` every gateway of the cluster reads.
    #[serde(default = "default_cluster_key_prefix")]
    pub cluster_key_prefix: String,
}

/// What the demo checks in the gateway's signed assertion.
#[derive(Debug, Clone)]
pub struct AssertionCheck {
    /// The gateway's JWK Set.
    pub jwks_url: String,
    /// The header carrying the assertion.
    pub header: String,
    /// Required `aud` (this upstream's name).
    pub audience: String,
    /// Required `iss`.
    pub issuer: String,
}

/// One demo account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUser {
    /// Login name.
    pub name: String,
    /// PHC-format argon2 hash of the password.
    pub password_hash: String,
}

fn default_listen() -> String {
    "127.0.0.1:3000".into()
}
fn default_token_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_cluster_key_prefix() -> String {
    "socketio-gateway:".into()
}
fn default_ping_interval() -> Dur {
    Dur(Duration::from_secs(25))
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Listening address text (`host:port`).
    pub listen: String,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Accounts.
    pub users: Vec<DemoUser>,
    /// socket.io ping interval.
    pub ping_interval: Duration,
    /// The header the gateway puts the verified user in.
    pub user_header: String,
    /// Session database file (relative to the config file); memory when `None`.
    pub session_db: Option<PathBuf>,
    /// `Secure` session cookie.
    pub secure_cookies: bool,
    /// The `[auth]` table: how to mint tokens the gateway accepts.
    pub auth: AuthConfig,
    /// Directory of the config file, for relative paths.
    pub base_dir: PathBuf,
    /// Verify the gateway's signed assertion on every socket.io request.
    pub assertion: Option<AssertionCheck>,
    /// The Redis server of the cluster, when the demo runs as one of several instances.
    pub redis_url: Option<String>,
    /// The gateway's revocation file (absolute, or relative to the working directory).
    pub revocation_file: Option<PathBuf>,
    /// The gateways' Redis stream of revocations (`<cluster_key_prefix>revocations`).
    pub revocation_stream: String,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings {
            listen: default_listen(),
            token_ttl: default_token_ttl().0,
            users: Vec::new(),
            ping_interval: default_ping_interval().0,
            user_header: "x-auth-user".into(),
            session_db: None,
            secure_cookies: false,
            auth: AuthConfig::default(),
            base_dir: PathBuf::from("."),
            assertion: None,
            redis_url: None,
            revocation_file: None,
            revocation_stream: format!("{}revocations", default_cluster_key_prefix()),
        }
    }
}

/// Problems reading the demo's configuration.
#[derive(Debug, thiserror::Error)]
pub enum DemoConfigError {
    /// The file cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid for the demo.
    #[error("{file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl DemoSettings {
    /// Reads `[demo]` and `[auth]` from a file.
    pub fn load(file: &Path) -> Result<Self, DemoConfigError> {
        let name = file.display().to_string();
        let src = std::fs::read_to_string(file).map_err(|source| DemoConfigError::Read {
            file: name.clone(),
            source,
        })?;
        let parsed: File = toml::from_str(&src).map_err(|e| DemoConfigError::Invalid {
            file: name.clone(),
            message: e.to_string(),
        })?;
        let d = parsed.demo;
        let base_dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let auth = parsed.auth.unwrap_or_default();
        let assertion = match (d.assertion_jwks_url, parsed.assertion) {
            (None, _) => None,
            (Some(url), Some(a)) => Some(AssertionCheck {
                jwks_url: url,
                header: a.header,
                audience: a.audience,
                issuer: a.issuer,
            }),
            (Some(_), None) => {
                return Err(DemoConfigError::Invalid {
                    file: name,
                    message: "demo.assertion_jwks_url needs the [assertion] table (header, audience, issuer)".into(),
                });
            }
        };
        Ok(DemoSettings {
            assertion,
            listen: d.listen,
            token_ttl: d.token_ttl.0,
            users: d.users,
            ping_interval: d.ping_interval.0,
            user_header: auth.user_header.clone(),
            session_db: d
                .session_db
                .map(|p| if p.is_absolute() { p } else { base_dir.join(p) }),
            revocation_file: d
                .revocation_file
                .map(|p| if p.is_absolute() { p } else { base_dir.join(p) }),
            revocation_stream: format!("{}revocations", d.cluster_key_prefix),
            secure_cookies: d.secure_cookies,
            redis_url: d.redis_url,
            auth,
            base_dir,
        })
    }

    /// Overrides the ping interval from text such as `"1s"`.
    pub fn with_ping_interval(mut self, text: &str) -> Result<Self, String> {
        self.ping_interval = parse_duration(text)?;
        Ok(self)
    }
}
