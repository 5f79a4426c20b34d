//! Kept-alive upstream connections and identity (docs/request-handling.md "Upstream
//! connections"): an upstream that answers one request twice shifts every later answer
//! on its connection by one, and no HTTP/1 proxy can tell a stale answer from the next
//! one (HTTP/1.1 answers carry nothing that names their request, RFC 9112 9.3). What
//! the gateway guarantees is that such an upstream can never show one client an answer
//! meant for another: a kept-alive connection is used again only for requests carrying
//! the same verified identity, or, on a public path (where the app's own session
//! cookie may be all that tells clients apart), only by the same client connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::{RawSeen, RawUpstream, Reply};
use tests::tokens::valid;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Requests each client sends, one after the other, on one connection.
const REQUESTS: usize = 150;
/// Clients per identity, all at once.
const CLIENTS: usize = 2;

/// An answer whose body names the identity the upstream saw (its `x-auth-user`, `-`
/// for none), the client's own cookie (`-` for none) and the request.
fn answer(seen: &RawSeen, stale: bool) -> Vec<u8> {
    let first = |name: &str| seen.all(name).first().copied().unwrap_or("-").to_string();
    let body = format!(
        "{}user={} cookie={} target={}",
        if stale { "stale " } else { "" },
        first("x-auth-user"),
        first("cookie"),
        seen.target
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Every request answered, then answered again 2 ms later.
fn twice(seen: &RawSeen) -> Reply {
    Reply::keep(answer(seen, false)).then(Duration::from_millis(2), answer(seen, true))
}

/// The word of `body` that starts with `key=`, without it.
fn named<'b>(body: &'b str, key: &str) -> &'b str {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// One client of one identity (`None`: a public path, with an app session cookie of its
/// own): `REQUESTS` requests on one connection; the answers meant for another client,
/// and the `200`s.
async fn client(gw: SocketAddr, user: Option<&'static str>, n: usize) -> (Vec<String>, usize) {
    let mut s = TcpStream::connect(gw)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut buf = Vec::new();
    let mut wrong = Vec::new();
    let mut ok = 0;
    let token = user.map(valid);
    let cookie = format!("app=client-{}-{n}", user.unwrap_or("public"));
    for i in 0..REQUESTS {
        let target = match &token {
            Some(t) => format!("/socket.io/x?c={n}&i={i}&token={t}"),
            None => format!("/login?c={n}&i={i}"),
        };
        let request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nCookie: {cookie}\r\n\r\n");
        if s.write_all(request.as_bytes()).await.is_err() {
            s = reconnect(gw).await;
            buf.clear();
            continue;
        }
        let Some(r) = http1::next_response(&mut s, &mut buf, false).await else {
            s = reconnect(gw).await;
            buf.clear();
            continue;
        };
        if r.status != 200 {
            continue;
        }
        ok += 1;
        let body = r.text();
        // A user's answers may come over any of that user's kept connections; a
        // public one only over its own client connection's.
        let theirs = match user {
            Some(u) => named(&body, "user") == u,
            None => named(&body, "user") == "-" && named(&body, "cookie") == cookie,
        };
        if !theirs {
            wrong.push(format!("{cookie} got {body:?}"));
        }
    }
    (wrong, ok)
}

async fn reconnect(gw: SocketAddr) -> TcpStream {
    TcpStream::connect(gw)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_answers_twice_never_shows_one_client_another_clients_answer() {
    let up = RawUpstream::scripted(twice).await;
    let mut cfg = GatewayConfig::hs256(up.addr);
    cfg.auth.push_str("reject_with = \"http\"\n");
    let gw = Gateway::start(&cfg).await;
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for user in [Some("alice"), Some("bob"), None] {
        for n in 0..CLIENTS {
            let started = started.clone();
            let addr = gw.addr;
            tasks.push(tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                client(addr, user, n).await
            }));
        }
    }
    let mut wrong = Vec::new();
    let mut ok = 0;
    for t in tasks {
        let (w, o) = t.await.unwrap_or_else(|e| panic!("client: {e}"));
        wrong.extend(w);
        ok += o;
    }
    let total = 3 * CLIENTS * REQUESTS;
    assert!(
        wrong.is_empty(),
        "{} of {total} answers went to another identity, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // The case is real only when answers came back over kept-alive connections.
    assert!(ok >= total / 2, "only {ok} of {total} requests got a 200");
    assert!(
        up.accepted() < ok,
        "{} upstream connections for {ok} answers: none was kept alive",
        up.accepted()
    );
}
