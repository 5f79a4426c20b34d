//! Engine.IO sessions bound to their user, attacked through the real gateway binary in
//! front of upstream-demo (SPEC "Additions (third round)"): Alice's `sid` spelled so
//! that the gateway and the server read the query differently (percent-encoded,
//! repeated, `%73id`, `SID`), over HTTP/1.1 and HTTP/2; WebSocket-only sessions; the
//! binding across gateways sharing `auth.session_key_file` and across a restart; `sid`s
//! no gateway can attribute (`400 unknown_session`, nothing upstream). The `sid` is
//! whatever the client was handed in the open packet: opaque to these tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine;
use serde_json::{Value, json};
use tests::eio::{Polling, SEP, Ws, event};
use tests::http1::{self, Response};
use tests::procs::{Demo, Gateway, GatewayConfig};
use tests::recorder::Recorder;
use tests::tls::{self, TestCa};
use tests::tokens::valid;

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

const WS_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Mallory's write: the event as the review wrote it, and one with an ack id, whose ack
/// would show up in the session if it ever reached it.
fn pwned() -> String {
    format!("42[\"echo\",\"pwned\"]{SEP}4277[\"echo\",\"pwned\"]")
}

/// The default test gateway, refusals as HTTP answers.
fn http_config(upstream: SocketAddr) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream);
    cfg.auth.push_str("reject_with = \"http\"\n");
    cfg
}

/// `cfg` with `auth.session_key_file = key`.
fn keyed(mut cfg: GatewayConfig, key: &Path) -> GatewayConfig {
    cfg.auth
        .push_str(&format!("session_key_file = \"{}\"\n", key.display()));
    cfg
}

/// Writes 48 random bytes, base64, into `dir/name`.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let mut bytes = [0u8; 48];
    aws_lc_rs::rand::fill(&mut bytes).unwrap_or_else(|e| panic!("random: {e}"));
    let path = dir.join(name);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(bytes),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Other spellings of `sid=<sid>` that some server reads as Alice's `sid`.
fn spellings(sid: &str) -> Vec<(&'static str, String)> {
    let first = sid.as_bytes().first().copied().unwrap_or(b'x');
    vec![
        (
            "first character percent-encoded",
            format!("sid=%{first:02X}{}", &sid[1..]),
        ),
        ("sid twice", format!("sid=zzzz&sid={sid}")),
        ("%73id then sid", format!("%73id=zzzz&sid={sid}")),
        ("SID then sid", format!("SID=zzzz&sid={sid}")),
    ]
}

/// What a refused attempt looked like, or why it was not refused as required.
fn refusal_problem(
    what: &str,
    answer: Option<(u16, String)>,
    status: u16,
    code: &str,
) -> Option<String> {
    let Some((got, body)) = answer else {
        return Some(format!(
            "{what}: held open by the upstream (no answer within 3 s)"
        ));
    };
    let error = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from));
    (got != status || error.as_deref() != Some(code)).then(|| format!("{what}: {got} {body:?}"))
}

fn answer_of(r: Response) -> (u16, String) {
    (r.status, r.text())
}

/// Polls Alice's session until `welcome` (answering pings); every packet seen.
async fn poll_until_welcome(alice: &Polling) -> Vec<String> {
    let mut packets = Vec::new();
    for _ in 0..10 {
        let got = alice
            .poll()
            .await
            .unwrap_or_else(|r| panic!("alice's poll refused: {} {}", r.status, r.text()));
        packets.extend(got);
        if packets.iter().any(|p| event(p, "welcome").is_some()) {
            return packets;
        }
    }
    panic!("alice never got her welcome: {packets:?}");
}

/// Emits `echo` with ack id `id` on Alice's session and polls until its ack; every
/// packet seen on the way.
async fn echo_and_collect(
    send: &Polling,
    receive: &Polling,
    id: u32,
    payload: &str,
) -> Vec<String> {
    let r = send
        .post(&[&format!("42{id}[\"echo\",\"{payload}\"]")])
        .await;
    assert_eq!(r.status, 200, "alice's echo refused: {}", r.text());
    let mut packets = Vec::new();
    for _ in 0..10 {
        let got = receive
            .poll()
            .await
            .unwrap_or_else(|r| panic!("alice's poll refused: {} {}", r.status, r.text()));
        packets.extend(got);
        if packets.iter().any(|p| p.starts_with(&format!("43{id}"))) {
            assert!(
                packets.contains(&format!("43{id}[\"{payload}\"]")),
                "{packets:?}"
            );
            return packets;
        }
    }
    panic!("no ack {id}: {packets:?}");
}

#[tokio::test]
async fn alices_sid_spelled_otherwise_is_bad_request_and_never_reaches_her_session() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&http_config(demo.addr)).await;
    let alice = Polling::handshake(gw.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake: {} {}", r.status, r.text()));
    // CONNECT sent, nothing read yet: Alice's welcome waits in her session.
    let r = alice.post(&["40"]).await;
    assert_eq!(r.status, 200, "CONNECT: {}", r.text());

    let mallory = valid("mallory");
    let mut problems = Vec::new();
    let mut bodies = Vec::new();
    for (name, spelled) in spellings(&alice.sid) {
        let target = format!("{POLL}&{spelled}&token={mallory}");
        let poll = tokio::time::timeout(Duration::from_secs(3), http1::get(gw.addr, &target, &[]))
            .await
            .ok()
            .map(answer_of);
        let post = tokio::time::timeout(
            Duration::from_secs(3),
            http1::request(
                gw.addr,
                "POST",
                &target,
                &[("Content-Type", "text/plain;charset=UTF-8")],
                pwned().as_bytes(),
            ),
        )
        .await
        .ok()
        .map(answer_of);
        for (how, answer) in [("GET", poll), ("POST", post)] {
            if let Some((_, body)) = &answer {
                bodies.push(format!("{how} {name}: {body}"));
            }
            problems.extend(refusal_problem(
                &format!("{how} {name} ({spelled})"),
                answer,
                400,
                "bad_request",
            ));
        }
    }
    let read: Vec<&String> = bodies
        .iter()
        .filter(|b| b.contains("welcome") || b.contains("alice"))
        .collect();
    assert!(
        read.is_empty() && problems.is_empty(),
        "mallory read alice's packets: {read:?}\nnot refused as bad_request:\n{}",
        problems.join("\n")
    );

    // Alice's session is untouched: her welcome is still there, and no `pwned` echo
    // was ever acknowledged in it.
    let mut packets = poll_until_welcome(&alice).await;
    assert!(
        packets
            .iter()
            .any(|p| event(p, "welcome") == Some(json!({ "user": "alice" }))),
        "{packets:?}"
    );
    packets.extend(echo_and_collect(&alice, &alice, 1, "mine").await);
    assert!(
        !packets.iter().any(|p| p.contains("pwned")),
        "mallory wrote into alice's session: {packets:?}"
    );
    assert!(
        !demo.proc_.logs().contains("pwned"),
        "upstream-demo logged mallory's echo:\n{}",
        demo.proc_.logs()
    );
}

/// One HTTP/2 connection to a TLS gateway.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl H2 {
    async fn connect(addr: SocketAddr, ca_pem: &str) -> H2 {
        let stream = tls::connect(addr, tls::client_config(ca_pem, &["h2"]))
            .await
            .unwrap_or_else(|e| panic!("TLS connect: {e}"));
        assert_eq!(tls::alpn(&stream).as_deref(), Some("h2"));
        let (send, connection) = h2::client::handshake(stream)
            .await
            .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
        tokio::spawn(connection);
        H2 {
            send,
            authority: format!("127.0.0.1:{}", addr.port()),
        }
    }

    /// One request; the status and the body.
    async fn request(&self, method: &str, target: &str, body: &str) -> (u16, String) {
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .unwrap_or_else(|e| panic!("h2 not ready: {e}"));
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{target}", self.authority));
        if method == "POST" {
            request = request
                .header("content-type", "text/plain;charset=UTF-8")
                .header("content-length", body.len());
        }
        let request = request.body(()).unwrap_or_else(|e| panic!("{e}"));
        let (answer, mut stream) = send
            .send_request(request, method != "POST")
            .unwrap_or_else(|e| panic!("send_request: {e}"));
        if method == "POST" {
            stream
                .send_data(Bytes::copy_from_slice(body.as_bytes()), true)
                .unwrap_or_else(|e| panic!("send_data: {e}"));
        }
        let answer = answer.await.unwrap_or_else(|e| panic!("h2 answer: {e}"));
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap_or_else(|e| panic!("h2 body: {e}"));
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    /// Polls `sid` until a packet passes `done`; every packet seen.
    async fn poll_until(&self, sid: &str, token: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut packets = Vec::new();
        for _ in 0..10 {
            let (status, body) = tokio::time::timeout(
                tests::eio::STEP,
                self.request("GET", &format!("{POLL}&sid={sid}&token={token}"), ""),
            )
            .await
            .unwrap_or_else(|_| panic!("alice's poll timed out: {packets:?}"));
            assert_eq!(status, 200, "alice's poll: {body}");
            packets.extend(
                body.split(SEP)
                    .filter(|p| !p.is_empty() && *p != "2")
                    .map(String::from),
            );
            if packets.iter().any(|p| done(p)) {
                return packets;
            }
        }
        panic!("not there: {packets:?}");
    }
}

#[tokio::test]
async fn alices_sid_spelled_otherwise_is_bad_request_over_http2() {
    let demo = Demo::start("25s").await;
    let ca = TestCa::new("sessions h2 CA").unwrap_or_else(|e| panic!("{e}"));
    let leaf = ca
        .leaf(19, Duration::from_secs(90 * 86_400))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = leaf.write(dir.path(), "server");
    let mut cfg = http_config(demo.addr);
    cfg.extra = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.cert.display(),
        files.key.display()
    );
    let gw = Gateway::start_in(&cfg, dir).await;

    let alice_token = valid("alice");
    let alice = H2::connect(gw.addr, &ca.pem).await;
    let (status, open) = alice
        .request("GET", &format!("{POLL}&token={alice_token}"), "")
        .await;
    assert_eq!(status, 200, "handshake: {open}");
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .unwrap_or_else(|e| panic!("not an open packet ({e}): {open}"));
    let sid = open["sid"].as_str().unwrap_or_default().to_string();
    assert!(!sid.is_empty(), "{open}");
    let (status, body) = alice
        .request(
            "POST",
            &format!("{POLL}&sid={sid}&token={alice_token}"),
            "40",
        )
        .await;
    assert_eq!(status, 200, "CONNECT: {body}");

    let mallory_token = valid("mallory");
    let mallory = H2::connect(gw.addr, &ca.pem).await;
    let mut problems = Vec::new();
    let mut read = Vec::new();
    for (name, spelled) in spellings(&sid) {
        let target = format!("{POLL}&{spelled}&token={mallory_token}");
        for method in ["GET", "POST"] {
            let body = if method == "POST" {
                pwned()
            } else {
                String::new()
            };
            let answer = tokio::time::timeout(
                Duration::from_secs(3),
                mallory.request(method, &target, &body),
            )
            .await
            .ok();
            let stolen = answer
                .as_ref()
                .is_some_and(|(_, b)| b.contains("welcome") || b.contains("alice"));
            if stolen {
                read.push(format!("{method} {name}: {answer:?}"));
            }
            problems.extend(refusal_problem(
                &format!("{method} {name} ({spelled})"),
                answer,
                400,
                "bad_request",
            ));
        }
    }
    assert!(
        read.is_empty() && problems.is_empty(),
        "mallory read alice's packets: {read:?}\nnot refused as bad_request over HTTP/2:\n{}",
        problems.join("\n")
    );

    let mut packets = alice
        .poll_until(&sid, &alice_token, |p| event(p, "welcome").is_some())
        .await;
    assert!(
        packets
            .iter()
            .any(|p| event(p, "welcome") == Some(json!({ "user": "alice" }))),
        "{packets:?}"
    );
    let (status, body) = alice
        .request(
            "POST",
            &format!("{POLL}&sid={sid}&token={alice_token}"),
            "421[\"echo\",\"mine\"]",
        )
        .await;
    assert_eq!(status, 200, "alice's echo: {body}");
    packets.extend(
        alice
            .poll_until(&sid, &alice_token, |p| p.starts_with("431"))
            .await,
    );
    assert!(
        !packets.iter().any(|p| p.contains("pwned")),
        "mallory wrote into alice's session: {packets:?}"
    );
}

/// Writes a hand-made request and reads its answer (a `101`'s head alone).
async fn answer_to(addr: SocketAddr, request: &str) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    match http1::next_response(&mut s, &mut buf, false).await {
        Some(r) => r,
        None => panic!("no answer: {:?}", String::from_utf8_lossy(&buf)),
    }
}

/// The `sid` of an open packet frame (`0{...}`).
fn sid_of_open(frame: &str) -> String {
    let open: Value = serde_json::from_str(frame.strip_prefix('0').unwrap_or(frame))
        .unwrap_or_else(|e| panic!("not an open packet ({e}): {frame}"));
    let sid = open["sid"].as_str().unwrap_or_default().to_string();
    assert!(!sid.is_empty(), "open packet without sid: {frame}");
    sid
}

#[tokio::test]
async fn a_websocket_only_sid_is_bound_to_its_user() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&http_config(demo.addr)).await;
    let mut alice = Ws::connect(gw.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|e| panic!("alice's upgrade refused: {e}"));
    let sid = sid_of_open(&alice.expect().await);
    assert_eq!(alice.try_join().await, Some(json!({ "user": "alice" })));

    // Mallory's upgrade with Alice's sid, written by hand so that the refusal's body is
    // read whole.
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket&sid={sid}&token={} HTTP/1.1\r\nHost: x\r\n{WS_HEADERS}\r\n",
        valid("mallory")
    );
    let resp = answer_to(gw.addr, &request).await;
    assert_eq!(
        (resp.status, error_of(&resp).as_deref()),
        (403, Some("session_mismatch")),
        "mallory's upgrade with alice's WebSocket sid: {} {}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        alice.echo(1, &json!("still-mine")).await,
        json!("still-mine"),
        "alice's WebSocket no longer echoes"
    );
}

/// Mallory's poll and POST with `sid`: each must be `403 session_mismatch`.
async fn assert_mallory_refused(gw: SocketAddr, sid: &str, where_: &str) {
    let target = format!("{POLL}&sid={sid}&token={}", valid("mallory"));
    let poll = tokio::time::timeout(Duration::from_secs(3), http1::get(gw, &target, &[]))
        .await
        .ok()
        .map(answer_of);
    let post = tokio::time::timeout(
        Duration::from_secs(3),
        http1::request(
            gw,
            "POST",
            &target,
            &[("Content-Type", "text/plain;charset=UTF-8")],
            pwned().as_bytes(),
        ),
    )
    .await
    .ok()
    .map(answer_of);
    let problems: Vec<String> = [("GET", poll), ("POST", post)]
        .into_iter()
        .filter_map(|(how, a)| {
            refusal_problem(&format!("{how} at {where_}"), a, 403, "session_mismatch")
        })
        .collect();
    assert!(
        problems.is_empty(),
        "mallory was not refused with alice's sid:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn a_sid_opened_at_one_gateway_is_bound_at_another_sharing_its_key() {
    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = key_file(keys.path(), "session.key");
    let demo = Demo::start("25s").await;
    let cfg = keyed(http_config(demo.addr), &key);
    let a = Gateway::start(&cfg).await;
    let b = Gateway::start(&cfg).await;

    let via_a = Polling::handshake(a.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake at A: {} {}", r.status, r.text()));
    let via_b = via_a.via(b.addr);
    let r = via_b.post(&["40"]).await;
    assert_eq!(r.status, 200, "CONNECT via B: {}", r.text());

    // Mallory at B, which never saw the handshake, and at A.
    assert_mallory_refused(b.addr, &via_a.sid, "B").await;
    assert_mallory_refused(a.addr, &via_a.sid, "A").await;

    // Alice's own requests alternate between the gateways.
    let mut welcome = None;
    for i in 0..10 {
        let side = if i % 2 == 0 { &via_a } else { &via_b };
        let packets = side
            .poll()
            .await
            .unwrap_or_else(|r| panic!("alice's poll {i}: {} {}", r.status, r.text()));
        if let Some(w) = packets.iter().find_map(|p| event(p, "welcome")) {
            welcome = Some(w);
            break;
        }
    }
    assert_eq!(welcome, Some(json!({ "user": "alice" })));
    let packets = echo_and_collect(&via_b, &via_a, 1, "b-to-a").await;
    assert!(!packets.iter().any(|p| p.contains("pwned")), "{packets:?}");
    echo_and_collect(&via_a, &via_b, 2, "a-to-b").await;
}

#[tokio::test]
async fn a_polling_session_goes_on_through_its_gateway_restarted_with_the_same_key() {
    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = key_file(keys.path(), "session.key");
    let demo = Demo::start("25s").await;
    let cfg = keyed(http_config(demo.addr), &key);
    let a = Gateway::start(&cfg).await;
    let alice = Polling::handshake(a.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake: {} {}", r.status, r.text()));
    assert_eq!(alice.join().await, json!({ "user": "alice" }));
    echo_and_collect(&alice, &alice, 1, "before").await;

    drop(a);
    let again = Gateway::start(&cfg).await;
    let alice = alice.via(again.addr);
    echo_and_collect(&alice, &alice, 2, "after-restart").await;
    assert_mallory_refused(again.addr, &alice.sid, "the restarted gateway").await;
    echo_and_collect(&alice, &alice, 3, "still-mine").await;
}

/// The error code of a JSON answer.
fn error_of(r: &Response) -> Option<String> {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
}

#[tokio::test]
async fn a_sid_no_gateway_handed_out_is_unknown_session_and_never_reaches_the_upstream() {
    let up = Recorder::start().await;
    let token = valid("alice");
    let target = format!("{POLL}&sid=zzzzzzzzzzzzzzzzzzzz&token={token}");
    let ws_request = format!(
        "GET /socket.io/?EIO=4&transport=websocket&sid=zzzzzzzzzzzzzzzzzzzz&token={token} HTTP/1.1\r\nHost: x\r\n{WS_HEADERS}\r\n"
    );

    let gw = Gateway::start(&http_config(up.addr)).await;
    let poll = http1::get(gw.addr, &target, &[]).await;
    let post = http1::request(gw.addr, "POST", &target, &[], b"40").await;
    for (how, r) in [("GET", &poll), ("POST", &post)] {
        assert_eq!(
            (r.status, error_of(r).as_deref()),
            (400, Some("unknown_session")),
            "{how}: {}",
            r.text()
        );
    }
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());

    // reject_with = "socketio": Engine.IO's own answers, still nothing upstream.
    let mut cfg = GatewayConfig::hs256(up.addr);
    cfg.auth.push_str("reject_with = \"socketio\"\n");
    let gw = Gateway::start(&cfg).await;
    let poll = http1::get(gw.addr, &target, &[]).await;
    assert_eq!((poll.status, poll.text().as_str()), (200, "1"), "poll");
    let post = http1::request(gw.addr, "POST", &target, &[], b"40").await;
    assert_eq!(post.status, 400, "POST: {}", post.text());
    let upgrade = answer_to(gw.addr, &ws_request).await;
    assert_ne!(upgrade.status, 101, "the upgrade was switched");
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
}

#[tokio::test]
async fn a_gateway_with_another_key_does_not_accept_the_sid() {
    let keys = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let demo = Demo::start("25s").await;
    let a = Gateway::start(&keyed(
        http_config(demo.addr),
        &key_file(keys.path(), "one.key"),
    ))
    .await;
    let alice = Polling::handshake(a.addr, &format!("token={}", valid("alice")), &[])
        .await
        .unwrap_or_else(|r| panic!("handshake: {} {}", r.status, r.text()));
    assert_eq!(alice.join().await, json!({ "user": "alice" }));

    let up = Recorder::start().await;
    let other = Gateway::start(&keyed(
        http_config(up.addr),
        &key_file(keys.path(), "two.key"),
    ))
    .await;
    let elsewhere = alice.via(other.addr);
    let poll = match elsewhere.poll().await {
        Ok(packets) => panic!("the other gateway forwarded alice's poll: {packets:?}"),
        Err(r) => r,
    };
    assert_eq!(
        (poll.status, error_of(&poll).as_deref()),
        (400, Some("unknown_session")),
        "{}",
        poll.text()
    );
    let post = elsewhere.post(&["421[\"echo\",1]"]).await;
    assert_eq!(
        (post.status, error_of(&post).as_deref()),
        (400, Some("unknown_session")),
        "{}",
        post.text()
    );
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
    // Alice's session still works where it was opened.
    echo_and_collect(&alice, &alice, 1, "home").await;
}

/// A polling handshake's answer keeps a `Content-Length` (the sealed `sid` grows it by
/// a length known before its body), and its request reaches the upstream without
/// `Accept-Encoding`: a compressed open packet could not be sealed. Other requests
/// keep their `Accept-Encoding`.
#[tokio::test]
async fn a_handshake_answer_keeps_its_length_and_its_request_asks_for_no_compression() {
    let demo = Demo::start("25s").await;
    let gw = Gateway::start(&http_config(demo.addr)).await;
    let token = valid("alice");
    let r = answer_to(
        gw.addr,
        &format!(
            "GET {POLL}&token={token} HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip, br\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("transfer-encoding"), None, "{:?}", r.headers);
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
    let length: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {:?}", r.headers));
    assert_eq!(length, r.body.len());
    let sid = sid_of_open(&r.text());
    // The sealed sid works: Alice's next poll is answered on her session.
    let next = http1::get(gw.addr, &format!("{POLL}&sid={sid}&token={token}"), &[]).await;
    assert_eq!(next.status, 200, "{}", next.text());

    let up = Recorder::start().await;
    let gw = Gateway::start(&http_config(up.addr)).await;
    for (target, compressed) in [
        (format!("{POLL}&token={token}"), false),
        (format!("/socket.io/?EIO=4&token={token}"), true),
    ] {
        up.clear();
        let r = http1::get(gw.addr, &target, &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        let seen = up.last();
        let asked = seen.headers.iter().any(|(n, _)| n == "accept-encoding");
        assert_eq!(asked, compressed, "{target}: {:?}", seen.headers);
    }
}
