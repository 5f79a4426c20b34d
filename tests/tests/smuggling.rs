//! Requests hidden behind other requests on one connection, through the real gateway
//! binary: a request written right after an upgrade head that the upstream answers
//! without switching protocols, an upgrade head carrying a body, a blank line before an
//! upgrade head (which must still be carried by the gateway's tunnel, with its expiry),
//! and plain pipelining (each request answered in order, each reaching the upstream
//! exactly once with its own body).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tests::http1::{self, Response};
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::raw_upstream::RawUpstream;
use tests::recorder::Recorder;
use tests::tokens::{claims, hs256, valid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// An upgrade head for a public path, and in the same write a polling handshake with a
/// client-chosen identity header: as the attack was written (`HEAD`, whose answer has
/// no body, so that a gateway relaying the answer's `Content-Length` would relay the
/// smuggled request's answer instead).
const BEHIND_AN_UPGRADE: &[u8] = b"HEAD / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nx-auth-user: gonzalo\r\n\r\n";

/// The same behind a `GET` upgrade head, which the gateway carries to the upstream.
const BEHIND_A_GET_UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nx-auth-user: gonzalo\r\n\r\n";

const WS_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// The default test gateway, refusals as HTTP answers.
fn http_config(upstream: std::net::SocketAddr) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream);
    cfg.auth.push_str("reject_with = \"http\"\n");
    cfg
}

/// Writes `bytes` in one write and reads until the gateway closes the connection or
/// `limit` passes: what came back, and whether the connection was closed.
async fn send_and_read_for(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (buf, false),
            Ok(Ok(0) | Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_request_behind_an_upgrade_head_never_reaches_a_keep_alive_upstream() {
    // A `HEAD` never asks for a WebSocket (RFC 6455 4.1): refused by the gateway; a
    // `GET` upgrade goes upstream, whose `404` is relayed; in both cases the bytes
    // behind the head never do.
    for (bytes, method, forwarded) in [
        (BEHIND_AN_UPGRADE, "HEAD", 0),
        (BEHIND_A_GET_UPGRADE, "GET", 1),
    ] {
        let up = RawUpstream::start().await;
        let gw = Gateway::start(&http_config(up.addr)).await;
        let (answer, closed) = send_and_read_for(gw.addr, bytes, Duration::from_secs(10)).await;
        // Nothing more can reach the upstream once its connections are gone (the wait is
        // bounded: a gateway that keeps one open is judged by what arrived meanwhile).
        up.wait_all_ended(Duration::from_secs(5)).await;
        let seen = up.seen();
        let smuggled: Vec<_> = seen
            .iter()
            .filter(|s| s.target.contains("socket.io") || s.all("x-auth-user").contains(&"gonzalo"))
            .collect();
        assert!(
            smuggled.is_empty(),
            "{method}: the request behind the upgrade head reached the upstream: {smuggled:?}"
        );
        assert_eq!(
            seen.len(),
            forwarded,
            "{method}: the upstream parsed {seen:?}"
        );
        if let Some(first) = seen.first() {
            assert_eq!(
                (first.method.as_str(), first.target.as_str()),
                (method, "/")
            );
        }
        let answer_text = text(&answer);
        let status = if forwarded == 1 {
            "HTTP/1.1 404"
        } else {
            "HTTP/1.1 400"
        };
        assert!(
            answer_text.starts_with(status),
            "{method}: not {status}: {answer_text:?}"
        );
        assert_eq!(
            answer_text.matches("HTTP/1.1 ").count(),
            1,
            "{method}: more than one answer: {answer_text:?}"
        );
        assert!(
            closed,
            "{method}: the connection stayed open after the answer"
        );
    }
}

#[tokio::test]
async fn a_request_behind_an_upgrade_head_never_opens_a_session_at_upstream_demo() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&http_config(demo.addr)).await;
    let (answer, _) = send_and_read_for(gw.addr, BEHIND_AN_UPGRADE, Duration::from_secs(5)).await;
    let answer_text = text(&answer);
    assert!(
        !answer_text.contains("0{\"sid\""),
        "a smuggled handshake opened an Engine.IO session: {answer_text:?}"
    );
    assert!(
        answer_text.starts_with("HTTP/1.1 "),
        "no answer to the HEAD: {answer_text:?}"
    );
}

#[tokio::test]
async fn an_upgrade_head_with_a_body_is_refused_before_the_upstream() {
    let up = RawUpstream::start().await;
    let gw = Gateway::start(&http_config(up.addr)).await;
    let head = format!(
        "GET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.1\r\nHost: x\r\n{WS_HEADERS}",
        valid("alice")
    );
    for (name, framing) in [
        (
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("Content-Length: 5", "Content-Length: 5\r\n\r\nhello"),
    ] {
        let bytes = format!("{head}{framing}");
        let (answer, _) =
            send_and_read_for(gw.addr, bytes.as_bytes(), Duration::from_secs(10)).await;
        assert!(!answer.is_empty(), "{name}: no answer");
        let resp = http1::parse(&answer);
        assert_eq!(resp.status, 400, "{name}: {:?}", text(&answer));
    }
    up.wait_all_ended(Duration::from_secs(5)).await;
    assert_eq!(
        up.accepted(),
        0,
        "the upstream was connected: {:?}",
        up.seen()
    );
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::test]
async fn a_blank_line_before_an_upgrade_head_keeps_its_expiry() {
    // Pings every 25 s: nothing passes on the socket before the token expires.
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&http_config(demo.addr)).await;
    let mut c = claims("ivy");
    let exp = tests::tokens::now() + 3;
    c["exp"] = json!(exp);
    let request = format!(
        "\r\n\r\nGET /socket.io/?EIO=4&transport=websocket&token={} HTTP/1.1\r\nHost: x\r\n{WS_HEADERS}\r\n",
        hs256(&c)
    );
    let mut stream = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    // The 101, and whatever frames came with it.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer head"))
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "closed without an answer: {:?}", text(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = http1::parse(&buf[..head_end]);
    assert_eq!(head.status, 101, "{:?}", text(&buf));
    let mut ws =
        WebSocketStream::from_partially_read(stream, buf[head_end..].to_vec(), Role::Client, None)
            .await;
    // Read until the connection ends (answering pings), at most 8 s past exp.
    let limit = Duration::from_secs_f64((exp as f64 + 8.0 - now_f64()).max(1.0));
    let deadline = Instant::now() + limit;
    let mut frames = Vec::new();
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                }
                frames.push(t.as_str().to_string());
            }
            Ok(Some(Ok(Message::Close(frame)))) => break Some((now_f64(), frame)),
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break Some((now_f64(), None)),
        }
    };
    assert!(
        frames.first().is_some_and(|f| f.starts_with("0{")),
        "no open packet after the 101: {frames:?}"
    );
    let Some((at, frame)) = ended else {
        panic!("still open {:.1} s after exp", now_f64() - exp as f64);
    };
    let code = frame.as_ref().map(|f| f.code);
    assert_eq!(
        code,
        Some(CloseCode::Policy),
        "closed without a 1008 close frame: {frame:?}"
    );
    assert!(
        at >= exp as f64,
        "closed {:.2} s before exp",
        exp as f64 - at
    );
    assert!(
        at < exp as f64 + 2.0,
        "closed {:.2} s after exp",
        at - exp as f64
    );
}

/// Writes `bytes` in one write and reads `methods.len()` answers in order (a `HEAD`'s
/// without a body).
async fn pipelined(addr: std::net::SocketAddr, bytes: &[u8], methods: &[&str]) -> Vec<Response> {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        match http1::next_response(&mut s, &mut buf, *method == "HEAD").await {
            Some(r) => answers.push(r),
            None => panic!(
                "answer {} of {} missing; got {:?}, then {:?}",
                i + 1,
                methods.len(),
                answers
                    .iter()
                    .map(|r: &Response| (r.status, r.text()))
                    .collect::<Vec<_>>(),
                text(&buf)
            ),
        }
    }
    answers
}

fn assert_ok(answers: &[Response]) {
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "answer {}: {}", i + 1, r.text());
        assert_eq!(r.text(), "ok", "answer {}", i + 1);
    }
}

fn targets_and_bodies(up: &Recorder) -> Vec<(String, String, String)> {
    up.seen()
        .iter()
        .map(|s| (s.method.clone(), s.target.clone(), text(&s.body)))
        .collect()
}

#[tokio::test]
async fn two_pipelined_gets_are_answered_in_order_and_each_reaches_the_upstream_once() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&http_config(up.addr)).await;
    let answers = pipelined(
        gw.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        &["GET", "GET"],
    )
    .await;
    assert_ok(&answers);
    assert_eq!(
        targets_and_bodies(&up),
        vec![
            ("GET".into(), "/a".into(), String::new()),
            ("GET".into(), "/b".into(), String::new()),
        ]
    );
}

#[tokio::test]
async fn a_get_pipelined_after_a_content_length_body_is_answered_in_order() {
    let up = Recorder::start().await;
    let gw = Gateway::start(&http_config(up.addr)).await;
    let answers = pipelined(
        gw.addr,
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
        &["POST", "GET"],
    )
    .await;
    assert_ok(&answers);
    assert_eq!(
        targets_and_bodies(&up),
        vec![
            ("POST".into(), "/p".into(), "hello".into()),
            ("GET".into(), "/c".into(), String::new()),
        ]
    );
}

#[tokio::test]
async fn a_get_pipelined_after_a_chunked_body_with_an_extension_and_a_trailer_is_answered_in_order()
{
    let up = Recorder::start().await;
    let gw = Gateway::start(&http_config(up.addr)).await;
    let answers = pipelined(
        gw.addr,
        b"POST /q HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n",
        &["POST", "GET"],
    )
    .await;
    assert_ok(&answers);
    assert_eq!(
        targets_and_bodies(&up),
        vec![
            ("POST".into(), "/q".into(), "hello world".into()),
            ("GET".into(), "/d".into(), String::new()),
        ]
    );
}
