//! Where `[auth]`'s keys come from: the one key source (docs/configuration.md, "Key
//! sources"), which one is written, the default when none is, and `oidc_issuer`
//! resolved through its discovery document into the `jwks_uri` it names; and the key
//! Engine.IO session ids are sealed with (docs/request-handling.md "Engine.IO sessions").

use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::Algorithm;

use super::AuthConfig;
use super::parse::Problems;
use super::values::resolve;
use crate::keys::{self, Discovery, KeySource};
use crate::sealed_sid::SidSeal;

/// The key source, resolved: `oidc_issuer` has become its `jwks_uri`, with the
/// discovery document it came from.
#[derive(Debug)]
pub(super) struct Resolved {
    /// What the keys are loaded from.
    pub(super) source: KeySource,
    /// The issuer's discovery document, with `oidc_issuer`.
    pub(super) discovery: Option<Discovery>,
}

/// What is wrong with the key source, saying so when it is the default one (no source
/// written in `[auth]`), which the user may not know they configured.
pub(super) fn key_problem(auth: &AuthConfig, e: &keys::KeyError) -> String {
    if auth.key_sources_written() {
        return e.to_string();
    }
    format!(
        "{e}: [auth] names no key source, so the default secret_env = \"JWT_SECRET\" applies; \
         set that variable, or name one key source: secret_env, secret_file, public_key_file, \
         jwks_file, jwks_url or oidc_issuer"
    )
}

/// Exactly one key source; `secret_env = "JWT_SECRET"` when none is written;
/// `oidc_issuer` read from the issuer and checked against `algorithms`.
pub(super) fn key_source(
    auth: &AuthConfig,
    algs: &[Algorithm],
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> Option<Resolved> {
    if let Some(url) = &auth.jwks_url {
        if !keys::is_http_url(url) {
            v.push(
                "auth.jwks_url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
            return None;
        }
    }
    let mut given = auth.key_sources(base_dir);
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
    match given.pop()? {
        (_, KeySource::OidcIssuer(issuer)) => {
            let discovery = keys::discover(&issuer)
                .map_err(|e| v.push("auth.oidc_issuer", e.to_string()))
                .ok()?;
            check_algorithms(&discovery, algs, v);
            Some(Resolved {
                source: KeySource::JwksUrl(discovery.jwks_uri.clone()),
                discovery: Some(discovery),
            })
        }
        (_, source) => Some(Resolved {
            source,
            discovery: None,
        }),
    }
}

/// `auth.algorithms` must share an algorithm with those the issuer signs ID tokens
/// with (`id_token_signing_alg_values_supported`, when the document lists them):
/// otherwise no token of that issuer could ever pass.
fn check_algorithms(discovery: &Discovery, algs: &[Algorithm], v: &mut Problems<'_>) {
    let Some(offered) = &discovery.algorithms else {
        return;
    };
    let shared = offered
        .iter()
        .filter_map(|name| Algorithm::from_str(name).ok())
        .any(|a| algs.contains(&a));
    if !shared && !algs.is_empty() {
        let listed: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
        v.push(
            "auth.algorithms",
            format!(
                "none of {} is used by {} (its id_token_signing_alg_values_supported: {})",
                listed.join(", "),
                discovery.issuer,
                offered.join(", ")
            ),
        );
    }
}

/// The key Engine.IO session ids are sealed with: `auth.session_key_env` or
/// `auth.session_key_file` (>= 32 bytes, as HMAC secrets), else a random one; and
/// whether it came from the config.
pub(super) fn session_key(
    auth: &AuthConfig,
    v: &mut Problems<'_>,
    base_dir: &Path,
) -> (Option<SidSeal>, bool) {
    let (key, source) = match (&auth.session_key_env, &auth.session_key_file) {
        (Some(_), Some(_)) => {
            for key in ["auth.session_key_env", "auth.session_key_file"] {
                v.push(
                    key,
                    "give the session key once: session_key_env or session_key_file".into(),
                );
            }
            return (None, true);
        }
        (Some(name), None) => ("auth.session_key_env", KeySource::SecretEnv(name.clone())),
        (None, Some(p)) => (
            "auth.session_key_file",
            KeySource::SecretFile(resolve(base_dir, p)),
        ),
        (None, None) => {
            let seal = SidSeal::random()
                .map_err(|e| v.push("auth.session_key_env", e.to_string()))
                .ok();
            return (seal, false);
        }
    };
    let seal = keys::read_secret(&source)
        .map_err(|e| e.to_string())
        .and_then(|secret| SidSeal::new(&secret).map_err(|e| e.to_string()))
        .map_err(|m| v.push(key, m))
        .ok();
    (seal, true)
}

impl AuthConfig {
    /// Whether `[auth]` names a key source (else `secret_env = "JWT_SECRET"` applies).
    pub fn key_sources_written(&self) -> bool {
        self.secret_env.is_some()
            || self.secret_file.is_some()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
            || self.oidc_issuer.is_some()
    }

    /// The key sources written in `[auth]` with their keys, relative paths resolved
    /// against `base_dir`; `secret_env = "JWT_SECRET"` when none is written.
    pub fn key_sources(&self, base_dir: &Path) -> Vec<(&'static str, KeySource)> {
        let resolve = |p: &PathBuf| resolve(base_dir, p);
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
        if let Some(url) = &self.oidc_issuer {
            given.push(("auth.oidc_issuer", KeySource::OidcIssuer(url.clone())));
        }
        if given.is_empty() {
            given.push(("auth.secret_env", KeySource::SecretEnv("JWT_SECRET".into())));
        }
        given
    }
}
