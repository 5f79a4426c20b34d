//! What the real gateway binary writes to its log at `debug` and `trace` (never a `sid`,
//! never a message body), and that it does not accept connections before it can verify
//! tokens (keys from a slow `jwks_url` are loaded before the listener opens).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tests::eio::{Polling, Ws};
use tests::http1;
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tokens::{self, claims, private_key, sign, valid};

/// The default test gateway at `level`, refusals as HTTP answers.
fn config(upstream: std::net::SocketAddr, level: &str) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream).rust_log(level);
    cfg.auth.push_str("reject_with = \"http\"\n");
    cfg
}

/// A polling session and a WebSocket-only session with `marker` in their messages,
/// through a gateway logging at `level`; then the log must hold neither the sids the
/// client was handed nor any message content.
async fn no_sid_and_no_body_in_the_log_at(level: &str) {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&config(demo.addr, level)).await;
    let marker = format!("marker-7f3a-{level}");

    let polling = Polling::handshake(gw.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake: {} {}", r.status, r.text()));
    assert_eq!(polling.join().await, json!({ "user": "alice" }));
    let r = polling
        .post(&[&format!("421[\"echo\",\"{marker}\"]")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        polling.poll_until("431").await,
        format!("431[\"{marker}\"]")
    );

    let mut ws = Ws::connect(gw.addr, &format!("token={}", valid("bob")), &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    let open = ws.expect().await;
    let ws_sid = serde_json::from_str::<Value>(open.strip_prefix('0').unwrap_or(&open))
        .ok()
        .and_then(|v| v["sid"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("not an open packet: {open}"));
    assert_eq!(ws.try_join().await, Some(json!({ "user": "bob" })));
    let ws_marker = format!("{marker}-ws");
    assert_eq!(ws.echo(1, &json!(ws_marker)).await, json!(ws_marker));
    drop(ws);

    // Everything before this request is in the log once its path is.
    let flush = "/socket.io/nothing-after-this?EIO=4&transport=polling";
    let _ = http1::get(gw.addr, flush, &[]).await;
    gw.proc_.wait_for_line("nothing-after-this").await;
    let logs = gw.logs();
    let leaks: Vec<String> = [
        ("the polling sid", polling.sid.as_str()),
        ("the WebSocket sid", ws_sid.as_str()),
        ("an open packet's \"sid\"", "\"sid\""),
        ("an escaped open packet's \"sid\"", r#"\"sid\""#),
        ("the welcome event", "welcome"),
        ("the echoed marker", marker.as_str()),
    ]
    .into_iter()
    .filter_map(|(what, secret)| {
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        lines.first().map(|first| {
            format!(
                "{what} ({secret}) in {} lines, first: {first:?}",
                lines.len()
            )
        })
    })
    .collect();
    assert!(
        leaks.is_empty(),
        "the {level} log carries:\n{}",
        leaks.join("\n")
    );
}

#[tokio::test]
async fn the_debug_log_carries_no_sid_and_no_message_body() {
    no_sid_and_no_body_in_the_log_at("debug").await;
}

#[tokio::test]
async fn the_trace_log_carries_no_sid_and_no_message_body() {
    no_sid_and_no_body_in_the_log_at("trace").await;
}

/// A JWKS server whose first answer takes `delay`; later ones are immediate.
async fn slow_jwks_server(body: String, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let first = Arc::new(AtomicBool::new(true));
    let app = Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            let first = first.clone();
            async move {
                if first.swap(false, Ordering::SeqCst) {
                    tokio::time::sleep(delay).await;
                }
                ([(header::CACHE_CONTROL, "max-age=3600")], body).into_response()
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn the_first_request_a_jwks_url_gateway_accepts_is_verified() {
    let jwks = slow_jwks_server(
        tokens::jwks(&[("rsa", Algorithm::RS256, "k1")]),
        Duration::from_millis(1500),
    )
    .await;
    let up = Recorder::start().await;
    let mut cfg = GatewayConfig::hs256(up.addr).auth(&format!(
        "algorithms = [\"RS256\"]\njwks_url = \"http://{jwks}/.well-known/jwks.json\"\nissuer = \"upstream-demo\"\naudience = \"socket.io\"\nleeway = \"0s\"\n"
    ));
    cfg.auth.push_str("reject_with = \"http\"\n");
    let token = sign(
        Algorithm::RS256,
        &private_key("rsa"),
        Some("k1"),
        &claims("ann"),
    );
    // Returns as soon as the port accepts a TCP connection.
    let gw = Gateway::start(&cfg).await;
    let r = http1::get(
        gw.addr,
        &format!("/socket.io/?EIO=4&transport=polling&token={token}"),
        &[],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "the first request after the port opened: {}",
        r.text()
    );
    assert_eq!(up.last().one("x-auth-user"), Some("ann"));
}
