//! `auth.oidc_issuer` (docs/configuration.md, "Key sources"): OpenID Connect Discovery
//! 1.0. The issuer's provider metadata is read once, at `--check` and at start-up,
//! from `<issuer>/.well-known/openid-configuration` (§4); its `jwks_uri` then becomes
//! the key source, fetched and refreshed exactly like `auth.jwks_url`.

use std::time::Duration;

use serde::Deserialize;

/// The path appended to the issuer (OpenID Connect Discovery 1.0 §4).
const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// A discovery document larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// How long reading the document may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the gateway takes from an issuer's discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The document's `issuer`: identical to the configured one (checked).
    pub issuer: String,
    /// Where the issuer's JWK Set is.
    pub jwks_uri: String,
    /// `id_token_signing_alg_values_supported`, when the document lists it.
    pub algorithms: Option<Vec<String>>,
}

/// The fields read from the document; every other one is ignored.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Option<Vec<String>>,
}

/// Why the discovery document gave no key source.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer is not an `http(s)://` URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    NotUrl(String),
    /// The request could not be made or answered.
    #[error("cannot read {url}: {error}")]
    Request {
        /// The discovery URL.
        url: String,
        /// Why.
        error: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The discovery URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The document is too large.
    #[error("{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// The discovery URL.
        url: String,
    },
    /// Not a discovery document.
    #[error("{url}: not an OpenID Provider configuration: {error}")]
    NotMetadata {
        /// The discovery URL.
        url: String,
        /// Why.
        error: serde_json::Error,
    },
    /// The document names another issuer (Discovery §4.3: it must be identical).
    #[error(
        "{url} names the issuer {found:?}, not {configured:?}; the two must be identical (OpenID Connect Discovery 1.0 §4.3)"
    )]
    OtherIssuer {
        /// The discovery URL.
        url: String,
        /// The document's `issuer`.
        found: String,
        /// `auth.oidc_issuer`.
        configured: String,
    },
    /// `jwks_uri` is not an `http(s)://` URL.
    #[error("{url}: jwks_uri {jwks_uri:?} is not an http:// or https:// URL")]
    BadJwksUri {
        /// The discovery URL.
        url: String,
        /// The document's `jwks_uri`.
        jwks_uri: String,
    },
    /// No thread or runtime for the request.
    #[error("cannot run the request: {0}")]
    Runtime(std::io::Error),
}

/// An `http://` or `https://` URL.
pub fn is_http_url(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://"))
        && reqwest::Url::parse(text).is_ok()
}

/// Where the discovery document of `issuer` is: any terminating `/` removed, then
/// `/.well-known/openid-configuration` appended (Discovery §4.1), so that issuers with
/// a path (Keycloak's `.../realms/x`) and with a trailing slash (Auth0's) both work.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}{WELL_KNOWN}", issuer.trim_end_matches('/'))
}

/// Reads and checks the discovery document of `issuer`. Blocking: it runs on a thread
/// of its own, so it may be called from anywhere (validation runs before and outside
/// the server's runtime).
pub fn discover(issuer: &str) -> Result<Discovery, OidcError> {
    if !is_http_url(issuer) {
        return Err(OidcError::NotUrl(issuer.to_string()));
    }
    let url = discovery_url(issuer);
    let body = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(OidcError::Runtime)?
                .block_on(fetch(&url))
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    let meta: Metadata = serde_json::from_slice(&body).map_err(|error| OidcError::NotMetadata {
        url: url.clone(),
        error,
    })?;
    if meta.issuer != issuer {
        return Err(OidcError::OtherIssuer {
            url,
            found: meta.issuer,
            configured: issuer.to_string(),
        });
    }
    if !is_http_url(&meta.jwks_uri) {
        return Err(OidcError::BadJwksUri {
            url,
            jwks_uri: meta.jwks_uri,
        });
    }
    Ok(Discovery {
        issuer: meta.issuer,
        jwks_uri: meta.jwks_uri,
        algorithms: meta.id_token_signing_alg_values_supported,
    })
}

async fn fetch(url: &str) -> Result<bytes::Bytes, OidcError> {
    let request = |error| OidcError::Request {
        url: url.to_string(),
        error,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(request)?;
    let resp = client.get(url).send().await.map_err(request)?;
    if !resp.status().is_success() {
        return Err(OidcError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let body = resp.bytes().await.map_err(request)?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(OidcError::TooLarge {
            url: url.to_string(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_under_the_issuer_with_one_slash() {
        assert_eq!(
            discovery_url("https://kc.example/realms/x"),
            "https://kc.example/realms/x/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://tenant.auth0.com/"),
            "https://tenant.auth0.com/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://accounts.google.com"),
            "https://accounts.google.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn an_issuer_that_is_no_url_is_refused_before_any_request() {
        assert!(matches!(discover("idp.example"), Err(OidcError::NotUrl(_))));
        assert!(matches!(
            discover("ftp://idp.example"),
            Err(OidcError::NotUrl(_))
        ));
    }
}
