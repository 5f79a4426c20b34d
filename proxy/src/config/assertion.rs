//! `[assertion]` (docs/configuration.md): the optional signed identity assertion the
//! gateway adds to every authenticated request; the schema with its defaults, and its
//! checks, which build the runtime [`Asserter`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::Problems;
use super::values::{Dur, header_name, resolve};
use crate::assertion::{Asserter, Signer};
use crate::path::normalize;

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

impl AssertionConfig {
    /// Checks `[assertion]` and loads its key, every problem into `v`. `user_header` is
    /// `auth.user_header` as written, which the assertion's header must not be.
    pub(super) fn validate(
        &self,
        user_header: Option<&http::HeaderName>,
        v: &mut Problems<'_>,
        base_dir: &Path,
    ) -> Option<Asserter> {
        let a = self;
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
        let signer = Signer::load(&resolve(base_dir, &a.key_file))
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
}
