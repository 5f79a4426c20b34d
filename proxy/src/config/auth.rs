//! `[auth]` (docs/configuration.md): how tokens are found, verified and turned into
//! identity headers; the schema with its defaults, its checks, and the runtime
//! [`AuthSettings`]. Where the keys come from (the key sources and the session key) is
//! in `key_source.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::key_source::{key_problem, key_source, session_key};
use super::parse::Problems;
use super::values::{Dur, header_name};
use crate::keys::{self, KeyStore};
use crate::path::PathPolicy;
use crate::sealed_sid::SidSeal;
use crate::token::TokenSource;
use crate::verify::{Rules, media_type};

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
    /// Where a client `POST`s a fresh token for its Engine.IO session (`?sid=`), so
    /// that its open WebSockets live on to the new `exp` instead of reconnecting
    /// (docs/websockets.md, "Refresh and revocation"). Answered by the gateway.
    #[serde(default = "default_refresh_path")]
    pub refresh_path: String,
    /// A JSON array of revocation entries, re-read when it changes: matching tokens
    /// are refused and matching open WebSockets closed (a broken file keeps the last
    /// good list).
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        // An empty table yields every documented default.
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [auth] table is valid"))
    }
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
fn default_refresh_path() -> String {
    "/socket.io/refresh".into()
}
fn default_user_header() -> String {
    "x-auth-user".into()
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
    /// The refresh endpoint's path, normalized.
    pub refresh_path: Vec<u8>,
    /// The revocation file, resolved against the config's directory.
    pub revocation_file: Option<PathBuf>,
}

/// A dotted claim path, split.
fn claim_path(path: &str) -> Vec<String> {
    path.split('.').map(String::from).collect()
}

impl AuthConfig {
    /// Checks `[auth]` and loads its keys, every problem into `v`.
    pub(super) fn validate(&self, v: &mut Problems<'_>, base_dir: &Path) -> Option<AuthSettings> {
        let auth = self;
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
        let token_sources = auth.token_sources(v);
        if auth.user_claim.is_empty() || auth.user_claim.split('.').any(str::is_empty) {
            v.push(
                "auth.user_claim",
                "must be a dotted claim path such as \"sub\" or \"user.username\"".into(),
            );
        }
        let user_header = header_name(v, "auth.user_header", &auth.user_header);
        let forward_claims = auth.forward_claims(v, user_header.as_ref());
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
        let cors_origins = auth.cors_origins(v);
        let refresh_path = auth.refresh_path(v);
        let revocation_file = auth.revocation_file(v, base_dir);
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
            refresh_path: refresh_path?,
            revocation_file,
        })
    }

    /// `auth.refresh_path`: an absolute path, already in normal form.
    fn refresh_path(&self, v: &mut Problems<'_>) -> Option<Vec<u8>> {
        let p = self.refresh_path.as_bytes();
        match crate::path::normalize(p) {
            Ok(n) if p.starts_with(b"/") && *n == *p && !p.contains(&b'?') => Some(p.to_vec()),
            _ => {
                let m = format!(
                    "{:?} is not a plain absolute path such as \"/socket.io/refresh\"",
                    self.refresh_path
                );
                v.push("auth.refresh_path", m);
                None
            }
        }
    }

    /// `auth.revocation_file`: resolved, and readable as a list of entries now.
    fn revocation_file(&self, v: &mut Problems<'_>, base_dir: &Path) -> Option<PathBuf> {
        let file = super::values::resolve(base_dir, self.revocation_file.as_ref()?);
        if let Err(e) = crate::revocation_file::read(&file) {
            v.push("auth.revocation_file", format!("{}: {e}", file.display()));
        }
        Some(file)
    }

    /// `auth.token_sources`, parsed: at least one, each a known kind.
    fn token_sources(&self, v: &mut Problems<'_>) -> Vec<TokenSource> {
        if self.token_sources.is_empty() {
            v.push(
                "auth.token_sources",
                "at least one source is required".into(),
            );
        }
        let mut token_sources = Vec::new();
        for (i, s) in self.token_sources.iter().enumerate() {
            match TokenSource::parse(s) {
                Ok(src) => token_sources.push(src),
                Err(m) => v.push(&format!("auth.token_sources[{i}]"), m),
            }
        }
        token_sources
    }

    /// `auth.forward_claims`: claim paths split, header names parsed, none of them the
    /// user's header.
    fn forward_claims(
        &self,
        v: &mut Problems<'_>,
        user_header: Option<&http::HeaderName>,
    ) -> Vec<(Vec<String>, http::HeaderName)> {
        let mut forward_claims = Vec::new();
        for (claim, header) in &self.forward_claims {
            let key = format!("auth.forward_claims.{claim}");
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                v.push(&key, "claim path must not have empty segments".into());
            }
            if let Some(h) = header_name(v, &key, header) {
                if Some(&h) == user_header {
                    v.push(&key, format!("header {h} is already auth.user_header"));
                }
                forward_claims.push((claim_path(claim), h));
            }
        }
        forward_claims
    }

    /// `auth.cors_origins`, each exactly as browsers send it in `Origin`.
    fn cors_origins(&self, v: &mut Problems<'_>) -> Vec<http::HeaderValue> {
        let mut cors_origins = Vec::new();
        for (i, o) in self.cors_origins.iter().enumerate() {
            match cors_origin(o) {
                Some(value) => cors_origins.push(value),
                None => v.push(
                    &format!("auth.cors_origins[{i}]"),
                    format!("{o:?} is not an origin such as \"https://app.example\" (scheme, host, optional port, nothing else)"),
                ),
            }
        }
        cors_origins
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
