//! `[cluster]` (docs/clusters.md, "Refresh and revocation across gateways"): what the
//! gateways of a cluster share through one Redis. Every gateway reads the stream
//! `<key_prefix>revocations` from the start (at start-up and after each reconnect),
//! then blocks on it and on `<key_prefix>refreshes` with one `XREAD BLOCK`; it keeps
//! `<key_prefix>session:<hash>` (30 s TTL) for every session with a WebSocket open at it,
//! so that a gateway answering a refresh for a session held elsewhere knows whether to
//! pass it on (`XADD <key_prefix>refreshes`) or answer `404`.
//!
//! While Redis is unreachable the gateway serves with what it knows, logs the outage
//! once, shows it in `gateway_cluster_connected`, retries every second and catches up
//! on reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisResult, Value};

use crate::config::ClusterSettings;
use crate::gateway::{Gateway, now_secs};
use crate::live_sockets::{LiveSockets, LiveToken, Refreshed, SessionKey};
use crate::metrics::Metrics;
use crate::refresh::Elsewhere;
use crate::revocation::{Entry, Revocations};

/// How long a session key lives without being written again.
const SESSION_TTL_SECS: u64 = 30;
/// How often every open session's key is written again.
const SWEEP: Duration = Duration::from_secs(10);
/// How long one `XREAD` blocks.
const BLOCK_MS: u64 = 1000;
/// Entries read at once.
const BATCH: usize = 1000;
/// Between two attempts to reach Redis.
const RETRY: Duration = Duration::from_secs(1);
/// Connect and answer time limits (an `XREAD` answers within `BLOCK_MS`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The refreshes stream is trimmed to about this many entries.
const REFRESHES_MAXLEN: usize = 10_000;

/// The cluster as the request path sees it: the Redis connection for commands, while
/// connected.
#[derive(Debug)]
pub struct Cluster {
    client: redis::Client,
    revocations_key: String,
    refreshes_key: String,
    session_prefix: String,
    /// The connection commands go through; `None` while Redis is unreachable.
    commands: Mutex<Option<MultiplexedConnection>>,
    connected: AtomicBool,
}

impl Cluster {
    /// The cluster of `[cluster]`.
    pub fn new(settings: &ClusterSettings) -> Self {
        let p = &settings.key_prefix;
        Cluster {
            client: settings.client.clone(),
            revocations_key: format!("{p}revocations"),
            refreshes_key: format!("{p}refreshes"),
            session_prefix: format!("{p}session:"),
            commands: Mutex::new(None),
            connected: AtomicBool::new(false),
        }
    }

    fn session_key(&self, s: &SessionKey) -> String {
        format!("{}{}", self.session_prefix, s.hex())
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Passes a refresh on to the gateway holding its session: `true` when one does
    /// (`200`), `false` when no gateway holds it or Redis is unreachable (`404`).
    pub async fn refresh_elsewhere(&self, e: &Elsewhere) -> bool {
        let Some(mut conn) = self.connection() else {
            return false;
        };
        let key = self.session_key(&e.session);
        let exists: RedisResult<bool> = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await;
        if !matches!(exists, Ok(true)) {
            return false;
        }
        let num = |v: Option<f64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        let added: RedisResult<Value> = redis::cmd("XADD")
            .arg(&self.refreshes_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(REFRESHES_MAXLEN)
            .arg("*")
            .arg("session")
            .arg(e.session.hex())
            .arg("user")
            .arg(e.token.user.as_bytes())
            .arg("exp")
            .arg(num(e.exp))
            .arg("deadline")
            .arg(num(e.deadline))
            .arg("jti")
            .arg(e.token.jti.as_deref().unwrap_or(""))
            .arg("iat")
            .arg(num(e.token.iat))
            .query_async(&mut conn)
            .await;
        added.is_ok()
    }
}

/// The background service that keeps a gateway in its cluster.
#[derive(Debug)]
pub struct ClusterService {
    cluster: Arc<Cluster>,
    live: Arc<LiveSockets>,
    revocations: Arc<Revocations>,
    metrics: Metrics,
}

/// Adds the cluster service, with `[cluster]`.
pub fn add_service(server: &mut pingora::server::Server, gw: &Arc<Gateway>) {
    let Some(cluster) = gw.cluster().cloned() else {
        return;
    };
    gw.live().queue_fresh_sessions();
    let service = ClusterService {
        cluster,
        live: gw.live().clone(),
        revocations: gw.revocations().clone(),
        metrics: gw.metrics().clone(),
    };
    server.add_service(pingora::services::background::background_service(
        "cluster", service,
    ));
}

#[async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut logged_down = false;
        loop {
            let session = async {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let client = &self.cluster.client;
                let reader = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let commands = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                self.serve(reader, commands, &mut logged_down).await
            };
            let err = tokio::select! {
                _ = shutdown.changed() => return,
                r = session => r.err(),
            };
            self.set_down();
            if !logged_down {
                let why = err.map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(
                    "cluster Redis unreachable; serving with what this gateway knows until it is back: {why}"
                );
                logged_down = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

impl ClusterService {
    fn set_down(&self) {
        *self
            .cluster
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.cluster.connected.store(false, Ordering::Release);
        self.metrics.cluster_connected.set(0);
    }

    /// One connected stretch: catch up, then follow the streams until an error.
    async fn serve(
        &self,
        mut reader: MultiplexedConnection,
        commands: MultiplexedConnection,
        logged_down: &mut bool,
    ) -> RedisResult<()> {
        // The refreshes from now on; the revocations from the start.
        let last: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.cluster.refreshes_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut reader)
            .await?;
        let mut refresh_id = last
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |i| i.id.clone());
        let mut revocation_id = "0-0".to_string();
        let mut caught_up = false;
        *self
            .cluster
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(commands.clone());
        let keeper = tokio::spawn(keep_sessions(
            self.cluster.clone(),
            self.live.clone(),
            commands,
        ));
        let _keeper = AbortOnDrop(keeper);
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(BATCH);
            if caught_up {
                cmd.arg("BLOCK").arg(BLOCK_MS);
            }
            cmd.arg("STREAMS")
                .arg(&self.cluster.revocations_key)
                .arg(&self.cluster.refreshes_key)
                .arg(&revocation_id)
                .arg(&refresh_id);
            let reply: Option<StreamReadReply> = cmd.query_async(&mut reader).await?;
            let mut revoked = 0;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                if stream.key == self.cluster.revocations_key {
                    revoked = stream.ids.len();
                    if let Some(last) = stream.ids.last() {
                        revocation_id.clone_from(&last.id);
                    }
                    self.revoke(stream.ids);
                } else if stream.key == self.cluster.refreshes_key {
                    if let Some(last) = stream.ids.last() {
                        refresh_id.clone_from(&last.id);
                    }
                    for entry in &stream.ids {
                        self.refresh(entry);
                    }
                }
            }
            if !caught_up && revoked < BATCH {
                caught_up = true;
                self.cluster.connected.store(true, Ordering::Release);
                self.metrics.cluster_connected.set(1);
                tracing::info!(
                    revocations = self.revocations.len(),
                    "cluster Redis connected; revocations in force read"
                );
                *logged_down = false;
            }
        }
    }

    /// Applies revocation entries from the stream and closes the sockets they match.
    fn revoke(&self, ids: Vec<StreamId>) {
        if ids.is_empty() {
            return;
        }
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            let added = id
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<f64>().ok())
                .map_or_else(now_secs, |ms| ms / 1000.0);
            let text = field(&id.map, "revoke");
            match text.as_deref().map(|t| Entry::parse(t.as_bytes())) {
                Some(Ok(entry)) => entries.push((entry, added)),
                Some(Err(e)) => tracing::error!(id = id.id, "revocation entry ignored: {e}"),
                None => tracing::error!(id = id.id, "revocation entry ignored: no revoke field"),
            }
        }
        self.metrics
            .revocations_cluster
            .inc_by(entries.len() as u64);
        self.revocations.add_stream(entries, now_secs());
        self.metrics
            .revocation_entries
            .set(self.revocations.len() as i64);
        let closed = self.live.close_revoked(&self.revocations);
        crate::revocation_file::count_closes(&self.metrics, closed);
        if closed > 0 {
            tracing::info!(websockets_closed = closed, "revoked by the cluster stream");
        }
    }

    /// A refresh another gateway received for a session that may be open here.
    fn refresh(&self, entry: &StreamId) {
        let num = |name: &str| field(&entry.map, name).and_then(|v| v.parse::<f64>().ok());
        let Some(session) = field(&entry.map, "session").and_then(|h| SessionKey::from_hex(&h))
        else {
            return;
        };
        let Some(user) =
            field(&entry.map, "user").and_then(|u| http::HeaderValue::from_str(&u).ok())
        else {
            return;
        };
        let jti = field(&entry.map, "jti").filter(|j| !j.is_empty());
        let token = LiveToken {
            session: Some(session),
            user,
            jti: jti.map(|j| Arc::from(j.as_str())),
            iat: num("iat"),
        };
        // Judged again by this gateway's own list: an entry may have reached it
        // before the refresh did, or the gateway that passed it on may not know it.
        if self
            .live
            .refresh(&session, &token, num("deadline"), &self.revocations)
            == Refreshed::Revoked
        {
            tracing::info!(
                "a refresh passed on by another gateway was refused: its token is revoked here"
            );
        }
    }
}

/// A stream entry's field as text.
fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
}

/// Writes the key of every session open here: at once for a new one, all of them
/// every [`SWEEP`].
async fn keep_sessions(
    cluster: Arc<Cluster>,
    live: Arc<LiveSockets>,
    mut conn: MultiplexedConnection,
) {
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let sessions = tokio::select! {
            _ = sweep.tick() => {
                live.take_fresh();
                live.sessions()
            }
            _ = live.opened().notified() => live.take_fresh(),
        };
        if sessions.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for s in &sessions {
            pipe.cmd("SET")
                .arg(cluster.session_key(s))
                .arg(1)
                .arg("EX")
                .arg(SESSION_TTL_SECS)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!("cluster session keys not written: {e}");
        }
    }
}

/// Aborts a task when dropped (the session keeper of a connection that ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
