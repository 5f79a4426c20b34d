//! The socket.io namespace `/`, trusting the identity header set by the gateway.
//!
//! The gateway removes any client-sent copy of that header and sets it only after
//! verifying a token, so its presence is the proof of authentication. A connection
//! without it did not come through the gateway and is refused.

use axum::Router;
use axum::http::HeaderName;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::ConnectHandler;

use std::sync::Arc;

use crate::DemoSettings;
use crate::assertion::AssertionVerifier;

/// Why a connection was refused; the message reaches the client's `connect_error`.
#[derive(Debug, thiserror::Error)]
#[error("not authenticated: connect through the gateway")]
pub struct NotAuthenticated;

/// The user the gateway vouched for, stored on the socket.
#[derive(Debug, Clone)]
struct User(String);

fn user_of(s: &SocketRef, header: &HeaderName) -> Option<String> {
    s.req_parts()
        .headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(String::from)
}

/// Routes `/socket.io/` (Engine.IO's path) to the socket.io service with namespace `/`;
/// with `assertion`, every request must first carry the gateway's signed assertion.
pub fn router<S: Clone + Send + Sync + 'static>(
    settings: &DemoSettings,
    assertion: Option<Arc<AssertionVerifier>>,
) -> Router<S> {
    let (svc, io) = SocketIo::builder()
        .ping_interval(settings.ping_interval)
        .ping_timeout(
            settings
                .ping_interval
                .max(std::time::Duration::from_secs(1)),
        )
        .build_svc();
    let header = HeaderName::from_bytes(settings.user_header.as_bytes())
        .unwrap_or(HeaderName::from_static("x-auth-user"));

    // Connect middleware: no identity header, no connection.
    let require_user = async move |s: SocketRef| -> Result<(), NotAuthenticated> {
        let user = user_of(&s, &header).ok_or(NotAuthenticated)?;
        s.extensions.insert(User(user));
        Ok(())
    };
    io.ns("/", on_connect.with(require_user));
    let router = Router::new().route_service("/socket.io/", svc);
    match assertion {
        Some(verifier) => router.layer(axum::middleware::from_fn_with_state(
            verifier,
            crate::assertion::require_assertion,
        )),
        None => router,
    }
}

async fn on_connect(s: SocketRef) {
    let user = s.extensions.get::<User>().map(|u| u.0).unwrap_or_default();
    tracing::info!(user = %user, sid = %s.id, "socket connected");
    if let Err(e) = s.emit("welcome", &json!({ "user": user })) {
        tracing::warn!("welcome not sent: {e}");
    }
    s.on("echo", async |ack: AckSender, Data(data): Data<Value>| {
        if let Err(e) = ack.send(&data) {
            tracing::debug!("echo ack not sent: {e}");
        }
    });
}
