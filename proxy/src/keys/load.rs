//! Loading keys from their source (docs/configuration.md, the key sources): an HMAC
//! secret, a PEM public key, or a JWK Set, each key pinned to the algorithms it may
//! verify. Every failure is a [`KeyError`] that says what is wrong with which file or
//! variable, never what the secret is.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{KeyKind, KeySet, KeySource, MIN_SECRET_BYTES, VerifyKey};

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Something wrong inside a file.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: Box<KeyError>,
    },
    /// `secret_env` names a variable that is not set.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// A secret was asked of a source that holds a public key.
    #[error("{0} holds no shared secret")]
    NoSharedSecret(&'static str),
    /// An HMAC secret shorter than [`MIN_SECRET_BYTES`] (RFC 8725 3.5).
    #[error("the secret in {what} is {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    ShortSecret {
        /// Where it came from (a variable or file name, never the secret).
        what: String,
        /// Its length.
        len: usize,
    },
    /// The secret can not be used as an HMAC key.
    #[error("{key}: unusable secret: {error}")]
    UnusableSecret {
        /// The config key of the source.
        key: &'static str,
        /// Why.
        error: jsonwebtoken::errors::Error,
    },
    /// A single key that can not verify every listed algorithm.
    #[error("{kind} cannot verify {algorithms} (listed in auth.algorithms)")]
    Misfit {
        /// The key's kind.
        kind: &'static str,
        /// The algorithms it can not verify.
        algorithms: String,
    },
    /// Not PEM.
    #[error("not a PEM file: {0}")]
    NotPem(pem::PemError),
    /// A PEM public key of another type.
    #[error("unsupported public key type (use RSA, EC P-256/P-384 or Ed25519)")]
    UnsupportedPublicKey,
    /// A PEM block that is not a public key.
    #[error(
        "expected a \"PUBLIC KEY\" PEM block, found {0:?} (never configure a private key here)"
    )]
    NotPublicKey(String),
    /// The public key does not decode.
    #[error("cannot read the public key: {0}")]
    BadPublicKey(jsonwebtoken::errors::Error),
    /// Not a JWK Set.
    #[error("not a JWK Set: {0}")]
    NotJwks(serde_json::Error),
    /// A JWK Set without a usable key.
    #[error("no key in the set can verify any of auth.algorithms")]
    NoUsableJwk,
    /// A JWK on another curve.
    #[error("unsupported curve")]
    UnsupportedCurve,
    /// A JWK of another type.
    #[error("unsupported key type")]
    UnsupportedKeyType,
    /// A JWK naming an unknown `alg`.
    #[error("unsupported alg {0:?}")]
    UnsupportedAlg(String),
    /// A JWK that fits none of the allowed algorithms.
    #[error("{0} fits none of auth.algorithms")]
    JwkFitsNone(&'static str),
    /// A JWK that does not decode.
    #[error("unusable key: {0}")]
    UnusableJwk(jsonwebtoken::errors::Error),
    /// An `oct` JWK shorter than [`MIN_SECRET_BYTES`].
    #[error("oct key is {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    ShortOctKey(usize),
}

impl KeyError {
    fn in_file(path: &Path, error: KeyError) -> Self {
        KeyError::InFile {
            path: path.to_path_buf(),
            error: Box::new(error),
        }
    }
}

pub(super) fn load_set(source: &KeySource, allowed: &[Algorithm]) -> Result<KeySet, KeyError> {
    match source {
        KeySource::SecretEnv(_) | KeySource::SecretFile(_) => {
            single(hmac_key(read_secret(source)?, source)?, allowed)
        }
        KeySource::PublicKeyFile(path) => {
            let pem_bytes = read(path)?;
            let (kind, key) = pem_key(&pem_bytes).map_err(|e| KeyError::in_file(path, e))?;
            single((kind, key), allowed)
        }
        KeySource::JwksFile(path) => {
            parse_jwks(&read(path)?, allowed).map_err(|e| KeyError::in_file(path, e))
        }
        // Nothing until the first fetch succeeds (requests get 503 keys_unavailable).
        KeySource::JwksUrl(_) => Ok(KeySet::new(Vec::new(), true)),
        // Validation resolves it to its `jwks_uri` first; nothing to read here.
        KeySource::OidcIssuer(_) => Ok(KeySet::new(Vec::new(), true)),
    }
}

/// Parses a JWK Set, keeping the keys that fit `allowed` (the others are logged).
pub fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, KeyError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(KeyError::NotJwks)?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        match jwk_key(jwk, allowed) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                index = i,
                kid = jwk.common.key_id.as_deref().unwrap_or("-"),
                "skipping JWK: {e}"
            ),
        }
    }
    if keys.is_empty() {
        return Err(KeyError::NoUsableJwk);
    }
    Ok(KeySet::new(keys, true))
}

/// The HMAC secret of a `secret_env` or `secret_file` source, checked for length.
/// upstream-demo mints its tokens with the same bytes the gateway verifies with.
pub fn read_secret(source: &KeySource) -> Result<Vec<u8>, KeyError> {
    let (bytes, what) = match source {
        KeySource::SecretEnv(name) => {
            let value = std::env::var_os(name).ok_or_else(|| KeyError::EnvUnset(name.clone()))?;
            (
                value.into_encoded_bytes(),
                format!("environment variable {name}"),
            )
        }
        KeySource::SecretFile(path) => {
            let mut bytes = read(path)?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            (bytes, path.display().to_string())
        }
        other => return Err(KeyError::NoSharedSecret(other.config_key())),
    };
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret {
            what,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Unreadable {
        path: path.to_path_buf(),
        error,
    })
}

fn hmac_key(secret: Vec<u8>, source: &KeySource) -> Result<(KeyKind, DecodingKey), KeyError> {
    let key = DecodingKey::from_secret(&secret).map_err(|error| KeyError::UnusableSecret {
        key: source.config_key(),
        error,
    })?;
    Ok((KeyKind::Hmac, key))
}

/// A single configured key: every listed algorithm must fit it, so a list like
/// `["RS256", "HS256"]` with one RSA key is refused instead of half-working.
fn single((kind, key): (KeyKind, DecodingKey), allowed: &[Algorithm]) -> Result<KeySet, KeyError> {
    let misfits: Vec<String> = allowed
        .iter()
        .filter(|a| !kind.algorithms().contains(a))
        .map(|a| format!("{a:?}"))
        .collect();
    if !misfits.is_empty() {
        return Err(KeyError::Misfit {
            kind: kind.describe(),
            algorithms: misfits.join(", "),
        });
    }
    Ok(KeySet::new(
        vec![VerifyKey {
            kid: None,
            algorithms: allowed.to_vec(),
            key,
        }],
        false,
    ))
}

const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads a PEM public key and tells its kind from the algorithm OID it declares.
fn pem_key(bytes: &[u8]) -> Result<(KeyKind, DecodingKey), KeyError> {
    let block = pem::parse(bytes).map_err(KeyError::NotPem)?;
    let der = block.contents();
    let kind = match block.tag() {
        "RSA PUBLIC KEY" => KeyKind::Rsa,
        "PUBLIC KEY" => {
            if contains(der, OID_RSA) {
                KeyKind::Rsa
            } else if contains(der, OID_EC) && contains(der, OID_P256) {
                KeyKind::EcP256
            } else if contains(der, OID_EC) && contains(der, OID_P384) {
                KeyKind::EcP384
            } else if contains(der, OID_ED25519) {
                KeyKind::Ed25519
            } else {
                return Err(KeyError::UnsupportedPublicKey);
            }
        }
        other => {
            return Err(KeyError::NotPublicKey(other.to_string()));
        }
    };
    let key = match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_pem(bytes),
        KeyKind::EcP256 | KeyKind::EcP384 => DecodingKey::from_ec_pem(bytes),
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(bytes),
        KeyKind::Hmac => unreachable!("PEM files never hold HMAC secrets"),
    }
    .map_err(KeyError::BadPublicKey)?;
    Ok((kind, key))
}

/// Turns one JWK into a pinned key; `Ok(None)` for keys not meant for signatures.
fn jwk_key(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Option<VerifyKey>, KeyError> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err(KeyError::UnsupportedCurve),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return Err(KeyError::UnsupportedCurve),
        },
        AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        _ => return Err(KeyError::UnsupportedKeyType),
    };
    let declared = match &jwk.common.key_algorithm {
        Some(ka) => {
            let name = serde_json::to_value(ka)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            Some(Algorithm::from_str(&name).map_err(|_| KeyError::UnsupportedAlg(name))?)
        }
        None => None,
    };
    let algorithms: Vec<Algorithm> = kind
        .algorithms()
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algorithms.is_empty() {
        return Err(KeyError::JwkFitsNone(kind.describe()));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(KeyError::UnusableJwk)?;
    if kind == KeyKind::Hmac {
        let len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        if len < MIN_SECRET_BYTES {
            return Err(KeyError::ShortOctKey(len));
        }
    }
    Ok(Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    }))
}
