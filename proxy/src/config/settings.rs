//! Validation (docs/configuration.md): one function per section turns what was
//! parsed into the runtime [`Settings`], reporting *every* problem with its key path.
//! Everything is parsed, resolved and lower-cased here, once at start-up, so the
//! request path does no such work.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::key_source::{key_problem, key_source};
use super::parse::{ConfigErrors, KeyLines, Problem, Problems};
use super::{
    AssertionConfig, AuthConfig, Config, ProxyConfig, ProxyTlsConfig, RejectWith, Sticky,
    UpstreamConfig,
};
use crate::assertion::{Asserter, Signer};
use crate::certs::{CertError, CertFiles, CertPair};
use crate::keys::{self, KeyStore};
use crate::path::{PathPolicy, normalize};
use crate::sealed_sid::SidSeal;
use crate::token::TokenSource;
use crate::upstream_tls::UpstreamTls;
use crate::verify::{Rules, media_type};

/// The validated configuration the gateway runs with, by section.
#[derive(Debug)]
pub struct Settings {
    /// `[proxy]`
    pub proxy: ProxySettings,
    /// `[upstream]`
    pub upstream: UpstreamSettings,
    /// `[auth]`
    pub auth: AuthSettings,
    /// `[assertion]`, when configured.
    pub assertion: Option<Asserter>,
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
    /// How long an upstream may take to answer, and between reads of its answer.
    pub read_timeout: Duration,
    /// How long an idle keep-alive upstream connection is kept.
    pub pool_idle: Duration,
    /// TLS to the servers (`upstream.tls`), with its roots and name.
    pub tls: Option<UpstreamTls>,
}

/// `[auth]`, validated.
#[derive(Debug)]
pub struct AuthSettings {
    /// The verification keys (reloaded for `jwks_file`, fetched for `jwks_url`, by the
    /// background services that share them).
    pub keys: Arc<KeyStore>,
    /// What a token must satisfy besides its signature, as the verifier uses it.
    pub rules: Rules,
    /// Protected and public paths.
    pub paths: PathPolicy,
    /// Token sources in order.
    pub token_sources: Vec<TokenSource>,
    /// Header carrying the user upstream.
    pub user_header: http::HeaderName,
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
    /// Origins given credentialed CORS on the gateway's own answers.
    pub cors_origins: Vec<http::HeaderValue>,
    /// Seals the Engine.IO session ids handed to clients (docs/request-handling.md "Engine.IO sessions").
    pub sid_seal: SidSeal,
    /// Whether its key comes from the config (shared, lasting) rather than being
    /// random for this process.
    pub sid_key_configured: bool,
}

impl Settings {
    /// Every identity header the gateway owns: removed from every client request.
    pub fn identity_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        std::iter::once(&self.auth.user_header)
            .chain(self.auth.rules.forward_claims.iter().map(|(_, h)| h))
            .chain(self.assertion.as_ref().map(|a| a.header()))
    }
}

impl Config {
    /// Checks everything the file refers to and builds the runtime [`Settings`].
    /// Returns every problem found, not only the first.
    pub fn validate(&self, lines: &KeyLines, base_dir: &Path) -> Result<Settings, Vec<Problem>> {
        let mut v = Problems::new(lines);
        let proxy = validate_proxy(&self.proxy, &mut v, base_dir);
        let upstream = validate_upstream(&self.upstream, &mut v, base_dir);
        let auth = validate_auth(&self.auth, &mut v, base_dir);
        // Compared with the name as written, also when `[auth]` has problems of its own.
        let user_header = http::HeaderName::from_bytes(self.auth.user_header.as_bytes()).ok();
        let assertion = self
            .assertion
            .as_ref()
            .and_then(|a| validate_assertion(a, user_header.as_ref(), &mut v, base_dir));
        let problems = v.into_list();
        match (proxy, upstream, auth) {
            (Some(proxy), Some(upstream), Some(auth)) if problems.is_empty() => Ok(Settings {
                proxy,
                upstream,
                auth,
                assertion,
            }),
            _ if !problems.is_empty() => Err(problems),
            _ => Err(vec![Problem {
                key: "(file)".into(),
                line: None,
                message: "invalid configuration".into(),
            }]),
        }
    }
}

fn validate_proxy(p: &ProxyConfig, v: &mut Problems<'_>, base_dir: &Path) -> Option<ProxySettings> {
    let listen = if p.listen.is_empty() {
        v.push(
            "proxy.listen",
            "is required: the address:port the gateway serves on".into(),
        );
        None
    } else {
        parse_addr(v, "proxy.listen", &p.listen)
    };
    if p.threads == 0 {
        v.push("proxy.threads", "must be at least 1".into());
    }
    let metrics_listen = match p.metrics_listen.as_deref() {
        Some(a) => Some(parse_addr(v, "proxy.metrics_listen", a)?),
        None => None,
    };
    let tls = match &p.tls {
        Some(t) => Some(validate_proxy_tls(t, v, base_dir)?),
        None => None,
    };
    Some(ProxySettings {
        listen: listen?,
        threads: p.threads,
        metrics_listen,
        shutdown_grace: p.shutdown_grace.0,
        tls,
    })
}

/// `[proxy.tls]`: the pair read and checked as every reload will check it.
fn validate_proxy_tls(
    t: &ProxyTlsConfig,
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> Option<ProxyTls> {
    let (files, pair) = CertFiles::load(base_dir.join(&t.cert_file), base_dir.join(&t.key_file));
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

/// The `[proxy.tls]` key a certificate problem is reported under.
fn cert_error_key(e: &CertError, key_file: &Path) -> &'static str {
    match e {
        CertError::Mismatch { .. } => "proxy.tls",
        CertError::Key { .. } => "proxy.tls.key_file",
        CertError::Read { path, .. } if path == key_file => "proxy.tls.key_file",
        _ => "proxy.tls.cert_file",
    }
}

fn validate_upstream(
    u: &UpstreamConfig,
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> Option<UpstreamSettings> {
    if u.servers.is_empty() {
        v.push("upstream.servers", "at least one server is required".into());
    }
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        if let Some(addr) = parse_addr(v, &format!("upstream.servers[{i}]"), s) {
            servers.push(addr);
        }
    }
    for (d, key) in [
        (u.connect_timeout.0, "upstream.connect_timeout"),
        (u.read_timeout.0, "upstream.read_timeout"),
    ] {
        if d.is_zero() {
            v.push(key, "must be more than 0s".into());
        }
    }
    if u.retries > MAX_RETRIES {
        v.push("upstream.retries", format!("must be at most {MAX_RETRIES}"));
    }
    let tls = if u.tls {
        let ca_file = u.ca_file.as_ref().map(|f| base_dir.join(f));
        UpstreamTls::new(ca_file.as_deref(), u.sni.as_deref())
            .map_err(|e| v.push(e.key(), e.to_string()))
            .ok()
    } else {
        for (set, key) in [
            (u.ca_file.is_some(), "upstream.ca_file"),
            (u.sni.is_some(), "upstream.sni"),
        ] {
            if set {
                v.push(key, "has no effect without upstream.tls = true".into());
            }
        }
        None
    };
    Some(UpstreamSettings {
        servers,
        sticky: u.sticky,
        health_check: u.health_check.0,
        connect_timeout: u.connect_timeout.0,
        retries: u.retries,
        read_timeout: u.read_timeout.0,
        pool_idle: u.pool_idle.0,
        tls,
    })
}

/// A dotted claim path, split.
fn claim_path(path: &str) -> Vec<String> {
    path.split('.').map(String::from).collect()
}

fn validate_auth(auth: &AuthConfig, v: &mut Problems<'_>, base_dir: &Path) -> Option<AuthSettings> {
    let (algs, alg_problems) = keys::parse_algorithms(&auth.algorithms);
    for m in alg_problems {
        v.push("auth.algorithms", m);
    }
    let resolved = key_source(auth, &algs, v, base_dir);
    let discovered_issuer = resolved
        .as_ref()
        .and_then(|r| r.discovery.as_ref())
        .map(|d| d.issuer.clone());
    let keys = match ((!algs.is_empty()).then_some(&algs), resolved) {
        (Some(algs), Some(r)) => KeyStore::load(r.source, algs)
            .map_err(|(key, e)| v.push(key, key_problem(auth, &e)))
            .ok(),
        _ => None,
    };
    if auth.max_token_bytes == 0 {
        v.push("auth.max_token_bytes", "must be more than 0".into());
    }
    let paths = PathPolicy::new(&auth.protected_paths, &auth.public_paths)
        .map_err(|e| v.push(&e.key(), e.to_string()))
        .ok();
    if auth.token_sources.is_empty() {
        v.push(
            "auth.token_sources",
            "at least one source is required".into(),
        );
    }
    let mut token_sources = Vec::new();
    for (i, s) in auth.token_sources.iter().enumerate() {
        match TokenSource::parse(s) {
            Ok(src) => token_sources.push(src),
            Err(m) => v.push(&format!("auth.token_sources[{i}]"), m),
        }
    }
    if auth.user_claim.is_empty() || auth.user_claim.split('.').any(str::is_empty) {
        v.push(
            "auth.user_claim",
            "must be a dotted claim path such as \"sub\" or \"user.username\"".into(),
        );
    }
    let user_header = header_name(v, "auth.user_header", &auth.user_header);
    let mut forward_claims = Vec::new();
    for (claim, header) in &auth.forward_claims {
        let key = format!("auth.forward_claims.{claim}");
        if claim.is_empty() || claim.split('.').any(str::is_empty) {
            v.push(&key, "claim path must not have empty segments".into());
        }
        if let Some(h) = header_name(v, &key, header) {
            if Some(&h) == user_header.as_ref() {
                v.push(&key, format!("header {h} is already auth.user_header"));
            }
            forward_claims.push((claim_path(claim), h));
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
    let (sid_seal, sid_key_configured) = session_key(auth, v, base_dir);
    let rules = Rules {
        // With `oidc_issuer`, tokens must come from that issuer unless `issuer` says.
        issuer: auth.issuer.clone().or(discovered_issuer),
        audience: auth.audience.clone(),
        leeway: auth.leeway.0.as_secs_f64(),
        require_exp: auth.require_exp,
        max_token_bytes: auth.max_token_bytes,
        user_claim: claim_path(&auth.user_claim),
        forward_claims,
        required_typ: auth.required_typ.as_deref().map(media_type),
        max_lifetime: auth.max_lifetime.as_ref().map(|d| d.0.as_secs_f64()),
    };
    Some(AuthSettings {
        keys: Arc::new(keys?),
        rules,
        paths: paths?,
        token_sources,
        user_header: user_header?,
        strip_token: auth.strip_token,
        close_on_expiry: auth.close_on_expiry,
        verify_cache: auth.verify_cache,
        failure_limit: auth.failure_limit,
        reject_with: auth.reject_with,
        cors_origins,
        sid_seal: sid_seal?,
        sid_key_configured,
    })
}

/// The key Engine.IO session ids are sealed with: `auth.session_key_env` or
/// `auth.session_key_file` (>= 32 bytes, as HMAC secrets), else a random one; and
/// whether it came from the config.
fn session_key(
    auth: &AuthConfig,
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> (Option<SidSeal>, bool) {
    let source = match (&auth.session_key_env, &auth.session_key_file) {
        (Some(_), Some(_)) => {
            for key in ["auth.session_key_env", "auth.session_key_file"] {
                v.push(
                    key,
                    "give the session key once: session_key_env or session_key_file".into(),
                );
            }
            return (None, true);
        }
        (Some(name), None) => (
            "auth.session_key_env",
            crate::keys::KeySource::SecretEnv(name.clone()),
        ),
        (None, Some(p)) => (
            "auth.session_key_file",
            crate::keys::KeySource::SecretFile(if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }),
        ),
        (None, None) => {
            let seal = SidSeal::random()
                .map_err(|e| v.push("auth.session_key_env", e.to_string()))
                .ok();
            return (seal, false);
        }
    };
    let (key, source) = source;
    let seal = crate::keys::read_secret(&source)
        .map_err(|e| e.to_string())
        .and_then(|secret| SidSeal::new(&secret).map_err(|e| e.to_string()))
        .map_err(|m| v.push(key, m))
        .ok();
    (seal, true)
}

fn validate_assertion(
    a: &AssertionConfig,
    user_header: Option<&http::HeaderName>,
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> Option<Asserter> {
    let header = header_name(v, "assertion.header", &a.header);
    if header.is_some() && header.as_ref() == user_header {
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
    let signer = Signer::load(&key_file)
        .map_err(|m| v.push("assertion.key_file", m))
        .ok()?;
    Some(Asserter::new(
        signer,
        header?,
        a.audience.clone(),
        a.issuer.clone(),
        a.ttl.0,
        a.jwks_path.clone(),
    ))
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

/// Loads and validates a file in one step, as start-up and `--check` do.
/// Every problem is reported: those of parsing and those of validating what parsed.
pub fn load_settings(file: &Path) -> Result<Settings, ConfigErrors> {
    let (cfg, lines, mut problems) = Config::load(file)?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match cfg.validate(&lines, base) {
        Ok(settings) if problems.is_empty() => return Ok(settings),
        Ok(_) => {}
        // A key already reported as mistyped was left out; its default is not news.
        Err(more) => {
            let reported: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
            problems.extend(more.into_iter().filter(|p| !reported.contains(&p.key)));
        }
    }
    // In the order of the file, as a reader goes through it; problems that no line
    // holds come last, in the order found.
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    Err(ConfigErrors {
        file: file.to_path_buf(),
        problems,
    })
}
