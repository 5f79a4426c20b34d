//! `Upgrade: websocket` without the `upgrade` connection option (docs/websockets.md,
//! RFC 9110 7.8), through the real gateway binary to a raw recording upstream: such a
//! request is a plain HTTP request, decided as if it had no `Upgrade` header and
//! forwarded without it on a connection that stays alive; never the tunnel's upgrade.

use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::RawUpstream;
use tests::tokens::valid;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A WebSocket-only Engine.IO handshake's fields, without `Connection: upgrade`.
const WS_FIELDS_NO_OPTION: &str = "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

async fn next(s: &mut TcpStream, buf: &mut Vec<u8>, what: &str) -> Response {
    http1::next_response(s, buf, false)
        .await
        .unwrap_or_else(|| panic!("no answer to {what}: the connection ended"))
}

#[tokio::test]
async fn an_upgrade_header_without_the_upgrade_connection_option_is_a_plain_request() {
    let up = RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    // `reject_with = "socketio"`: the tunnel would refuse a WebSocket-only handshake with
    // its own `101`; a plain request gets the HTTP `401`.
    let cfg = GatewayConfig::hs256(up.addr);
    let cfg = cfg
        .clone()
        .auth(&format!("{}\nreject_with = \"socketio\"\n", cfg.auth));
    let gw = Gateway::start(&cfg).await;
    let mut s = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut buf = Vec::new();

    let allowed = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.1\r\nHost: gw\r\n{WS_FIELDS_NO_OPTION}\r\n",
        valid("ana")
    );
    s.write_all(allowed.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let r = next(&mut s, &mut buf, "the request with a token").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    assert_eq!(r.header("connection"), None, "kept alive: {r:?}");

    // The same connection carries the next request: no token, decided as plain HTTP.
    let refused = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: gw\r\n{WS_FIELDS_NO_OPTION}\r\n"
    );
    s.write_all(refused.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let r = next(&mut s, &mut buf, "the request without a token").await;
    assert_eq!(r.status, 401, "{}", r.text());

    // HTTP/1.0 with the option is not an upgrade either (RFC 9110 7.8).
    let old = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.0\r\nConnection: upgrade\r\n{WS_FIELDS_NO_OPTION}\r\n",
        valid("bo")
    );
    let r = http1::one(gw.addr, old.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (request, user) in seen.iter().zip(["ana", "bo"]) {
        assert_eq!(request.all("x-auth-user"), [user], "{request:?}");
        assert!(
            request.all("upgrade").is_empty(),
            "Upgrade forwarded: {request:?}"
        );
        assert!(
            request.all("connection").is_empty(),
            "Connection forwarded: {request:?}"
        );
    }
}
