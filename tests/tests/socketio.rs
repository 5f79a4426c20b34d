//! The Engine.IO/socket.io protocol through the real gateway in front of the real
//! upstream-demo: polling, WebSocket-only, the polling-to-WebSocket upgrade, `welcome`,
//! `echo` acks, and `close_on_expiry` on active and idle connections.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tests::eio::{Polling, Recv, Ws};
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::tokens::{claims, hs256, valid};

async fn stack(ping: &str) -> (Demo, Gateway) {
    let demo = Demo::start(ping).await;
    let gw = Gateway::start(&GatewayConfig::hs256(demo.addr)).await;
    (demo, gw)
}

#[tokio::test]
async fn polling_session_gets_welcome_and_echo_through_the_gateway() {
    let (_demo, gw) = stack("25s").await;
    let token = valid("alice");
    let s = Polling::handshake(gw.addr, &format!("token={token}"), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake refused: {} {}", r.status, r.text()));
    assert!(
        s.open["upgrades"].as_array().is_some_and(|u| !u.is_empty()),
        "{}",
        s.open
    );
    assert_eq!(s.join().await, json!({ "user": "alice" }));
    let r = s.post(&[r#"421["echo",{"n":1,"s":"hé"}]"#]).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.poll_until("431").await, r#"431[{"n":1,"s":"hé"}]"#);

    // Every request of the session is verified: knowing the sid is not enough.
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={}", s.sid);
    assert_eq!(tests::http1::get(gw.addr, &target, &[]).await.status, 401);
    let forged = format!("{target}&token={}", valid("alice").replace('.', "x."));
    assert_eq!(tests::http1::get(gw.addr, &forged, &[]).await.status, 401);
}

#[tokio::test]
async fn websocket_only_session_with_token_in_query_or_header() {
    let (_demo, gw) = stack("25s").await;
    let mut ws = Ws::connect(gw.addr, &format!("token={}", valid("bob")), &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    assert_eq!(ws.open_and_join().await, json!({ "user": "bob" }));
    assert_eq!(ws.echo(7, &json!(["a", 1])).await, json!(["a", 1]));

    let bearer = format!("Bearer {}", valid("carol"));
    let mut ws = Ws::connect(gw.addr, "", &[("Authorization", &bearer)])
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    assert_eq!(ws.open_and_join().await, json!({ "user": "carol" }));

    let refused = Ws::connect(gw.addr, "token=bad.bad.bad", &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn polling_upgrades_to_websocket_through_the_gateway() {
    let (_demo, gw) = stack("25s").await;
    let token = valid("dave");
    let s = Polling::handshake(gw.addr, &format!("token={token}"), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake refused: {} {}", r.status, r.text()));
    assert_eq!(s.join().await, json!({ "user": "dave" }));
    let mut ws = Ws::upgrade(gw.addr, &s).await;
    assert_eq!(
        ws.echo(1, &json!({"over": "websocket"})).await,
        json!({"over": "websocket"})
    );
}

#[tokio::test]
async fn the_demo_refuses_sockets_that_did_not_come_through_the_gateway() {
    let demo = Demo::start("25s").await;
    let mut ws = Ws::connect(demo.addr, "", &[])
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let open = ws.expect().await;
    assert!(open.starts_with('0'), "{open}");
    ws.send("40").await;
    let reply = ws.expect().await;
    assert!(
        reply.starts_with("44") && reply.contains("not authenticated"),
        "{reply}"
    );
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Holds a WebSocket whose token expires at `exp`; returns when it was closed (or None).
async fn held_until_closed(gw: &Gateway, exp: u64, active: bool, limit: Duration) -> Option<f64> {
    let mut c = claims("erin");
    c["exp"] = json!(exp);
    let mut ws = Ws::connect(gw.addr, &format!("token={}", hs256(&c)), &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
    ws.open_and_join().await;
    let deadline = tokio::time::Instant::now() + limit;
    let mut id = 0;
    loop {
        if active {
            id += 1;
            if !ws.try_send(&format!("42{id}[\"echo\",{id}]")).await {
                return Some(now_f64());
            }
        }
        let wait = if active {
            Duration::from_millis(100)
        } else {
            limit
        };
        match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + wait), ws.recv())
            .await
        {
            Ok(Recv::Closed) => return Some(now_f64()),
            Ok(Recv::Text(_)) | Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

#[tokio::test]
async fn close_on_expiry_closes_active_and_idle_websockets_after_exp_never_before() {
    let (_demo, gw) = stack("1s").await;
    let ping = 1.0;
    for active in [true, false] {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3;
        let closed = held_until_closed(&gw, exp, active, Duration::from_secs(8))
            .await
            .unwrap_or_else(|| panic!("active={active}: still open 5s after exp"));
        let exp = exp as f64;
        assert!(
            closed >= exp,
            "active={active}: closed {:.3}s before exp",
            exp - closed
        );
        assert!(
            closed <= exp + ping + 0.5,
            "active={active}: closed {:.3}s after exp (ping interval {ping}s)",
            closed - exp
        );
    }
}

#[tokio::test]
async fn without_close_on_expiry_an_expired_websocket_stays_open() {
    let demo = Demo::start("1s").await;
    let cfg = GatewayConfig::hs256(demo.addr);
    let cfg = cfg
        .clone()
        .auth(&format!("{}\nclose_on_expiry = false\n", cfg.auth));
    let gw = Gateway::start(&cfg).await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 2;
    let closed = held_until_closed(&gw, exp, false, Duration::from_secs(5)).await;
    assert_eq!(closed, None, "closed although close_on_expiry = false");
}
