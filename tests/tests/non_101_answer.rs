//! An upstream's answer to a WebSocket upgrade that does not switch protocols
//! (docs/websockets.md), through the real gateway binary to a raw upstream: relayed by
//! the same body relay and under a head the gateway wrote, as any answer (chunk
//! extensions and trailers dropped, the hop-by-hop fields dropped, `Connection: close`),
//! then the connection closed.

use std::time::Duration;

use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::RawUpstream;
use tests::tokens::valid;

#[tokio::test]
async fn a_non_101_answer_is_framed_by_the_gateways_relay() {
    let up = RawUpstream::answering(
        b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nnope!\r\n0\r\nX-Trailer: 1\r\n\r\n",
    )
    .await;
    let gw = Gateway::start(&GatewayConfig::hs256(up.addr)).await;
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        valid("nia")
    );
    let raw = tokio::time::timeout(
        Duration::from_secs(10),
        http1::exchange(gw.addr, req.as_bytes()),
    )
    .await
    .unwrap_or_else(|_| panic!("the connection was not closed after a non-101 answer"));
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(
        text,
        "HTTP/1.1 403 Forbidden\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nnope!\r\n0\r\n\r\n"
    );
    assert_eq!(up.seen().len(), 1);
}
