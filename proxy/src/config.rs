//! The TOML configuration file (docs/configuration.md): its schema and defaults here,
//! one default per key in one place (the `default_*` functions and `Default` impls,
//! which serde uses, the table in docs/configuration.md and config.toml are checked against them).
//!
//! Parsing ([`Config::parse`], in `parse.rs`) turns the text into these structs;
//! unknown keys and bad types are reported with the key path and line. Validation
//! ([`Config::validate`], in `settings.rs`, one function per section) checks everything
//! the file refers to (environment variables, key files, secret lengths, algorithm
//! names) and builds the runtime [`Settings`]. Both report *every* problem at once,
//! each prefixed with its key path, so that `proxy --check` and start-up give the
//! same answer.

mod key_source;
mod parse;
mod settings;

pub use parse::{ConfigErrors, KeyLines, Problem};
pub use settings::{
    AuthSettings, ProxySettings, ProxyTls, Settings, UpstreamSettings, load_settings,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written with a unit (`"500ms"`, `"5s"`, `"10m"`); a bare number or a
/// negative value is refused so that nobody has to guess the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Written back as the config file writes it (`"5s"`, `"1m 30s"`), for the defaults
/// the documentation is checked against.
impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a duration with a unit, as the config file and the demo's flags accept it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().any(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "invalid duration {text:?}: a unit is required, e.g. \"500ms\", \"5s\", \"10m\""
        ));
    }
    humantime::parse_duration(trimmed).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// The whole file. `[demo]` belongs to upstream-demo and is ignored here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens and how it runs.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// The socket.io server(s) behind the gateway.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// How tokens are found, verified and turned into identity headers.
    #[serde(default)]
    pub auth: AuthConfig,
    /// upstream-demo's own settings; the gateway does not read them.
    #[serde(default)]
    pub demo: Option<toml::Table>,
    /// Optional signed identity assertion for the upstream.
    #[serde(default)]
    pub assertion: Option<AssertionConfig>,
}

/// `[assertion]`: the gateway signs a short-lived JWT naming the verified user and adds
/// it to every authenticated request, so that an upstream reachable by others than the
/// gateway need not trust a bare `x-auth-user` header.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// Header carrying the assertion (removed from client requests like the identity
    /// headers, so a client can not bring its own).
    #[serde(default = "default_assertion_header")]
    pub header: String,
    /// The gateway's Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`).
    pub key_file: PathBuf,
    /// `aud` of every assertion: the upstream's name, which the upstream checks.
    pub audience: String,
    /// `iss` of every assertion.
    #[serde(default = "default_assertion_issuer")]
    pub issuer: String,
    /// Lifetime: `exp` is this long after the request (a few seconds).
    #[serde(default = "default_assertion_ttl")]
    pub ttl: Dur,
    /// Where the gateway serves its public key as a JWK Set (answered by the gateway, not
    /// forwarded).
    #[serde(default = "default_assertion_jwks_path")]
    pub jwks_path: String,
}

fn default_assertion_header() -> String {
    "x-auth-assertion".into()
}
fn default_assertion_issuer() -> String {
    "socketio-jwt-gateway".into()
}
fn default_assertion_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_assertion_jwks_path() -> String {
    "/.well-known/gateway-jwks.json".into()
}

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

/// `[auth].reject_with`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectWith {
    /// `401` with a JSON body (docs/request-handling.md).
    Http,
    /// A socket.io `CONNECT_ERROR` the official client understands (docs/websockets.md,
    /// "Refusals the socket.io client understands"): the default, because with `401`
    /// the official client only sees a transport error and retries the same token
    /// forever. Requests that are not Engine.IO v4 are still answered `401`.
    #[default]
    Socketio,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Allow-list of JWS algorithms; `none` is never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// HS*: the environment variable holding the shared secret (>= 32 bytes).
    /// Defaults to `JWT_SECRET` when no other key source is configured.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// HS*: a file holding the shared secret (one trailing newline is ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// RS*/PS*/ES*/EdDSA: a PEM `PUBLIC KEY`.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWK Set on disk, re-read when it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set fetched over HTTP(S).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// An OpenID Connect issuer: its discovery document names the JWK Set (then
    /// handled as `jwks_url`), and `iss` must be this issuer unless `issuer` is set.
    #[serde(default)]
    pub oidc_issuer: Option<String>,
    /// Required `iss` when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required member of `aud` when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Reject tokens without `exp`: a token that never expires is a credential forever.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Larger tokens are refused before any decoding work.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Path prefixes (case-insensitive, plain string prefix) that need a token.
    #[serde(default = "default_protected_paths")]
    pub protected_paths: Vec<String>,
    /// Exact paths exempt for plain GET/HEAD (the client bundle).
    #[serde(default = "default_public_paths")]
    pub public_paths: Vec<String>,
    /// Where the token is looked for, in order; only the first present one is used.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<String>,
    /// Dotted path of the claim naming the user.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Header that carries the verified user upstream.
    #[serde(default = "default_user_header")]
    pub user_header: String,
    /// Claim path -> header name, forwarded when the claim exists.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the token from what is sent upstream.
    #[serde(default = "default_true")]
    pub strip_token: bool,
    /// Close an upgraded WebSocket once its token has expired.
    #[serde(default = "default_true")]
    pub close_on_expiry: bool,
    /// How a failed authentication is answered.
    #[serde(default)]
    pub reject_with: RejectWith,
    /// Entries in the cache of verified tokens (a repeated token skips the signature
    /// check; `exp`/`nbf` are still checked on every use); `0` turns it off.
    #[serde(default = "default_verify_cache")]
    pub verify_cache: usize,
    /// Failed authentications per second allowed from one client address; past it the
    /// address gets `429` before any token is looked at, so a flood of forged RS256/ES256
    /// tokens can not burn CPU. `0` turns the limit off.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// When set, the token header's `typ` must be this media type (RFC 8725 3.11),
    /// compared case-insensitively with an optional `application/` prefix.
    #[serde(default)]
    pub required_typ: Option<String>,
    /// Refuse tokens whose `exp` lies further than this ahead (`token_lifetime`): a
    /// leaked long-lived token is a credential for that long. Off when unset.
    #[serde(default)]
    pub max_lifetime: Option<Dur>,
    /// Origins (`https://app.example`) whose pages may read the gateway's refusals with
    /// credentials (CORS). Others get no CORS headers at all.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// The environment variable holding the key Engine.IO session ids are sealed with
    /// (docs/request-handling.md "Engine.IO sessions", >= 32 bytes): every gateway that must read the
    /// sessions another opened, or its own after a restart, needs the same key. Unset
    /// (and no `session_key_file`): a random key per process.
    #[serde(default)]
    pub session_key_env: Option<String>,
    /// A file holding that key instead (one trailing newline is ignored).
    #[serde(default)]
    pub session_key_file: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        // An empty table yields every documented default (and no `listen`).
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [proxy] table is valid"))
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [upstream] table is valid"))
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        // An empty table yields every documented default.
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [auth] table is valid"))
    }
}

fn default_threads() -> usize {
    2
}
fn default_shutdown_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_retries() -> u32 {
    3
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
fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_true() -> bool {
    true
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_protected_paths() -> Vec<String> {
    vec!["/socket.io/".into()]
}
fn default_public_paths() -> Vec<String> {
    vec![
        "/socket.io/socket.io.js".into(),
        "/socket.io/socket.io.min.js".into(),
    ]
}
fn default_token_sources() -> Vec<String> {
    vec![
        "query:token".into(),
        "header:authorization".into(),
        "cookie:io_token".into(),
    ]
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_verify_cache() -> usize {
    10_000
}
fn default_failure_limit() -> u32 {
    // Generous enough for many clients behind one NAT reconnecting with expired tokens
    // (socket.io retries each at most once a second); far below what a signature flood
    // needs to matter.
    50
}
fn default_user_header() -> String {
    "x-auth-user".into()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn durations_need_a_unit_and_no_sign() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let src =
            "[proxy]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n[upstream]\nservers=[\"127.0.0.1:2\"]\n";
        let err = match Config::parse(src) {
            Ok((_, _, problems)) => problems,
            Err(problems) => problems,
        };
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].line, Some(3), "{err:?}");
        assert!(err[0].message.contains("bogus"), "{err:?}");
        assert_eq!(err[0].key, "proxy.bogus");
    }

    #[test]
    fn validation_reports_every_problem_with_its_key() {
        let src = r#"
[proxy]
listen = "nowhere"
threads = 0
[upstream]
servers = ["127.0.0.1:3000"]
[auth]
algorithms = ["HS256", "none", "XX999"]
secret_env = "GATEWAY_TEST_UNSET_VARIABLE"
token_sources = ["query:token", "smoke:signal"]
user_header = "bad header"
"#;
        let (cfg, lines, parsed) = Config::parse(src).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(parsed.is_empty(), "{parsed:?}");
        let problems = cfg
            .validate(&lines, Path::new("."))
            .err()
            .unwrap_or_default();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "proxy.listen",
            "proxy.threads",
            "auth.algorithms",
            "auth.token_sources[1]",
            "auth.user_header",
        ] {
            assert!(keys.contains(&k), "{k} missing from {problems:#?}");
        }
        let listen = problems.iter().find(|p| p.key == "proxy.listen");
        assert_eq!(listen.and_then(|p| p.line), Some(3));
    }

    fn problems_of(src: &str) -> Vec<Problem> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, src).unwrap_or_else(|e| panic!("{e}"));
        load_settings(&file)
            .err()
            .map(|e| e.problems)
            .unwrap_or_default()
    }

    #[test]
    fn a_wrongly_typed_value_is_reported_with_every_other_problem() {
        let src = "[proxy]\nlisten = \"127.0.0.1:1\"\nthreads = \"two\"\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nleeway = \"forever\"\nsecret_env = \"GATEWAY_TEST_UNSET_VARIABLE\"\nbogus = 1\n";
        let problems = problems_of(src);
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        for (key, line) in [
            ("proxy.threads", Some(3)),
            ("auth.leeway", Some(7)),
            ("auth.bogus", Some(9)),
            ("auth.secret_env", Some(8)),
        ] {
            assert!(
                found.contains(&(key, line)),
                "{key} (line {line:?}) missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let leeway = problems.iter().find(|p| p.key == "auth.leeway");
        assert!(
            leeway.is_some_and(|p| p.message.contains("forever")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_missing_listen_is_named_by_its_key() {
        let problems = problems_of(
            "[proxy]\nthreads = 1\n[upstream]\nservers = [\"127.0.0.1:2\"]\n[auth]\nsecret_env = \"HOME\"\n",
        );
        let listen = problems.iter().find(|p| p.key == "proxy.listen");
        assert!(
            listen.is_some_and(|p| p.message.contains("required")),
            "{problems:#?}"
        );
        let problems = problems_of("[upstream]\nservers = [\"127.0.0.1:2\"]\n");
        assert!(
            problems.iter().any(|p| p.key == "proxy.listen"),
            "{problems:#?}"
        );
    }
}
