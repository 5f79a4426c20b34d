//! Session bindings under a handshake flood (docs/request-handling.md "Engine.IO sessions"): one gateway
//! in front of an in-process Engine.IO stand-in that opens a session for every
//! handshake (a fresh `sid` each) and echoes the `sid` and `x-auth-user` of every
//! other request. Alice opens a session; then `SESSIONBENCH_HANDSHAKES` (default
//! 200,000) handshakes of 1,000 other users follow over 64 kept-alive connections.
//! Afterwards every binding sampled (Alice's and one handshake in 1,000) still opens
//! to its own user and upstream `sid`, and refuses another user's token (`403`).
//! Prints the handshake rate and the gateway's memory before and after. All traffic
//! stays on 127.0.0.1; the run ends by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig, rss_kib};
use tests::tokens::valid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 64;
const USERS: usize = 1000;
const SAMPLE_EVERY: usize = 1000;

/// The stand-in: a handshake (no `sid` in the query) opens `u<n>`; any other request
/// is answered `<sid>|<x-auth-user>`.
async fn engine_io_stand_in() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let next = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, next.clone()));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, next: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = buf.drain(..end + 4).collect::<Vec<u8>>();
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(&head).is_err() {
            return;
        }
        let target = req.path.unwrap_or_default();
        let sid = target
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("sid="))
            .map(str::to_string);
        let user = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-auth-user"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default();
        let body = match sid {
            None => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                format!(
                    r#"0{{"sid":"u{n:019}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
                )
            }
            Some(sid) => format!("{sid}|{user}"),
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

async fn get(stream: &mut TcpStream, target: &str) -> Response {
    let req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    http1::read_response(stream).await
}

/// The `sid` the client got in a handshake's open packet.
fn sid_of(open: &Response) -> String {
    let text = open.text();
    let json: serde_json::Value = serde_json::from_str(text.get(1..).unwrap_or_default())
        .unwrap_or_else(|e| panic!("not an open packet ({e}): {text}"));
    json["sid"].as_str().unwrap_or_default().to_string()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::main]
async fn main() {
    let handshakes: usize = std::env::var("SESSIONBENCH_HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let upstream = engine_io_stand_in().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("session.key");
    std::fs::write(&key, "the key of the session bench, 32 bytes or more\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = GatewayConfig::hs256(upstream).rust_log("warn");
    cfg.auth.push_str(&format!(
        "reject_with = \"http\"\nsession_key_file = \"{}\"\n",
        key.display()
    ));
    let gw = Gateway::start_in(&cfg, dir).await;
    let tokens: Arc<Vec<String>> =
        Arc::new((0..USERS).map(|u| valid(&format!("user-{u}"))).collect());
    let alice_token = valid("alice");
    let mallory_token = valid("mallory");

    let mut c = connect(gw.addr).await;
    let alice = sid_of(&get(&mut c, &format!("{POLL}&token={alice_token}")).await);
    let rss_before = rss_kib(gw.proc_.pid());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONNECTIONS {
        let (addr, tokens) = (gw.addr, tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = connect(addr).await;
            let mut samples = Vec::new();
            for i in (t..handshakes).step_by(CONNECTIONS) {
                let user = i % USERS;
                let open = get(&mut stream, &format!("{POLL}&token={}", tokens[user])).await;
                assert_eq!(open.status, 200, "handshake {i}: {}", open.text());
                if i % SAMPLE_EVERY == 0 {
                    samples.push((user, sid_of(&open)));
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib(gw.proc_.pid());

    // Every sampled binding, Alice's first: its own user gets its upstream sid, another
    // user's token is refused.
    let mut intact = 0;
    let mut checked = vec![(usize::MAX, alice)];
    checked.extend(samples);
    for (user, sid) in &checked {
        let (own, other) = match *user {
            usize::MAX => (alice_token.as_str(), mallory_token.as_str()),
            u => (tokens[u].as_str(), tokens[(u + 1) % USERS].as_str()),
        };
        let mine = get(&mut c, &format!("{POLL}&sid={sid}&token={own}")).await;
        let theirs = get(&mut c, &format!("{POLL}&sid={sid}&token={other}")).await;
        let name = match *user {
            usize::MAX => "alice".to_string(),
            u => format!("user-{u}"),
        };
        let ok = mine.status == 200
            && mine.text().ends_with(&format!("|{name}"))
            && theirs.status == 403
            && theirs.json()["error"] == "session_mismatch";
        if ok {
            intact += 1;
        } else {
            println!(
                "binding of {name} broken: own {} {:?}, other {} {:?}",
                mine.status,
                mine.text(),
                theirs.status,
                theirs.text()
            );
        }
    }
    let rate = handshakes as f64 / elapsed.as_secs_f64();
    println!(
        "| handshakes | seconds | handshakes/s | bindings checked | intact | gateway RSS before | after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {handshakes} | {:.1} | {rate:.0} | {} | {intact} | {rss_before} KiB | {rss_after} KiB |",
        elapsed.as_secs_f64(),
        checked.len()
    );
}
