//! Live sessions (refresh and revocation tests): tokens with a `jti`, WebSocket-only
//! socket.io sessions with their sealed `sid`, and whether a socket is still open or
//! how it closed.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::eio::{Recv, Ws};
use crate::tokens::{claims, hs256, now};

/// A token of `user` valid for `ttl` seconds, with `jti`.
pub fn token(user: &str, ttl: u64, jti: &str) -> String {
    let mut c = claims(user);
    c["exp"] = json!(now() + ttl);
    c["jti"] = json!(jti);
    hs256(&c)
}

/// A WebSocket-only session of `token` through the gateway at `addr`, joined; with the
/// sealed `sid` it was given.
pub async fn open(addr: SocketAddr, token: &str) -> (Ws, String) {
    let mut ws = Ws::connect(addr, &format!("token={token}"), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let open = ws.expect().await;
    let packet: Value = serde_json::from_str(open.trim_start_matches('0'))
        .unwrap_or_else(|e| panic!("{e}: {open}"));
    let sid = packet["sid"].as_str().unwrap_or_default().to_string();
    assert!(!sid.is_empty(), "{open}");
    assert!(ws.try_join().await.is_some(), "not joined: {:?}", ws.ended);
    (ws, sid)
}

/// Whether the socket is still open: an echo comes back within a second.
pub async fn alive(ws: &mut Ws, id: u32) -> bool {
    ws.send(&format!("42{id}[\"echo\",{id}]")).await;
    let want = format!("43{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(r) = tokio::time::timeout_at(deadline, ws.recv()).await {
        match r {
            Recv::Text(t) if t.starts_with(&want) => return true,
            Recv::Text(_) => {}
            Recv::Closed => return false,
        }
    }
    false
}

/// Waits up to `limit` for the socket to close; returns how it closed.
pub async fn closed_within(ws: &mut Ws, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.recv()).await {
            Ok(Recv::Closed) => return Some(ws.ended.clone().unwrap_or_default()),
            Ok(Recv::Text(_)) => {}
            Err(_) => return None,
        }
    }
}
