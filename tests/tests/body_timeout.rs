//! `proxy.body_read_timeout` (docs/request-handling.md "Upstream connections"), through
//! the real gateway binary to a raw recording upstream: a client that announces a
//! request body and then stalls, by its length or chunked, gets `408` and its
//! connection closed, and the upstream connection that got part of the body is closed,
//! never reused; a body that keeps making progress is not cut off.

use std::time::{Duration, Instant};

use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::RawUpstream;
use tests::tokens::valid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the configured 1 s bound and the gateway's coarse timers together.
const LIMIT: Duration = Duration::from_secs(10);

/// Reads until the gateway closes the connection (or [`LIMIT`]): what came back.
async fn until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .unwrap_or_else(|_| panic!("a stalled body was never cut off within {LIMIT:?}"));
    got
}

async fn write(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_its_upstream_connection_is_closed() {
    let up = RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let cfg = GatewayConfig::hs256(up.addr).proxy("body_read_timeout = \"1s\"");
    let gw = Gateway::start(&cfg).await;
    let token = valid("sue");

    // By its length: a head announcing a megabyte, ten bytes, then nothing.
    let mut s = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&token={token} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n0123456789"
    );
    write(&mut s, head.as_bytes()).await;
    let answer = http1::parse(&until_close(&mut s).await);
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        up.wait_conn_ended(0, LIMIT).await,
        "the upstream connection that got part of the body is still open"
    );

    // Chunked, making progress within the bound for a while (never cut off while it
    // does), then stalling.
    let mut s = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    write(
        &mut s,
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    let started = Instant::now();
    for _ in 0..4 {
        write(&mut s, b"5\r\nhello\r\n").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let progressing = started.elapsed();
    let answer = http1::parse(&until_close(&mut s).await);
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(
        progressing > Duration::from_secs(1),
        "the trickle lasted {progressing:?}, not longer than the bound"
    );
    assert!(
        up.wait_all_ended(LIMIT).await,
        "an upstream connection that got part of a body is still open"
    );
    assert!(
        up.seen().is_empty(),
        "a request reached the upstream whole: {:?}",
        up.seen()
    );

    // The gateway still serves: a body sent whole is forwarded.
    let r = http1::request(gw.addr, "POST", "/upload", &[], b"hi").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen().len(), 1);
}
