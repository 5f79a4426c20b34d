//! Verification keys: loading them from the one configured source, pinning each key to
//! the algorithms its type can verify, and re-reading a `jwks_file` when it changes.
//!
//! The `alg` of a token never chooses the key type: every key carries the list of
//! algorithms it may verify (its family ∩ `auth.algorithms` ∩ a JWK's own `alg`), and a
//! token whose `alg` is not in that list is refused before any signature check. That is
//! what stops algorithm confusion (an HS256 token "signed" with an RSA public key).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::file_stamp::FileStamp;

mod load;
mod oidc;
mod sources;

use load::load_set;
pub use load::{KeyError, parse_jwks, read_secret};
pub use oidc::{Discovery, OidcError, discover, discovery_url, is_http_url};
pub use sources::{JwksFetcher, KeyWatcher, first_fetch};

/// Minimum length of an HMAC secret: 256 bits (RFC 8725 §3.5).
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the keys come from (exactly one per configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HS*: the secret is the value of this environment variable.
    SecretEnv(String),
    /// HS*: the secret is the content of this file.
    SecretFile(PathBuf),
    /// RS*/PS*/ES*/EdDSA: a PEM public key.
    PublicKeyFile(PathBuf),
    /// A JWK Set on disk, watched for changes.
    JwksFile(PathBuf),
    /// A JWK Set fetched over HTTP(S) by a background task.
    JwksUrl(String),
    /// An OpenID Connect issuer, as written; validation reads its discovery document
    /// and loads its `jwks_uri` as [`KeySource::JwksUrl`].
    OidcIssuer(String),
}

impl KeySource {
    /// The config key this source was written under, for error messages.
    pub fn config_key(&self) -> &'static str {
        match self {
            KeySource::SecretEnv(_) => "auth.secret_env",
            KeySource::SecretFile(_) => "auth.secret_file",
            KeySource::PublicKeyFile(_) => "auth.public_key_file",
            KeySource::JwksFile(_) => "auth.jwks_file",
            KeySource::JwksUrl(_) => "auth.jwks_url",
            KeySource::OidcIssuer(_) => "auth.oidc_issuer",
        }
    }
}

/// Parses `auth.algorithms`, refusing `none` and unknown names.
pub fn parse_algorithms(names: &[String]) -> (Vec<Algorithm>, Vec<String>) {
    let mut algs = Vec::new();
    let mut problems = Vec::new();
    if names.is_empty() {
        problems.push("at least one algorithm is required".to_string());
    }
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            problems.push("\"none\" is never accepted: unsigned tokens prove nothing".into());
        } else {
            match Algorithm::from_str(name) {
                Ok(a) if !algs.contains(&a) => algs.push(a),
                Ok(_) => problems.push(format!("{name} is listed twice")),
                Err(_) => problems.push(format!(
                    "unknown algorithm {name:?}; known: HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                )),
            }
        }
    }
    (algs, problems)
}

/// What kind of key material a key is; decides the algorithms it can ever verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A shared HMAC secret.
    Hmac,
    /// An RSA public key.
    Rsa,
    /// An EC public key on P-256.
    EcP256,
    /// An EC public key on P-384.
    EcP384,
    /// An Ed25519 public key.
    Ed25519,
}

impl KeyKind {
    /// The algorithms a key of this kind can verify.
    pub fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => &[HS256, HS384, HS512],
            KeyKind::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::EcP256 => &[ES256],
            KeyKind::EcP384 => &[ES384],
            KeyKind::Ed25519 => &[EdDSA],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "an HMAC secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// One usable key, pinned to the algorithms it may verify.
pub struct VerifyKey {
    /// The JWK `kid`, for JWKS keys.
    pub kid: Option<String>,
    /// Algorithms this key accepts: never empty.
    pub algorithms: Vec<Algorithm>,
    /// The key itself.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (an HMAC key is the secret itself).
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// The token's `kid` or `alg` matches no key.
    UnknownKey(String),
    /// The `kid` names a key whose type does not fit the token's `alg`.
    WrongFamily(String),
}

/// Source of [`KeySet::generation`] numbers.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An immutable set of keys, swapped whole on reload.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    /// Whether `kid` selects keys (JWKS); a single configured key ignores `kid`.
    by_kid: bool,
    /// Unique per loaded set: cached verifications made with another set are void.
    generation: u64,
}

impl KeySet {
    fn new(keys: Vec<VerifyKey>, by_kid: bool) -> Self {
        KeySet {
            keys,
            by_kid,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Which load of the keys this is (changes on every reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token with this `kid` and `alg` may be verified with: the one named by
    /// `kid`, or without `kid` every key that accepts `alg`.
    pub fn select<'a>(
        &'a self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<&'a VerifyKey>, SelectError> {
        if let (true, Some(kid)) = (self.by_kid, kid) {
            let key = self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| SelectError::UnknownKey("no key matches the token kid".into()))?;
            if !key.algorithms.contains(&alg) {
                return Err(SelectError::WrongFamily(format!(
                    "the key named by the token kid does not accept {alg:?}"
                )));
            }
            return Ok(vec![key]);
        }
        let keys: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        if keys.is_empty() {
            if self.by_kid {
                return Err(SelectError::UnknownKey(format!(
                    "no key accepts {alg:?} tokens"
                )));
            }
            return Err(SelectError::WrongFamily(format!(
                "the configured key does not accept {alg:?} tokens"
            )));
        }
        Ok(keys)
    }
}

/// The live keys: read lock-free on every request, replaced whole when a watched file changes.
#[derive(Debug)]
pub struct KeyStore {
    source: KeySource,
    allowed: Vec<Algorithm>,
    current: ArcSwap<KeySet>,
    /// Last seen state of a watched file; only the reload task touches it.
    seen: Mutex<Option<FileStamp>>,
    /// `jwks_url`: whether a key set was ever fetched (until then: 503, not 401).
    fetched: std::sync::atomic::AtomicBool,
    /// `jwks_url`: woken by a token with an unknown `kid` (the fetcher rate-limits).
    refetch: tokio::sync::Notify,
}

impl KeyStore {
    /// Loads the keys once; the error names the config key at fault.
    pub fn load(
        source: KeySource,
        allowed: &[Algorithm],
    ) -> Result<Self, (&'static str, KeyError)> {
        let seen = match &source {
            KeySource::JwksFile(p) => FileStamp::of(p),
            _ => None,
        };
        let set = load_set(&source, allowed).map_err(|e| (source.config_key(), e))?;
        Ok(KeyStore {
            source,
            allowed: allowed.to_vec(),
            current: ArcSwap::from_pointee(set),
            seen: Mutex::new(seen),
            fetched: std::sync::atomic::AtomicBool::new(false),
            refetch: tokio::sync::Notify::new(),
        })
    }

    /// The URL to fetch keys from, if the source is `jwks_url`.
    pub fn url(&self) -> Option<&str> {
        match &self.source {
            KeySource::JwksUrl(u) => Some(u),
            _ => None,
        }
    }

    /// False only for `jwks_url` before the first successful fetch.
    pub fn available(&self) -> bool {
        self.url().is_none() || self.fetched.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Installs a freshly fetched key set.
    pub fn install(&self, set: KeySet) {
        self.current.store(Arc::new(set));
        self.fetched
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The algorithms keys are checked against.
    pub fn allowed(&self) -> &[Algorithm] {
        &self.allowed
    }

    /// Asks the fetcher for a fresh set (a token named an unknown `kid`). Cheap: no I/O.
    pub fn request_refetch(&self) {
        if self.url().is_some() {
            self.refetch.notify_one();
        }
    }

    /// Waits for [`KeyStore::request_refetch`].
    pub async fn refetch_requested(&self) {
        self.refetch.notified().await;
    }

    /// The current key set.
    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// The file to watch, if the source is reloadable.
    pub fn watched_file(&self) -> Option<&Path> {
        match &self.source {
            KeySource::JwksFile(p) => Some(p),
            _ => None,
        }
    }

    /// Re-reads a watched file if it changed since last time (rewritten in place or
    /// renamed over). A broken file keeps the last good keys. Returns what happened, for
    /// logging: `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<usize, KeyError>> {
        let path = self.watched_file()?;
        let now = FileStamp::of(path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        match load_set(&self.source, &self.allowed) {
            Ok(set) => {
                let n = set.len();
                self.current.store(Arc::new(set));
                Some(Ok(n))
            }
            Err(e) => Some(Err(e)),
        }
    }
}
