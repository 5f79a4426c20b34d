//! TLS at the gateway (docs/tls.md) through the real binary: HTTPS with the same token
//! rules as plain HTTP, ALPN, clients that do not trust the certificate, plain HTTP on
//! the TLS port, WSS through the tunnel, live certificate rotation (a held connection
//! stays, a new one gets the new serial, a broken pair keeps the last good one), and
//! `--check` on the pair.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::eio::Ws;
use tests::procs::{Demo, Gateway, GatewayConfig, bin};
use tests::recorder::Recorder;
use tests::tls::{self, Leaf, LeafFiles, TestCa};
use tests::tokens::{self, claims, hs256, now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NINETY_DAYS: Duration = Duration::from_secs(90 * 24 * 3600);

fn ca(name: &str) -> TestCa {
    TestCa::new(name).unwrap_or_else(|e| panic!("{e}"))
}

fn leaf(ca: &TestCa, serial: u64, valid_for: Duration) -> Leaf {
    ca.leaf(serial, valid_for).unwrap_or_else(|e| panic!("{e}"))
}

fn tls_table(files: &LeafFiles) -> String {
    format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.cert.display(),
        files.key.display()
    )
}

/// A gateway serving TLS with `leaf`, its files in the gateway's own directory.
async fn tls_gateway(mut cfg: GatewayConfig, leaf: &Leaf) -> (Gateway, LeafFiles) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let files = leaf.write(dir.path(), "server");
    cfg.extra = format!("{}\n{}", cfg.extra, tls_table(&files));
    (Gateway::start_in(&cfg, dir).await, files)
}

#[tokio::test]
async fn https_applies_the_same_token_rules_and_offers_h2() {
    let up = Recorder::start().await;
    let ca = ca("gateway test CA");
    let (gw, _) = tls_gateway(GatewayConfig::hs256(up.addr), &leaf(&ca, 1, NINETY_DAYS)).await;
    let trusted = tls::client_config(&ca.pem, &["http/1.1"]);

    // A valid token: forwarded without it, the user injected.
    let token = tokens::valid("alice");
    let resp = tls::get(
        gw.addr,
        trusted.clone(),
        &format!("/socket.io/?EIO=4&transport=polling&token={token}"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    assert_eq!(seen.one("x-auth-user"), Some("alice"));
    assert!(!seen.target.contains("token"), "{}", seen.target);

    // An expired token: the usual refusal, nothing upstream.
    let before = up.seen().len();
    let mut c = claims("alice");
    c["exp"] = serde_json::json!(now() - 60);
    let expired = hs256(&c);
    let resp = tls::get(
        gw.addr,
        trusted.clone(),
        &format!("/socket.io/?EIO=4&transport=polling&token={expired}"),
    )
    .await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["error"], "token_expired");
    assert_eq!(up.seen().len(), before);

    // ALPN: h2 first when offered, HTTP/1.1 otherwise.
    let both = tls::client_config(&ca.pem, &["h2", "http/1.1"]);
    let s = tls::connect(gw.addr, both)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls::alpn(&s).as_deref(), Some("h2"));
    let s = tls::connect(gw.addr, trusted.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls::alpn(&s).as_deref(), Some("http/1.1"));
    let (_, conn) = s.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // TLS 1.2 is served too.
    let tls12 = tls::client_config_versions(&ca.pem, &["http/1.1"], &[&rustls::version::TLS12]);
    let s = tls::connect(gw.addr, tls12)
        .await
        .unwrap_or_else(|e| panic!("TLS 1.2: {e}"));
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // A client that does not trust the test CA fails the handshake.
    let other = tls::client_config(&self::ca("another CA").pem, &["http/1.1"]);
    let err = tls::connect(gw.addr, other).await.err();
    assert!(
        err.is_some_and(|e| e.to_string().contains("UnknownIssuer")),
        "an untrusting client completed the handshake"
    );

    // Plain HTTP on the TLS port: closed at once, never left hanging.
    let mut plain = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    plain
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "plain HTTP on the TLS port was left hanging");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || text.starts_with("HTTP/1.1 400") || buf[0] == 0x15,
        "unexpected answer to plain HTTP: {text:?}"
    );

    assert!(!gw.logs().contains(&token), "a token was logged");
    assert!(!gw.logs().contains(&expired), "a token was logged");
}

/// A socket.io session over WSS through the gateway, after `welcome`, and the serial
/// of the certificate its connection was served.
async fn wss_session(
    gw: &Gateway,
    config: std::sync::Arc<rustls::ClientConfig>,
    token: &str,
) -> (Ws, String) {
    let stream = tls::connect(gw.addr, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let serial = tls::served_serial(&stream);
    let mut ws = Ws::over_tls(stream, gw.addr, &format!("token={token}"), &[])
        .await
        .unwrap_or_else(|e| panic!("WSS upgrade: {e}"));
    assert_eq!(ws.open_and_join().await["user"], "alice");
    (ws, serial)
}

/// An `echo` acknowledged on a held session.
async fn echo(ws: &mut Ws, id: u32, text: &str) {
    assert_eq!(ws.echo(id, &json!(text)).await, json!(text));
}

/// New TLS connections until one is served `serial` (within 10 s, the README's bound).
async fn wait_for_serial(gw: &Gateway, config: std::sync::Arc<rustls::ClientConfig>, serial: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls::connect(gw.addr, config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if tls::served_serial(&s) == serial {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serial {serial} not served within 10 s; logs:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_rotate_live_and_a_broken_pair_keeps_the_last_good_one() {
    let demo = Demo::start("25s").await;
    let ca = ca("rotation CA");
    let first = leaf(&ca, 0x1001, NINETY_DAYS);
    let (gw, files) = tls_gateway(GatewayConfig::hs256(demo.addr), &first).await;
    let dir = files.cert.parent().unwrap_or(Path::new("."));
    let config = tls::client_config(&ca.pem, &["http/1.1"]);

    // A WSS session opened before the rotation.
    let (mut held, serial) = wss_session(&gw, config.clone(), &tokens::valid("alice")).await;
    assert_eq!(serial, first.serial);
    echo(&mut held, 1, "before").await;

    // Renewal: both files replaced by renames.
    let second = leaf(&ca, 0x2002, NINETY_DAYS);
    second.write(dir, "server");
    wait_for_serial(&gw, config.clone(), &second.serial).await;
    gw.proc_.wait_for_line("new certificate installed").await;

    // The session opened before is untouched, and a new one gets in too.
    echo(&mut held, 2, "after").await;
    let (mut fresh, serial) = wss_session(&gw, config.clone(), &tokens::valid("alice")).await;
    assert_eq!(serial, second.serial);
    echo(&mut fresh, 3, "fresh").await;

    // A broken pair (a key that is not the certificate's): refused, logged, and the
    // last good certificate is still served.
    let third = leaf(&ca, 0x3003, NINETY_DAYS);
    let broken = Leaf {
        key_pem: first.key_pem.clone(),
        ..third
    };
    broken.write(dir, "server");
    gw.proc_
        .wait_for_line("changed certificate pair is refused")
        .await;
    let s = tls::connect(gw.addr, config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls::served_serial(&s), second.serial);
    echo(&mut held, 4, "still").await;
    assert!(gw.logs().contains("does not match"), "{}", gw.logs());
}

/// Runs `proxy --check` on a config with `[proxy.tls]`; (success, stdout + stderr).
fn check(cert: &Path, key: &Path, upstream_lines: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:1\"\n\n[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[upstream]\nservers = [\"127.0.0.1:2\"]\n{upstream_lines}\n[auth]\nsecret_env = \"JWT_SECRET\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin("proxy"))
        .arg("--config")
        .arg(&file)
        .arg("--check")
        .env("JWT_SECRET", tests::SECRET)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_validates_the_pair_names_the_key_and_line_and_warns_before_expiry() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = ca("check CA");
    let good = leaf(&ca, 7, NINETY_DAYS);
    let files = good.write(dir.path(), "good");
    let (ok, out) = check(&files.cert, &files.key, "");
    assert!(ok, "{out}");
    assert!(out.contains("ok"), "{out}");
    assert!(!out.contains("expires in"), "{out}");

    // The key of another certificate.
    let other = leaf(&ca, 8, NINETY_DAYS).write(dir.path(), "other");
    let (ok, out) = check(&files.cert, &other.key, "");
    assert!(!ok, "a mismatched pair passed --check");
    assert!(out.contains("proxy.tls (line 4)"), "{out}");
    assert!(out.contains("does not match"), "{out}");

    // A chain out of order: the CA first, then the leaf.
    let reversed = dir.path().join("reversed.pem");
    std::fs::write(&reversed, format!("{}{}", ca.pem, good.cert_pem))
        .unwrap_or_else(|e| panic!("{e}"));
    let (ok, out) = check(&reversed, &files.key, "");
    assert!(!ok, "a chain out of order passed --check");
    assert!(out.contains("proxy.tls.cert_file (line 5)"), "{out}");

    // Not a certificate at all, and a missing key file.
    let (ok, out) = check(&files.key, &dir.path().join("missing.key"), "");
    assert!(!ok);
    assert!(out.contains("proxy.tls.cert_file (line 5)"), "{out}");

    // Expiring in 5 days: valid, with a warning naming the key and line.
    let soon = leaf(&ca, 9, Duration::from_secs(5 * 24 * 3600)).write(dir.path(), "soon");
    let (ok, out) = check(&soon.cert, &soon.key, "");
    assert!(ok, "{out}");
    assert!(out.contains("proxy.tls.cert_file (line 5)"), "{out}");
    assert!(
        out.contains("expires in 4 days") || out.contains("expires in 5 days"),
        "{out}"
    );

    // Upstream TLS keys: a CA file that is no certificate, and keys without `tls`.
    let (ok, out) = check(
        &files.cert,
        &files.key,
        &format!("tls = true\nca_file = \"{}\"\n", files.key.display()),
    );
    assert!(!ok);
    assert!(out.contains("upstream.ca_file (line 11)"), "{out}");
    let (ok, out) = check(&files.cert, &files.key, "sni = \"localhost\"\n");
    assert!(!ok);
    assert!(out.contains("upstream.sni (line 10)"), "{out}");
    assert!(out.contains("upstream.tls = true"), "{out}");
}

/// An HTTP/2 connection to a TLS gateway (ALPN `h2`), driven by a task of its own.
async fn h2_connect(gw: &Gateway, ca: &TestCa) -> h2::client::SendRequest<axum::body::Bytes> {
    let stream = tls::connect(gw.addr, tls::client_config(&ca.pem, &["h2"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tls::alpn(&stream).as_deref(), Some("h2"));
    let (client, connection) = h2::client::handshake(stream)
        .await
        .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn http2_requests_reach_an_http1_upstream_with_host_and_without_the_token() {
    let up = Recorder::start().await;
    let ca = ca("h2 CA");
    let (gw, _) = tls_gateway(GatewayConfig::hs256(up.addr), &leaf(&ca, 5, NINETY_DAYS)).await;
    let client = h2_connect(&gw, &ca).await;
    let mut client = client.ready().await.unwrap_or_else(|e| panic!("{e}"));
    let authority = format!("127.0.0.1:{}", gw.addr.port());
    let token = tokens::valid("alice");
    for (token, want) in [(token.as_str(), 200), ("not-a-token", 401)] {
        let request = http::Request::get(format!(
            "https://{authority}/socket.io/?EIO=4&transport=polling&token={token}"
        ))
        .body(())
        .unwrap_or_else(|e| panic!("{e}"));
        let (answer, _) = client
            .send_request(request, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = answer.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status(), want);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].one("host"), Some(authority.as_str()), "{seen:?}");
    assert_eq!(seen[0].one("x-auth-user"), Some("alice"));
    assert_eq!(seen[0].target, "/socket.io/?EIO=4&transport=polling");
}

/// One HTTP/2 request on `client` (its body, when given, in its own DATA frame, with a
/// `content-length` when `length`): the status, the fields and the body of the answer.
async fn h2_exchange(
    client: &h2::client::SendRequest<axum::body::Bytes>,
    request: http::request::Builder,
    body: Option<(&'static str, bool)>,
) -> (u16, http::HeaderMap, String) {
    let mut send = client
        .clone()
        .ready()
        .await
        .unwrap_or_else(|e| panic!("h2 not ready: {e}"));
    let request = match body {
        Some((b, true)) => request.header("content-length", b.len()),
        _ => request,
    };
    let request = request.body(()).unwrap_or_else(|e| panic!("{e}"));
    let (answer, mut stream) = send
        .send_request(request, body.is_none())
        .unwrap_or_else(|e| panic!("send_request: {e}"));
    if let Some((b, _)) = body {
        stream
            .send_data(axum::body::Bytes::from_static(b.as_bytes()), true)
            .unwrap_or_else(|e| panic!("send_data: {e}"));
    }
    let answer = answer.await.unwrap_or_else(|e| panic!("h2 answer: {e}"));
    let (head, mut body) = answer.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("h2 body: {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (
        head.status.as_u16(),
        head.headers,
        String::from_utf8_lossy(&out).into_owned(),
    )
}

#[tokio::test]
async fn http2_requests_share_the_gateways_upstream_pool_and_http1s_refusals() {
    // Answers chunked (to a GET) or by length (to a POST, a HEAD), with a hop-by-hop field: the
    // HTTP/2 client gets the body in DATA frames and none of the HTTP/1 framing.
    let up = tests::raw_upstream::RawUpstream::scripted(|seen| {
        let body = format!("{} {}", seen.method, String::from_utf8_lossy(&seen.body));
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5\r\n";
        tests::raw_upstream::Reply::keep(if seen.method == "HEAD" {
            format!("{head}Content-Length: 5\r\n\r\n")
        } else if seen.method == "GET" {
            let n = body.len();
            format!("{head}Transfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n")
        } else {
            format!("{head}Content-Length: {}\r\n\r\n{body}", body.len())
        })
    })
    .await;
    let ca = ca("h2 pool CA");
    let (gw, _) = tls_gateway(GatewayConfig::hs256(up.addr), &leaf(&ca, 6, NINETY_DAYS)).await;
    let client = h2_connect(&gw, &ca).await;
    let authority = format!("127.0.0.1:{}", gw.addr.port());
    let token = tokens::valid("alice");
    let uri = |target: &str| format!("https://{authority}{target}");

    // Alice's requests, one after the other: one upstream connection carries them all.
    let requests = [
        ("GET", None),
        ("GET", None),
        ("POST", Some(("by length", true))),
        ("POST", Some(("in chunks", false))),
    ];
    for (i, (method, body)) in requests.iter().enumerate() {
        let request = http::Request::builder()
            .method(*method)
            .uri(uri(&format!("/socket.io/x?i={i}&token={token}")));
        let (status, fields, text) = h2_exchange(&client, request, *body).await;
        assert_eq!(status, 200, "{method} {i}: {text}");
        let sent = body.map_or("", |(b, _)| b);
        assert_eq!(text, format!("{method} {sent}"));
        assert!(fields.get("keep-alive").is_none(), "{fields:?}");
        assert_eq!(
            fields.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain"[..])
        );
    }
    let seen = up.seen();
    assert_eq!(seen.len(), requests.len(), "{seen:?}");
    assert_eq!(
        up.accepted(),
        1,
        "alice's HTTP/2 requests were not carried on one kept-alive upstream connection"
    );
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.conn, 0);
        assert_eq!(
            s.target,
            format!("/socket.io/x?i={i}"),
            "the token went upstream"
        );
        assert_eq!(s.all("host"), [authority.as_str()]);
        assert_eq!(s.all("x-auth-user"), ["alice"]);
    }
    assert!(!seen[2].chunked && seen[2].all("content-length") == ["9"]);
    assert!(seen[3].chunked && seen[3].body == b"in chunks");
    // A HEAD: no body, the upstream's length of the representation kept (RFC 9110 8.6).
    let request = http::Request::head(uri(&format!("/socket.io/x?i=4&token={token}")));
    let (status, fields, text) = h2_exchange(&client, request, None).await;
    assert_eq!((status, text.as_str()), (200, ""));
    let length = fields.get("content-length").map(|v| v.as_bytes());
    assert_eq!(length, Some(&b"5"[..]), "{fields:?}");

    // The gateway's own pool, whose connections carry one identity each and serve both
    // protocols: bob's request gets a connection of its own; alice's next request,
    // over HTTP/1.1, gets hers again.
    let bob = tokens::valid("bob");
    let request = http::Request::get(uri(&format!("/socket.io/x?i=5&token={bob}")));
    let (status, _, text) = h2_exchange(&client, request, None).await;
    assert_eq!((status, text.as_str()), (200, "GET "));
    let h1_config = tls::client_config(&ca.pem, &["http/1.1"]);
    let target = format!("/socket.io/x?i=6&token={token}");
    let h1 = tls::get(gw.addr, h1_config.clone(), &target).await;
    assert_eq!((h1.status, h1.text()), (200, "GET ".to_string()));
    let conns: Vec<usize> = up.seen().iter().map(|s| s.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 0, 0, 0, 1, 0],
        "upstream connection of each request"
    );
    assert_eq!(up.seen()[5].all("x-auth-user"), ["bob"]);

    // A refusal: the same status, fields and body as over HTTP/1.1, nothing upstream.
    let bad = "/socket.io/x?token=not-a-token";
    let (status, fields, text) = h2_exchange(&client, http::Request::get(uri(bad)), None).await;
    let h1 = tls::get(gw.addr, h1_config, bad).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(status, h1.status);
    assert_eq!(text, h1.text());
    for name in ["content-type", "www-authenticate", "cache-control"] {
        let h2_value = fields.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(h2_value, h1.header(name), "{name}");
    }
    assert_eq!(up.seen().len(), conns.len());
    assert_eq!(up.accepted(), 2);
}
