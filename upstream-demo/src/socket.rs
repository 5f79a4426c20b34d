//! The socket.io namespace `/`, trusting the identity header set by the gateway.
//!
//! The gateway removes any client-sent copy of that header and sets it only after
//! verifying a token, so its presence is the proof of authentication. A connection
//! without it did not come through the gateway and is refused.
//!
//! Events: `echo` (acknowledged with its data), `broadcast` `{ text }` (to every socket
//! of every instance, with the sender's name), `whisper` `{ to, text }` (to every socket
//! of user `to`, through the room `user:<name>` each socket joins), and `presence`
//! (acknowledged with the users online). With `demo.redis_url`, socket.io's Redis
//! adapter carries broadcasts, rooms and presence across the instances of a cluster
//! (docs/clusters.md); without it, one process serves them.

use axum::Router;
use axum::http::HeaderName;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::operators::BroadcastOperators;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::cluster::ResilientDriver;

use std::sync::Arc;

use crate::DemoSettings;
use crate::assertion::AssertionVerifier;

/// Why a connection was refused; the message reaches the client's `connect_error`.
#[derive(Debug, thiserror::Error)]
#[error("not authenticated: connect through the gateway")]
pub struct NotAuthenticated;

/// Why the socket.io service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketSetupError {
    /// The Redis adapter could not start (`demo.redis_url`).
    #[error("demo.redis_url: {0}")]
    Redis(#[from] redis::RedisError),
    /// The namespace could not join the cluster.
    #[error("demo.redis_url: the namespace could not subscribe: {0}")]
    Namespace(String),
}

/// The user the gateway vouched for, stored on the socket.
#[derive(Debug, Clone)]
struct User(String);

/// Longest `broadcast` or `whisper` text relayed, in characters.
const MAX_TEXT: usize = 2000;

/// The room of every socket of one user.
fn user_room(user: &str) -> String {
    format!("user:{user}")
}

fn user_of<A: Adapter>(s: &SocketRef<A>, header: &HeaderName) -> Option<String> {
    s.req_parts()
        .headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(String::from)
}

/// Routes `/socket.io/` (Engine.IO's path) to the socket.io service with namespace `/`;
/// with `assertion`, every request must first carry the gateway's signed assertion.
pub async fn router<S: Clone + Send + Sync + 'static>(
    settings: &DemoSettings,
    assertion: Option<Arc<AssertionVerifier>>,
) -> Result<Router<S>, SocketSetupError> {
    let builder = SocketIo::builder()
        .ping_interval(settings.ping_interval)
        .ping_timeout(
            settings
                .ping_interval
                .max(std::time::Duration::from_secs(1)),
        )
        .with_state(UserHeader(
            HeaderName::from_bytes(settings.user_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-auth-user")),
        ));
    let router = match &settings.redis_url {
        None => {
            let (svc, io) = builder.build_svc();
            io.ns("/", on_connect.with(require_user));
            Router::new().route_service("/socket.io/", svc)
        }
        Some(url) => {
            // The redis driver receives the adapter's messages as RESP3 pushes.
            let url = if url.contains("protocol=") {
                url.clone()
            } else if url.contains('?') {
                format!("{url}&protocol=resp3")
            } else {
                format!("{url}?protocol=resp3")
            };
            let client = redis::Client::open(url)?;
            let driver = ResilientDriver::connect(client).await?;
            let adapter = RedisAdapterCtr::new_with_driver(driver, RedisAdapterConfig::default());
            let (svc, io) = builder
                .with_adapter::<CustomRedisAdapter<_, ResilientDriver>>(adapter)
                .build_svc();
            io.ns("/", on_connect.with(require_user))
                .await
                .map_err(|e| SocketSetupError::Namespace(e.to_string()))?;
            Router::new().route_service("/socket.io/", svc)
        }
    };
    Ok(match assertion {
        Some(verifier) => router.layer(axum::middleware::from_fn_with_state(
            verifier,
            crate::assertion::require_assertion,
        )),
        None => router,
    })
}

/// The header the gateway names the user in (`auth.user_header`).
#[derive(Debug, Clone)]
struct UserHeader(HeaderName);

/// Connect middleware: no identity header, no connection.
async fn require_user<A: Adapter>(
    s: SocketRef<A>,
    State(UserHeader(header)): State<UserHeader>,
) -> Result<(), NotAuthenticated> {
    let user = user_of(&s, &header).ok_or(NotAuthenticated)?;
    s.extensions.insert(User(user));
    Ok(())
}

/// `broadcast` payload.
#[derive(Debug, Deserialize)]
struct Broadcast {
    text: String,
}

/// `whisper` payload.
#[derive(Debug, Deserialize)]
struct Whisper {
    to: String,
    text: String,
}

/// Sends `{ from, text }` (the text cut at [`MAX_TEXT`]) as `event` to `to`, on every
/// instance; a failure (Redis away) is logged, the local sockets keep working.
async fn relay<A: Adapter>(to: BroadcastOperators<A>, event: &'static str, from: &str, text: &str) {
    let text: String = text.chars().take(MAX_TEXT).collect();
    if let Err(e) = to.emit(event, &json!({ "from": from, "text": text })).await {
        tracing::warn!("{event} not delivered to the cluster: {e}");
    }
}

async fn on_connect<A: Adapter>(s: SocketRef<A>) {
    let user = s.extensions.get::<User>().map(|u| u.0).unwrap_or_default();
    tracing::info!(user = %user, sid = %s.id, "socket connected");
    s.join(user_room(&user));
    if let Err(e) = s.emit("welcome", &json!({ "user": user })) {
        tracing::warn!("welcome not sent: {e}");
    }
    s.on(
        "echo",
        async |ack: AckSender<A>, Data(data): Data<Value>| {
            if let Err(e) = ack.send(&data) {
                tracing::debug!("echo ack not sent: {e}");
            }
        },
    );
    let from = user.clone();
    s.on(
        "broadcast",
        async move |io: SocketIo<A>, Data(msg): Data<Broadcast>| {
            relay(io.broadcast(), "broadcast", &from, &msg.text).await;
        },
    );
    let from = user.clone();
    s.on(
        "whisper",
        async move |io: SocketIo<A>, Data(msg): Data<Whisper>| {
            relay(io.to(user_room(&msg.to)), "whisper", &from, &msg.text).await;
        },
    );
    s.on("presence", async |io: SocketIo<A>, ack: AckSender<A>| {
        let users: Vec<String> = match io.rooms().await {
            Ok(rooms) => {
                let mut users: Vec<String> = rooms
                    .iter()
                    .filter_map(|r| r.strip_prefix("user:").map(String::from))
                    .collect();
                users.sort();
                users.dedup();
                users
            }
            Err(e) => {
                tracing::warn!("presence: the cluster did not answer: {e}");
                Vec::new()
            }
        };
        if let Err(e) = ack.send(&users) {
            tracing::debug!("presence ack not sent: {e}");
        }
    });
}
