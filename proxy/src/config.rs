//! The TOML configuration file: its schema, its defaults, and its validation.
//!
//! Parsing ([`Config::parse`]) turns the text into serde structs; unknown keys and bad
//! types are reported with the key path and line. Validation ([`Config::validate`])
//! checks everything the file refers to (environment variables, key files, secret
//! lengths, algorithm names) and reports *every* problem at once, each prefixed with its
//! key path, so that `proxy --check` and start-up give the same answer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::{self, KeySource};
use crate::path::{PathPolicy, normalize};
use crate::token::TokenSource;

/// A duration written with a unit (`"500ms"`, `"5s"`, `"10m"`); a bare number or a
/// negative value is refused so that nobody has to guess the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens and how it runs.
    pub proxy: ProxyConfig,
    /// The socket.io server(s) behind the gateway.
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
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `address:port` the gateway serves on; required, because a default port would
    /// silently collide with whatever else runs on the host.
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
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The socket.io servers, `address:port`.
    pub servers: Vec<String>,
    /// Which request property keeps an Engine.IO session on one server.
    #[serde(default)]
    pub sticky: Sticky,
    /// Give up connecting to an upstream after this long (answered `504`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Interval of TCP health checks; `"0s"` disables them.
    #[serde(default = "default_health_check")]
    pub health_check: Dur,
}

/// `[upstream].sticky`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectWith {
    /// `401` with a JSON body (SPEC item 5).
    #[default]
    Http,
    /// A socket.io `CONNECT_ERROR` the official client understands (SPEC item 14).
    Socketio,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
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
    Dur(Duration::from_secs(2))
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

/// One thing wrong with the configuration, tied to the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `auth.secret_env`.
    pub key: String,
    /// Line of that key in the file, when the key is written there.
    pub line: Option<usize>,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file they were found in.
    pub file: PathBuf,
    /// All of them, in file order of discovery.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n{p}")?;
        }
        Ok(())
    }
}

/// Where each key is written in the file, so that validation problems can name the line.
#[derive(Debug, Default)]
pub struct KeyLines {
    lines: BTreeMap<String, usize>,
}

impl KeyLines {
    /// Indexes every key of `src` (best effort: an unparsable file indexes nothing).
    pub fn index(src: &str) -> Self {
        let mut lines = BTreeMap::new();
        if let Ok(doc) = toml::de::DeTable::parse(src) {
            walk_table(src, "", doc.get_ref(), &mut lines);
        }
        KeyLines { lines }
    }

    /// Line of `key` (dotted path), if written.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    /// The deepest key whose span starts at or before `offset`: the key an error is about.
    fn key_at(&self, src: &str, offset: usize) -> Option<(String, usize)> {
        let line = line_of(src, offset);
        self.lines
            .iter()
            .filter(|(_, l)| **l == line)
            .max_by_key(|(k, _)| k.len())
            .map(|(k, l)| (k.clone(), *l))
    }
}

fn walk_table(
    src: &str,
    prefix: &str,
    table: &toml::de::DeTable<'_>,
    out: &mut BTreeMap<String, usize>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(path.clone(), line_of(src, key.span().start));
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            walk_table(src, &path, inner, out);
        }
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

impl Config {
    /// Reads and parses a file; a parse problem names the key and line.
    pub fn load(file: &Path) -> Result<(Config, KeyLines), ConfigErrors> {
        let src = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read {}: {e}", file.display()),
            }],
        })?;
        Self::parse(&src).map_err(|problems| ConfigErrors {
            file: file.to_path_buf(),
            problems,
        })
    }

    /// Parses TOML text.
    pub fn parse(src: &str) -> Result<(Config, KeyLines), Vec<Problem>> {
        let lines = KeyLines::index(src);
        match toml::from_str::<Config>(src) {
            Ok(cfg) => Ok((cfg, lines)),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let message = e.message().trim().to_string();
                let (key, line) = match lines.key_at(src, offset) {
                    Some((key, line)) => (key, Some(line)),
                    None => (
                        "(file)".to_string(),
                        e.span().map(|s| line_of(src, s.start)),
                    ),
                };
                Err(vec![Problem { key, line, message }])
            }
        }
    }

    /// Checks everything the file refers to and builds the runtime [`Settings`].
    /// Returns every problem found, not only the first.
    pub fn validate(&self, lines: &KeyLines, base_dir: &Path) -> Result<Settings, Vec<Problem>> {
        let mut v = Problems {
            lines,
            list: Vec::new(),
        };

        let listen = parse_addr(&mut v, "proxy.listen", &self.proxy.listen);
        if self.proxy.threads == 0 {
            v.push("proxy.threads", "must be at least 1".into());
        }
        let metrics_listen = self
            .proxy
            .metrics_listen
            .as_deref()
            .and_then(|a| parse_addr(&mut v, "proxy.metrics_listen", a));

        let mut servers = Vec::new();
        if self.upstream.servers.is_empty() {
            v.push("upstream.servers", "at least one server is required".into());
        }
        for (i, s) in self.upstream.servers.iter().enumerate() {
            if let Some(addr) = parse_addr(&mut v, &format!("upstream.servers[{i}]"), s) {
                servers.push(addr);
            }
        }
        if self.upstream.connect_timeout.0.is_zero() {
            v.push("upstream.connect_timeout", "must be more than 0s".into());
        }

        let auth = &self.auth;
        let (algs, alg_problems) = keys::parse_algorithms(&auth.algorithms);
        for m in alg_problems {
            v.push("auth.algorithms", m);
        }
        let algorithms = (!algs.is_empty()).then_some(algs);
        let source = self.key_source(&mut v, base_dir);
        let key_store = match (algorithms.as_ref(), source) {
            (Some(algs), Some(src)) => keys::KeyStore::load(src, algs)
                .map_err(|(key, m)| v.push(&key, m))
                .ok(),
            _ => None,
        };

        if auth.max_token_bytes == 0 {
            v.push("auth.max_token_bytes", "must be more than 0".into());
        }
        let paths = PathPolicy::new(&auth.protected_paths, &auth.public_paths)
            .map_err(|(key, m)| v.push(&key, m))
            .ok();
        let mut sources = Vec::new();
        if auth.token_sources.is_empty() {
            v.push(
                "auth.token_sources",
                "at least one source is required".into(),
            );
        }
        for (i, s) in auth.token_sources.iter().enumerate() {
            match TokenSource::parse(s) {
                Ok(src) => sources.push(src),
                Err(m) => v.push(&format!("auth.token_sources[{i}]"), m),
            }
        }
        if auth.user_claim.is_empty() || auth.user_claim.split('.').any(str::is_empty) {
            v.push(
                "auth.user_claim",
                "must be a dotted claim path such as \"sub\" or \"user.username\"".into(),
            );
        }
        let user_header = header_name(&mut v, "auth.user_header", &auth.user_header);
        let mut forward = Vec::new();
        for (claim, header) in &auth.forward_claims {
            let key = format!("auth.forward_claims.{claim}");
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                v.push(&key, "claim path must not have empty segments".into());
            }
            if let Some(h) = header_name(&mut v, &key, header) {
                if Some(&h) == user_header.as_ref() {
                    v.push(&key, format!("header {h} is already auth.user_header"));
                }
                forward.push((claim.split('.').map(String::from).collect(), h));
            }
        }
        if auth
            .required_typ
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            v.push("auth.required_typ", "must not be empty when set".into());
        }
        if auth.max_lifetime.as_ref().is_some_and(|d| d.0.is_zero()) {
            v.push("auth.max_lifetime", "must be more than 0s when set".into());
        }
        let mut cors_origins = Vec::new();
        for (i, o) in auth.cors_origins.iter().enumerate() {
            match cors_origin(o) {
                Some(value) => cors_origins.push(value),
                None => v.push(
                    &format!("auth.cors_origins[{i}]"),
                    format!("{o:?} is not an origin such as \"https://app.example\" (scheme, host, optional port, nothing else)"),
                ),
            }
        }
        let assertion = self.assertion.as_ref().and_then(|a| {
            let header = header_name(&mut v, "assertion.header", &a.header);
            if header.is_some() && header == user_header {
                v.push(
                    "assertion.header",
                    format!("{} is already auth.user_header", a.header),
                );
            }
            if a.audience.trim().is_empty() {
                v.push("assertion.audience", "must name the upstream".into());
            }
            if a.ttl.0 < Duration::from_secs(1) || a.ttl.0 > Duration::from_secs(300) {
                v.push("assertion.ttl", "must be between 1s and 300s".into());
            }
            if !a.jwks_path.starts_with('/')
                || normalize(a.jwks_path.as_bytes()).ok().as_deref() != Some(a.jwks_path.as_bytes())
            {
                v.push(
                    "assertion.jwks_path",
                    format!("{:?} must be a normalized absolute path", a.jwks_path),
                );
            }
            let key_file = if a.key_file.is_absolute() {
                a.key_file.clone()
            } else {
                base_dir.join(&a.key_file)
            };
            let signer = crate::assertion::Signer::load(&key_file)
                .map_err(|m| v.push("assertion.key_file", m))
                .ok()?;
            Some(crate::assertion::Asserter::new(
                signer,
                header?,
                a.audience.clone(),
                a.issuer.clone(),
                a.ttl.0,
                a.jwks_path.clone(),
            ))
        });

        if !v.list.is_empty() {
            return Err(v.list);
        }
        match (listen, key_store, paths, user_header) {
            (Some(listen), Some(keys), Some(paths), Some(user_header)) => Ok(Settings {
                listen,
                threads: self.proxy.threads,
                metrics_listen,
                shutdown_grace: self.proxy.shutdown_grace.0,
                upstream: servers,
                sticky: self.upstream.sticky,
                health_check: self.upstream.health_check.0,
                connect_timeout: self.upstream.connect_timeout.0,
                keys,
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                leeway: auth.leeway.0,
                require_exp: auth.require_exp,
                max_token_bytes: auth.max_token_bytes,
                paths,
                token_sources: sources,
                user_claim: auth.user_claim.split('.').map(String::from).collect(),
                user_header,
                forward_claims: forward,
                strip_token: auth.strip_token,
                close_on_expiry: auth.close_on_expiry,
                verify_cache: auth.verify_cache,
                failure_limit: auth.failure_limit,
                reject_with: auth.reject_with,
                required_typ: auth.required_typ.clone(),
                max_lifetime: auth.max_lifetime.as_ref().map(|d| d.0),
                cors_origins,
                assertion,
            }),
            _ => Err(vec![Problem {
                key: "(file)".into(),
                line: None,
                message: "invalid configuration".into(),
            }]),
        }
    }

    /// Exactly one key source; `secret_env = "JWT_SECRET"` when none is written.
    fn key_source(&self, v: &mut Problems<'_>, base_dir: &Path) -> Option<KeySource> {
        if let Some(url) = &self.auth.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || reqwest::Url::parse(url).is_err()
            {
                v.push(
                    "auth.jwks_url",
                    format!("{url:?} is not an http:// or https:// URL"),
                );
                return None;
            }
        }
        let mut given = self.auth.key_sources(base_dir);
        if given.len() > 1 {
            let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
            for (key, _) in &given {
                v.push(
                    key,
                    format!(
                        "exactly one key source is allowed, found {}",
                        names.join(", ")
                    ),
                );
            }
            return None;
        }
        given.pop().map(|(_, s)| s)
    }
}

impl AuthConfig {
    /// The key sources written in `[auth]` with their keys, relative paths resolved
    /// against `base_dir`; `secret_env = "JWT_SECRET"` when none is written.
    pub fn key_sources(&self, base_dir: &Path) -> Vec<(&'static str, KeySource)> {
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        };
        let mut given = Vec::new();
        if let Some(name) = &self.secret_env {
            given.push(("auth.secret_env", KeySource::SecretEnv(name.clone())));
        }
        if let Some(p) = &self.secret_file {
            given.push(("auth.secret_file", KeySource::SecretFile(resolve(p))));
        }
        if let Some(p) = &self.public_key_file {
            given.push(("auth.public_key_file", KeySource::PublicKeyFile(resolve(p))));
        }
        if let Some(p) = &self.jwks_file {
            given.push(("auth.jwks_file", KeySource::JwksFile(resolve(p))));
        }
        if let Some(url) = &self.jwks_url {
            given.push(("auth.jwks_url", KeySource::JwksUrl(url.clone())));
        }
        if given.is_empty() {
            given.push(("auth.secret_env", KeySource::SecretEnv("JWT_SECRET".into())));
        }
        given
    }
}

struct Problems<'a> {
    lines: &'a KeyLines,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, key: &str, message: String) {
        // `auth.token_sources[1]` is written on the line of `auth.token_sources`.
        let written = key.split('[').next().unwrap_or(key);
        let mut line = self.lines.line(written);
        let mut k = written;
        while line.is_none() {
            match k.rfind('.') {
                Some(i) => {
                    k = &k[..i];
                    line = self.lines.line(k);
                }
                None => break,
            }
        }
        self.list.push(Problem {
            key: key.to_string(),
            line,
            message,
        });
    }
}

fn parse_addr(v: &mut Problems<'_>, key: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            v.push(
                key,
                format!("{text:?} is not an address:port such as \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

/// An origin exactly as browsers send it in `Origin`, or `None` when `text` is not one.
fn cors_origin(text: &str) -> Option<http::HeaderValue> {
    let url = reqwest::Url::parse(text).ok()?;
    let origin = url.origin().ascii_serialization();
    (matches!(url.scheme(), "http" | "https") && origin == text)
        .then(|| http::HeaderValue::from_str(&origin).ok())
        .flatten()
}

fn header_name(v: &mut Problems<'_>, key: &str, text: &str) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            v.push(key, format!("{text:?} is not a valid header name"));
            None
        }
    }
}

/// The validated configuration the gateway runs with: everything parsed, resolved and
/// lower-cased once at start-up, so the request path does no such work.
#[derive(Debug)]
pub struct Settings {
    /// Listening address.
    pub listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Drain time after SIGTERM.
    pub shutdown_grace: Duration,
    /// Upstream servers.
    pub upstream: Vec<SocketAddr>,
    /// Which request property picks the server when there are several.
    pub sticky: Sticky,
    /// TCP health-check interval with several servers (zero: off).
    pub health_check: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// The verification keys (reloadable for `jwks_file`).
    pub keys: keys::KeyStore,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` member.
    pub audience: Option<String>,
    /// Clock skew on `exp`/`nbf`.
    pub leeway: Duration,
    /// Whether `exp` must be present.
    pub require_exp: bool,
    /// Token size limit.
    pub max_token_bytes: usize,
    /// Protected and public paths.
    pub paths: PathPolicy,
    /// Token sources in order.
    pub token_sources: Vec<TokenSource>,
    /// Claim path of the user, split on dots.
    pub user_claim: Vec<String>,
    /// Header carrying the user upstream.
    pub user_header: http::HeaderName,
    /// Claim path -> header.
    pub forward_claims: Vec<(Vec<String>, http::HeaderName)>,
    /// Remove the token before forwarding.
    pub strip_token: bool,
    /// Close expired WebSockets.
    pub close_on_expiry: bool,
    /// Verified-token cache entries (0 = off).
    pub verify_cache: usize,
    /// Failed authentications per second per client address (0 = no limit).
    pub failure_limit: u32,
    /// How failed authentications are answered.
    pub reject_with: RejectWith,
    /// Required token `typ`.
    pub required_typ: Option<String>,
    /// Longest remaining token life accepted.
    pub max_lifetime: Option<Duration>,
    /// Origins given credentialed CORS on the gateway's own answers.
    pub cors_origins: Vec<http::HeaderValue>,
    /// The signed identity assertion, when configured.
    pub assertion: Option<crate::assertion::Asserter>,
}

impl Settings {
    /// Every identity header the gateway owns: removed from every client request.
    pub fn identity_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        std::iter::once(&self.user_header)
            .chain(self.forward_claims.iter().map(|(_, h)| h))
            .chain(self.assertion.as_ref().map(|a| a.header()))
    }
}

/// Loads and validates a file in one step, as start-up and `--check` do.
pub fn load_settings(file: &Path) -> Result<Settings, ConfigErrors> {
    let (cfg, lines) = Config::load(file)?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    cfg.validate(&lines, base).map_err(|problems| ConfigErrors {
        file: file.to_path_buf(),
        problems,
    })
}

#[cfg(test)]
mod tests {
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
        let err = Config::parse(src).err().unwrap_or_default();
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
        let (cfg, lines) = Config::parse(src).unwrap_or_else(|e| panic!("{e:?}"));
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
}
