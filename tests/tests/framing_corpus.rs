//! The framing corpus: byte-exact requests through the real gateway binary to a raw
//! recording keep-alive upstream whose answer each request scripts (`reply=` in its
//! query), on a public path and on a protected one with a valid token. Each case states
//! what a production reverse proxy must do, judged only by what the upstream receives
//! and what the client gets back (never by chunk boundaries):
//!
//! - request bodies by `Content-Length` and chunked (extensions, trailers) reach the
//!   upstream once, decoded to the same bytes, in a valid framing (RFC 9112 6, 7.1);
//! - pipelined requests are forwarded once each, in order, and answered in order
//!   (RFC 9112 9.3.2);
//! - `Expect: 100-continue` gets `100 Continue` before the body is sent (RFC 9110
//!   10.1.1);
//! - the answers to `HEAD`, `204` and `304` carry no body, and the connection goes on
//!   (RFC 9112 6.3, 1-2);
//! - a close-delimited answer reaches the client whole (RFC 9112 6.3, 8); one cut short
//!   never looks complete (RFC 9112 8), and the broken upstream connection is not used
//!   again;
//! - `upstream.read_timeout` turns a slow answer into `504`, and the late answer never
//!   reaches another request;
//! - an upstream answer the gateway cannot frame safely is `502` with nothing of it
//!   relayed, and its connection closed (RFC 9112 6.3, 5; RFC 9110 15.6.3);
//! - a clean keep-alive answer lets the upstream connection serve the next request of
//!   the same identity.

use std::net::SocketAddr;
use std::time::Duration;

use tests::http1::{self, Response};
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::{RawSeen, RawUpstream, Reply};
use tests::tokens::valid;
use tests::wire::{echo, forwarded_problem, read_until_close, shown, split_responses};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a client waits for the gateway to close a connection, or for a 100.
const LIMIT: Duration = Duration::from_secs(5);

/// The body of the close-delimited answer: 20 kB, more than one read.
fn long_body() -> Vec<u8> {
    (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Marks what an answer the gateway must not relay carries, in a header and the body.
const SECRET: &str = "UPSTREAM-SECRET";

/// The value of query parameter `name` in `target`.
fn query_value<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The upstream's answer to each request, by its `reply=` parameter (an echo without).
fn script(seen: &RawSeen) -> Reply {
    let bad = |framing: &str| {
        Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nX-Secret: {SECRET}\r\n{framing}\r\n5\r\n{}\r\n0\r\n\r\n",
            &SECRET[..5]
        ))
    };
    match query_value(&seen.target, "reply").unwrap_or("echo") {
        "head100" => Reply::keep(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n",
        ),
        "204" => Reply::keep("HTTP/1.1 204 No Content\r\nX-Upstream: 204\r\n\r\n"),
        "304" => {
            Reply::keep("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n")
        }
        "close-delimited" => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
            bytes.extend_from_slice(&long_body());
            Reply::close(bytes)
        }
        "truncated" => Reply::close("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
        "slow" => Reply::keep(echo(seen)).after(Duration::from_millis(1500)),
        "big-head" => {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            let filler = "x".repeat(1000);
            for i in 0..80 {
                head.push_str(&format!("X-Secret-{i}: {SECRET}{filler}\r\n"));
            }
            head.push_str("Content-Length: 2\r\n\r\nok");
            Reply::keep(head)
        }
        "cl-te" => bad("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
        "te-cl" => bad("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
        "two-lengths" => Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nX-Secret: {SECRET}\r\nContent-Length: 5\r\nContent-Length: 15\r\n\r\n{SECRET}"
        )),
        "length-list" => Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nX-Secret: {SECRET}\r\nContent-Length: 5, 15\r\n\r\n{SECRET}"
        )),
        "plus-length" => Reply::keep(format!(
            "HTTP/1.1 200 OK\r\nX-Secret: {SECRET}\r\nContent-Length: +15\r\n\r\n{SECRET}"
        )),
        _ => Reply::keep(echo(seen)),
    }
}

fn config(upstream: SocketAddr) -> GatewayConfig {
    let mut cfg = GatewayConfig::hs256(upstream);
    cfg.auth.push_str("reject_with = \"http\"\n");
    cfg
}

/// A scripted upstream and a gateway in front of it.
async fn setup(upstream_lines: &str) -> (RawUpstream, Gateway) {
    let up = RawUpstream::scripted(script).await;
    let mut cfg = config(up.addr);
    cfg.upstream_lines = upstream_lines.to_string();
    let gw = Gateway::start(&cfg).await;
    (up, gw)
}

/// Where a request goes: a public path, or a protected one with a valid token.
#[derive(Debug, Clone, Copy)]
enum Place {
    Public,
    Protected,
}

impl Place {
    const BOTH: [Place; 2] = [Place::Public, Place::Protected];

    /// The target to send with `query`, and the one the upstream must receive (the
    /// token removed, `auth.strip_token`).
    fn target(self, query: &str) -> (String, String) {
        match self {
            Place::Public => {
                let t = format!("/login?{query}");
                (t.clone(), t)
            }
            Place::Protected => (
                format!("/socket.io/x?{query}&token={}", valid("alice")),
                format!("/socket.io/x?{query}"),
            ),
        }
    }

    /// Whether the upstream got the identity this place calls for: the token's user on
    /// a protected path, none on a public one.
    fn identity_problem(self, seen: &RawSeen) -> Option<String> {
        let users = seen.all("x-auth-user");
        match self {
            Place::Public if users.is_empty() => None,
            Place::Protected if users == ["alice"] => None,
            _ => Some(format!("x-auth-user {users:?} on the {self:?} path")),
        }
    }
}

/// A new connection with `bytes` written.
async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    s
}

/// The next final response on `s` (1xx skipped), `None` when the connection ended or
/// no complete response came in time.
async fn final_response(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Option<Response> {
    loop {
        let r = http1::next_response(s, buf, head).await?;
        if r.status >= 200 {
            return Some(r);
        }
    }
}

/// Whether `r` is the echo of `METHOD target`.
fn echo_problem(r: Option<&Response>, method: &str, target: &str) -> Option<String> {
    let want = format!("{method} {target}");
    match r {
        None => Some(format!("no complete answer to {want}")),
        Some(r) if r.status == 200 && r.text() == want => None,
        Some(r) => Some(format!(
            "answer {} {:?} where the echo of {want:?} was due",
            r.status,
            r.text()
        )),
    }
}

/// The requests the upstream parsed since `before` requests.
fn since(up: &RawUpstream, before: usize) -> Vec<RawSeen> {
    up.seen().get(before..).unwrap_or_default().to_vec()
}

/// Fails with every problem found, each naming its case.
fn report(failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{} problem(s) across {total} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn request_bodies_by_content_length_and_chunked_reach_the_upstream_once_decoded() {
    let (up, gw) = setup("").await;
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut big_chunked = Vec::new();
    for part in big.chunks(1000) {
        big_chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        big_chunked.extend_from_slice(part);
        big_chunked.extend_from_slice(b"\r\n");
    }
    big_chunked.extend_from_slice(b"0\r\n\r\n");
    let mut one_byte_chunks = Vec::new();
    for b in b"hello world" {
        one_byte_chunks.extend_from_slice(b"1\r\n");
        one_byte_chunks.push(*b);
        one_byte_chunks.extend_from_slice(b"\r\n");
    }
    one_byte_chunks.extend_from_slice(b"0\r\n\r\n");
    let mut big_length = format!("Content-Length: {}\r\n\r\n", big.len()).into_bytes();
    big_length.extend_from_slice(&big);
    let chunked = |body: &[u8]| [&b"Transfer-Encoding: chunked\r\n\r\n"[..], body].concat();
    // (name, framing header and body as sent, decoded body)
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "Content-Length",
            b"Content-Length: 11\r\n\r\nhello world".to_vec(),
            b"hello world".to_vec(),
        ),
        (
            "Content-Length: 0",
            b"Content-Length: 0\r\n\r\n".to_vec(),
            Vec::new(),
        ),
        ("Content-Length, 100 kB binary", big_length, big.clone()),
        (
            "chunked with extensions and trailers",
            chunked(
                b"5;ext=1\r\nhello\r\n6;a=b;c=\"d e\"\r\n world\r\n0;last\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
            ),
            b"hello world".to_vec(),
        ),
        (
            "chunked, upper-case hex sizes",
            chunked(b"A\r\n0123456789\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"),
            b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec(),
        ),
        (
            "chunked, one-byte chunks",
            chunked(&one_byte_chunks),
            b"hello world".to_vec(),
        ),
        ("chunked, empty", chunked(b"0\r\n\r\n"), Vec::new()),
        (
            "chunked, 100 kB in 1000-byte chunks",
            chunked(&big_chunked),
            big.clone(),
        ),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for place in Place::BOTH {
        for (i, (name, framed, decoded)) in cases.iter().enumerate() {
            total += 1;
            let name = format!("{name} ({place:?})");
            let (sent, forwarded) = place.target(&format!("body={i}"));
            let mut bytes = format!(
                "POST {sent} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n"
            )
            .into_bytes();
            bytes.extend_from_slice(framed);
            let before = up.seen().len();
            let mut s = send(gw.addr, &bytes).await;
            let mut buf = Vec::new();
            let r = final_response(&mut s, &mut buf, false).await;
            if let Some(p) = echo_problem(r.as_ref(), "POST", &forwarded) {
                failures.push(format!("{name}: {p}"));
                continue;
            }
            let seen = since(&up, before);
            let problem = match seen.as_slice() {
                [one] if one.body != *decoded => Some(format!(
                    "the upstream got a body of {} bytes, not the {} sent",
                    one.body.len(),
                    decoded.len()
                )),
                [one] => forwarded_problem(one).or_else(|| place.identity_problem(one)),
                more => Some(format!("the upstream parsed {} requests", more.len())),
            };
            if let Some(p) = problem {
                failures.push(format!("{name}: {p}"));
            }
        }
    }
    report(&failures, total);
}

#[tokio::test]
async fn pipelined_requests_are_each_forwarded_once_in_order_and_answered_in_order() {
    let (up, gw) = setup("").await;
    let mut failures = Vec::new();
    for first in Place::BOTH {
        let other = match first {
            Place::Public => Place::Protected,
            Place::Protected => Place::Public,
        };
        // (place, method, framing and body as sent, decoded body)
        let requests: [(Place, &str, &str, &str); 5] = [
            (first, "GET", "\r\n", ""),
            (other, "POST", "Content-Length: 5\r\n\r\nhello", "hello"),
            (
                first,
                "POST",
                "Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
                "hello world",
            ),
            (other, "DELETE", "\r\n", ""),
            (first, "PUT", "Content-Length: 3\r\n\r\nabc", "abc"),
        ];
        let mut bytes = String::new();
        let mut expected = Vec::new();
        for (i, (place, method, framed, body)) in requests.iter().enumerate() {
            let (sent, forwarded) = place.target(&format!("pipe={i}"));
            bytes.push_str(&format!("{method} {sent} HTTP/1.1\r\nHost: gw\r\n{framed}"));
            expected.push((*place, method.to_string(), forwarded, body.to_string()));
        }
        let before = up.seen().len();
        let mut s = send(gw.addr, bytes.as_bytes()).await;
        let mut buf = Vec::new();
        for (i, (_, method, forwarded, _)) in expected.iter().enumerate() {
            let r = final_response(&mut s, &mut buf, false).await;
            if let Some(p) = echo_problem(r.as_ref(), method, forwarded) {
                failures.push(format!("starting {first:?}, answer {}: {p}", i + 1));
                break;
            }
        }
        let seen = since(&up, before);
        let got: Vec<(String, String, String)> = seen
            .iter()
            .map(|s| {
                (
                    s.method.clone(),
                    s.target.clone(),
                    String::from_utf8_lossy(&s.body).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = expected
            .iter()
            .map(|(_, m, t, b)| (m.clone(), t.clone(), b.clone()))
            .collect();
        if got != want {
            failures.push(format!(
                "starting {first:?}: the upstream parsed {got:?}, not {want:?}"
            ));
            continue;
        }
        for (s, (place, ..)) in seen.iter().zip(&expected) {
            if let Some(p) = forwarded_problem(s).or_else(|| place.identity_problem(s)) {
                failures.push(format!(
                    "starting {first:?}, {} {}: {p}",
                    s.method, s.target
                ));
            }
        }
    }
    report(&failures, 2);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (up, gw) = setup("").await;
    let mut failures = Vec::new();
    for place in Place::BOTH {
        let (sent, forwarded) = place.target("expect=1");
        let head = format!(
            "POST {sent} HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
        );
        let before = up.seen().len();
        let mut s = send(gw.addr, head.as_bytes()).await;
        let mut buf = Vec::new();
        // The body is held back until the 100 arrives (RFC 9110 10.1.1).
        let first = tokio::time::timeout(LIMIT, http1::next_response(&mut s, &mut buf, false))
            .await
            .ok()
            .flatten();
        match first {
            Some(r) if r.status == 100 => {}
            Some(r) => {
                failures.push(format!(
                    "{place:?}: {} {:?} before the body was sent, not 100 Continue",
                    r.status,
                    r.text()
                ));
                continue;
            }
            None => {
                failures.push(format!(
                    "{place:?}: no 100 Continue within {LIMIT:?} of the head"
                ));
                continue;
            }
        }
        s.write_all(b"hello world")
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "POST", &forwarded) {
            failures.push(format!("{place:?}: {p}"));
            continue;
        }
        let seen = since(&up, before);
        match seen.as_slice() {
            [one] if one.body == b"hello world" => {
                if let Some(p) = forwarded_problem(one).or_else(|| place.identity_problem(one)) {
                    failures.push(format!("{place:?}: {p}"));
                }
            }
            other => failures.push(format!(
                "{place:?}: the upstream parsed {:?}",
                other
                    .iter()
                    .map(|s| (s.method.clone(), s.target.clone(), s.body.len()))
                    .collect::<Vec<_>>()
            )),
        }
    }
    report(&failures, 2);
}

#[tokio::test]
async fn the_answer_to_head_has_no_body_and_the_connection_goes_on() {
    let (up, gw) = setup("").await;
    let mut failures = Vec::new();
    for place in Place::BOTH {
        let (head_target, _) = place.target("reply=head100");
        let (next_target, next_forwarded) = place.target("after=head");
        let mut s = send(
            gw.addr,
            format!("HEAD {head_target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        match final_response(&mut s, &mut buf, true).await {
            Some(r) if r.status == 200 => {
                if r.header("content-length").is_some_and(|v| v != "100") {
                    failures.push(format!(
                        "{place:?}: the HEAD answer's Content-Length became {:?}",
                        r.header("content-length")
                    ));
                }
            }
            other => {
                failures.push(format!(
                    "{place:?}: HEAD answered {:?}",
                    other.map(|r| (r.status, r.text()))
                ));
                continue;
            }
        }
        // Nothing may follow the head: the next bytes are the next answer.
        s.write_all(format!("GET {next_target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &next_forwarded) {
            failures.push(format!("{place:?}, the request after HEAD: {p}"));
        }
    }
    let methods: Vec<String> = up.seen().iter().map(|s| s.method.clone()).collect();
    if methods != ["HEAD", "GET", "HEAD", "GET"] {
        failures.push(format!("the upstream parsed {methods:?}"));
    }
    report(&failures, 2);
}

#[tokio::test]
async fn answers_204_and_304_carry_no_body_and_the_connection_goes_on() {
    let (_up, gw) = setup("").await;
    let mut failures = Vec::new();
    let mut total = 0;
    for place in Place::BOTH {
        for status in [204u16, 304] {
            total += 1;
            let name = format!("{status} ({place:?})");
            let (target, _) = place.target(&format!("reply={status}"));
            let (next_target, next_forwarded) = place.target(&format!("after={status}"));
            let mut s = send(
                gw.addr,
                format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
            )
            .await;
            let mut buf = Vec::new();
            match final_response(&mut s, &mut buf, false).await {
                Some(r) if r.status == status => {}
                other => {
                    failures.push(format!(
                        "{name}: answered {:?}",
                        other.map(|r| (r.status, r.text()))
                    ));
                    continue;
                }
            }
            s.write_all(format!("GET {next_target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("write: {e}"));
            let r = final_response(&mut s, &mut buf, false).await;
            if let Some(p) = echo_problem(r.as_ref(), "GET", &next_forwarded) {
                failures.push(format!("{name}, the request after it: {p}"));
            }
        }
    }
    report(&failures, total);
}

#[tokio::test]
async fn a_close_delimited_answer_reaches_the_client_whole() {
    let (_up, gw) = setup("").await;
    let mut failures = Vec::new();
    for place in Place::BOTH {
        let (target, _) = place.target("reply=close-delimited");
        let mut s = send(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        // Read by the answer's own framing: a length, chunks, or the end of the
        // connection (RFC 9112 6.3, 8).
        match http1::next_response(&mut s, &mut buf, false).await {
            Some(r) if r.status == 200 && r.body == long_body() => {}
            Some(r) => failures.push(format!(
                "{place:?}: {} with {} bytes of the {}-byte body",
                r.status,
                r.body.len(),
                long_body().len()
            )),
            None => failures.push(format!(
                "{place:?}: no complete answer ({} bytes came)",
                buf.len()
            )),
        }
        // The upstream closed that connection: the next request still works.
        let (next, next_forwarded) = place.target("after=close-delimited");
        let mut s = send(
            gw.addr,
            format!("GET {next} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &next_forwarded) {
            failures.push(format!("{place:?}, the next request: {p}"));
        }
    }
    report(&failures, 2);
}

#[tokio::test]
async fn an_answer_cut_short_never_looks_complete_and_its_connection_is_not_reused() {
    let (up, gw) = setup("").await;
    let mut failures = Vec::new();
    for place in Place::BOTH {
        let (target, _) = place.target("reply=truncated");
        let mut s = send(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        // The upstream promised 100 bytes and sent 10: the client may get the head and
        // those 10 bytes, then the connection must close (RFC 9112 8: an incomplete
        // message is never passed on as complete), or a 502 before any of it.
        let (bytes, closed) = read_until_close(&mut s, LIMIT).await;
        let (answers, _) = split_responses(&bytes);
        let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        if !closed {
            failures.push(format!(
                "{place:?}: the client connection stayed open after a cut answer: {:?}",
                shown(&bytes)
            ));
        } else if !(statuses.is_empty() || statuses == [502]) {
            failures.push(format!(
                "{place:?}: the client got complete answers {statuses:?} from a cut one: {:?}",
                shown(&bytes)
            ));
        }
        // A new client connection still gets its own answer.
        let (next, next_forwarded) = place.target("after=truncated");
        let before = up.seen().len();
        let mut s = send(
            gw.addr,
            format!("GET {next} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &next_forwarded) {
            failures.push(format!("{place:?}, the next request: {p}"));
        }
        let seen = since(&up, before);
        if seen.len() != 1 {
            failures.push(format!(
                "{place:?}: the next request reached the upstream {} times",
                seen.len()
            ));
        }
    }
    report(&failures, 2);
}

#[tokio::test]
async fn a_slow_answer_is_waited_for_within_read_timeout_and_504_past_it() {
    let mut failures = Vec::new();
    // The default read_timeout (60 s) waits the 1.5 s.
    let (_up, gw) = setup("").await;
    for place in Place::BOTH {
        let (target, forwarded) = place.target("reply=slow");
        let mut s = send(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &forwarded) {
            failures.push(format!("{place:?}, read_timeout 60s: {p}"));
        }
    }
    // 500 ms: 504, and the late answer must not reach a later request (the timed-out
    // upstream connection is not used again).
    let (_up, gw) = setup("read_timeout = \"500ms\"\n").await;
    for place in Place::BOTH {
        let (target, _) = place.target("reply=slow");
        let mut s = send(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        match final_response(&mut s, &mut buf, false).await {
            Some(r) if r.status == 504 => {}
            other => failures.push(format!(
                "{place:?}, read_timeout 500ms: answered {:?}, not 504",
                other.map(|r| (r.status, r.text()))
            )),
        }
        let (next, next_forwarded) = place.target("after=slow");
        let mut s = send(
            gw.addr,
            format!("GET {next} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes(),
        )
        .await;
        let mut buf = Vec::new();
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &next_forwarded) {
            failures.push(format!("{place:?}, the request after the 504: {p}"));
        }
    }
    report(&failures, 4);
}

#[tokio::test]
async fn an_answer_the_gateway_cannot_frame_safely_is_502_with_nothing_of_it_relayed() {
    let (up, gw) = setup("").await;
    let rows = [
        ("a head over 64 KiB", "big-head"),
        ("Content-Length and Transfer-Encoding: chunked", "cl-te"),
        ("Transfer-Encoding: chunked and Content-Length", "te-cl"),
        ("two different Content-Length fields", "two-lengths"),
        ("Content-Length: 5, 15", "length-list"),
        ("Content-Length: +15", "plus-length"),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for place in Place::BOTH {
        for (name, reply) in rows {
            total += 1;
            let name = format!("{name} ({place:?})");
            let (target, forwarded) = place.target(&format!("reply={reply}"));
            let mut s = send(
                gw.addr,
                format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let (bytes, closed) = read_until_close(&mut s, LIMIT).await;
            let text = String::from_utf8_lossy(&bytes);
            let short = shown(&bytes);
            let (answers, _) = split_responses(&bytes);
            if !closed {
                failures.push(format!("{name}: the connection stayed open: {short:?}"));
            } else if answers.len() != 1 || answers[0].status != 502 {
                failures.push(format!("{name}: not one 502: {short:?}"));
            } else if text.contains(SECRET) || text.contains(&SECRET[..5]) {
                failures.push(format!("{name}: the upstream's answer leaked: {short:?}"));
            }
            // RFC 9112 6.3, 5: the proxy closes its connection to the server (what
            // follows on it cannot be framed either).
            let conn = up
                .seen()
                .iter()
                .find(|s| s.target == forwarded)
                .map(|s| s.conn);
            match conn {
                None => failures.push(format!("{name}: the request never reached the upstream")),
                Some(c) => {
                    if !up.wait_conn_ended(c, LIMIT).await {
                        failures.push(format!(
                            "{name}: the upstream connection stayed open for {LIMIT:?}"
                        ));
                    }
                }
            }
        }
    }
    report(&failures, total);
}

#[tokio::test]
async fn a_clean_keep_alive_answer_lets_the_upstream_connection_serve_the_next_request() {
    let (up, gw) = setup("").await;
    let mut s = TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut buf = Vec::new();
    let mut failures = Vec::new();
    let places = [
        Place::Public,
        Place::Protected,
        Place::Public,
        Place::Protected,
    ];
    for (i, place) in places.into_iter().enumerate() {
        let (target, forwarded) = place.target(&format!("seq={i}"));
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let r = final_response(&mut s, &mut buf, false).await;
        if let Some(p) = echo_problem(r.as_ref(), "GET", &forwarded) {
            failures.push(format!("request {}: {p}", i + 1));
        }
    }
    if up.seen().len() != places.len() {
        failures.push(format!("the upstream parsed {} requests", up.seen().len()));
    }
    // A production proxy keeps the connection it got a complete, persistent answer on
    // (RFC 9112 9.3) and sends the next request on it: here, the next request of the
    // same identity (public, or alice's; tests/tests/upstream_reuse.rs says why).
    if up.accepted() != 2 {
        failures.push(format!(
            "four sequential requests of two identities took {} upstream connections",
            up.accepted()
        ));
    }
    report(&failures, places.len());
}
