//! The key sources that change while the gateway runs (docs/configuration.md): a
//! `jwks_file` re-read when it changes, and a `jwks_url` fetched at start, refreshed at
//! its `Cache-Control` max-age and re-fetched on an unknown `kid`. Both are Pingora
//! background services; a failure keeps the last good keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{KeyError, KeySet, KeyStore, parse_jwks};

/// Re-reads a `jwks_file` when it changes (polls its metadata).
#[derive(Debug)]
pub struct KeyWatcher {
    /// The keys it reloads.
    pub keys: Arc<KeyStore>,
    /// How often the file's metadata is looked at.
    pub every: Duration,
}

#[async_trait]
impl BackgroundService for KeyWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        let file = self.keys.watched_file().map(|p| p.display().to_string());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            match self.keys.reload_if_changed() {
                None => {}
                Some(Ok(n)) => tracing::info!(file = file.as_deref(), keys = n, "key set reloaded"),
                Some(Err(e)) => tracing::error!(
                    file = file.as_deref(),
                    "key set not reloaded, keeping the last good keys: {e}"
                ),
            }
        }
    }
}

/// Fetches a `jwks_url` at start, refreshes it at the server's `Cache-Control` max-age
/// (bounded), and re-fetches when a token names an unknown `kid`, at most once per
/// `MIN_REFETCH` (5 s). A failed fetch keeps the last good keys. `jku`/`x5u` headers of
/// tokens are never followed: only this configured URL is fetched.
#[derive(Debug)]
pub struct JwksFetcher {
    /// The keys it installs.
    pub keys: Arc<KeyStore>,
    /// How long to connect to the key server (`upstream.connect_timeout`).
    pub connect_timeout: Duration,
    /// When to fetch first, as [`first_fetch`] said.
    pub first_wait: Duration,
}

/// Shortest time between two fetches triggered by unknown `kid`s.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Refresh bounds: the server's max-age is clamped into them; without one, the upper.
const REFRESH_MIN: Duration = Duration::from_secs(30);
const REFRESH_MAX: Duration = Duration::from_secs(300);
/// Retry delay after a failed fetch.
const RETRY: Duration = Duration::from_secs(2);
/// A JWK Set larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a fetch brought no keys.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("fetch failed: {0}")]
    Request(reqwest::Error),
    #[error("the server answered {0}")]
    Status(reqwest::StatusCode),
    #[error("reading the body: {0}")]
    Body(reqwest::Error),
    #[error("the JWK Set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Keys(#[from] KeyError),
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    keys: &KeyStore,
) -> Result<(KeySet, Duration), FetchError> {
    let resp = client.get(url).send().await.map_err(FetchError::Request)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let refresh = max_age(resp.headers())
        .unwrap_or(REFRESH_MAX)
        .clamp(REFRESH_MIN, REFRESH_MAX);
    let body = resp.bytes().await.map_err(FetchError::Body)?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(FetchError::TooLarge);
    }
    let set = parse_jwks(&body, keys.allowed())?;
    Ok((set, refresh))
}

/// The HTTP client the fetches use: `connect_timeout` to connect (the upstream's), 5 s
/// for a whole fetch, at most 3 redirects.
fn client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
}

/// The first fetch of a `jwks_url`, before the gateway accepts connections
/// (docs/request-handling.md, "Decisions where the spec is silent"): so that the first requests are judged with keys, not refused
/// `503`. One retry after a failure, then the gateway starts either way (and the
/// fetcher keeps trying). Returns when the keys should be fetched again.
pub async fn first_fetch(keys: &KeyStore, connect_timeout: Duration) -> Duration {
    let Some(url) = keys.url() else {
        return RETRY;
    };
    let client = match client(connect_timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("auth.jwks_url: cannot build an HTTP client: {e}");
            return RETRY;
        }
    };
    for attempt in 1..=2 {
        match fetch(&client, url, keys).await {
            Ok((set, refresh)) => {
                tracing::info!(url, keys = set.len(), refresh = ?refresh, "JWK Set fetched");
                keys.install(set);
                return refresh;
            }
            Err(e) => tracing::error!(url, attempt, "JWK Set not fetched before start: {e}"),
        }
    }
    RETRY
}

#[async_trait]
impl BackgroundService for JwksFetcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let keys = &self.keys;
        let Some(url) = keys.url() else { return };
        let client = match client(self.connect_timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("auth.jwks_url: cannot build an HTTP client: {e}");
                return;
            }
        };
        let mut last: Option<Instant> = Some(Instant::now());
        let mut wait = self.first_wait;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = keys.refetch_requested() => {
                    let since = last.map_or(MIN_REFETCH, |t| t.elapsed());
                    if since < MIN_REFETCH {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(MIN_REFETCH - since) => {}
                        }
                    }
                }
            }
            last = Some(Instant::now());
            match fetch(&client, url, keys).await {
                Ok((set, refresh)) => {
                    tracing::info!(url, keys = set.len(), refresh = ?refresh, "JWK Set fetched");
                    keys.install(set);
                    wait = refresh;
                }
                Err(e) => {
                    tracing::error!(url, "JWK Set not fetched, keeping the last good keys: {e}");
                    wait = RETRY;
                }
            }
        }
    }
}
