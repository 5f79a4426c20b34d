//! A property of the gateway's HTTP/1.1 forwarding, through the real gateway binary to
//! a raw recording keep-alive upstream: random request sequences (methods GET, POST,
//! PUT, DELETE; paths outside `/socket.io/` and inside it with a valid token; random
//! end-to-end headers, hop-by-hop ones and client copies of the identity header; bodies
//! by `Content-Length` or chunked in random splits, with extensions and trailers), all
//! pipelined in one write on one connection, reach the upstream as exactly the requests
//! a reference serializer says the gateway must forward, in order, and are answered in
//! order. The reference, in parsed form: the method; the target with the token pair
//! removed (`auth.strip_token`); the end-to-end headers (RFC 9110 7.6.1: `Connection`,
//! the fields it names, `Keep-Alive`, `TE`, `Transfer-Encoding` and `Upgrade` are
//! hop-by-hop; framing is compared as decoded bodies, RFC 9112 6-7) with the order of
//! fields of one name kept (RFC 9110 5.3), minus client copies of the identity headers,
//! plus the identity headers of the token on a protected path; the decoded body.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use tests::http1;
use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::{RawSeen, RawUpstream, Reply};
use tests::tokens::valid;
use tests::wire::{echo, echo_text, forwarded_problem};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How a body is framed on the client's side.
#[derive(Debug, Clone)]
enum Framing {
    Length,
    /// Chunks of these sizes in turn; an extension on each chunk line; a trailer.
    Chunked {
        sizes: Vec<usize>,
        extension: bool,
        trailer: bool,
    },
}

/// Hop-by-hop fields a client may send, none of which may reach the upstream.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// `Connection: keep-alive, X-Hop` and `X-Hop: 1` (the field it names goes too).
    NamedByConnection,
    KeepAlive,
    Te,
}

/// One random request.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    protected: bool,
    path: String,
    query: Vec<(String, String)>,
    /// Where the token pair goes among the query pairs (protected paths).
    token_at: usize,
    headers: Vec<(String, String)>,
    hops: Vec<Hop>,
    /// A client copy of the identity header, under this spelling.
    spoof: Option<&'static str>,
    body: Option<(Vec<u8>, Framing)>,
}

/// The identity headers the test gateway sets for [`valid`]`("alice")`.
const IDENTITY: [(&str, &str); 3] = [
    ("x-auth-user", "alice"),
    ("x-auth-role", "admin"),
    ("x-auth-org", "42"),
];

/// Fields that are not end-to-end, or frame the message (compared as the decoded body).
const NOT_COMPARED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

impl Req {
    /// The bytes the client writes.
    fn serialize(&self, token: &str) -> Vec<u8> {
        let mut pairs: Vec<String> = self.query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        if self.protected {
            pairs.insert(self.token_at.min(pairs.len()), format!("token={token}"));
        }
        let target = if pairs.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, pairs.join("&"))
        };
        let mut head = format!("{} {target} HTTP/1.1\r\nHost: gw\r\n", self.method);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        for hop in &self.hops {
            head.push_str(match hop {
                Hop::NamedByConnection => "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n",
                Hop::KeepAlive => "Keep-Alive: timeout=5\r\n",
                Hop::Te => "TE: trailers\r\n",
            });
        }
        if let Some(name) = self.spoof {
            head.push_str(&format!("{name}: mallory\r\n"));
        }
        let mut out = head.into_bytes();
        match &self.body {
            None => out.extend_from_slice(b"\r\n"),
            Some((body, Framing::Length)) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Some((
                body,
                Framing::Chunked {
                    sizes,
                    extension,
                    trailer,
                },
            )) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = &body[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = sizes[i % sizes.len()].min(rest.len());
                    i += 1;
                    let ext = if *extension { ";e=1" } else { "" };
                    out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"X-Trailer: t\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    /// The target the upstream must receive.
    fn forwarded_target(&self) -> String {
        let pairs: Vec<String> = self.query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        if pairs.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, pairs.join("&"))
        }
    }

    /// The end-to-end fields the upstream must receive, names lower-cased, stably
    /// sorted by name (the order within one name kept).
    fn forwarded_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![("host".to_string(), "gw".to_string())];
        h.extend(
            self.headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone())),
        );
        if self.protected {
            h.extend(IDENTITY.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        }
        h.sort_by(|a, b| a.0.cmp(&b.0));
        h
    }
}

/// The end-to-end fields as the upstream received them, as [`Req::forwarded_headers`].
fn received_headers(seen: &RawSeen) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = seen
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .filter(|(n, _)| !NOT_COMPARED.contains(&n.as_str()))
        .collect();
    h.sort_by(|a, b| a.0.cmp(&b.0));
    h
}

fn req_strategy() -> impl Strategy<Value = Req> {
    let method = prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")];
    let place = (
        any::<bool>(),
        prop_oneof![
            Just("login"),
            Just("api/items"),
            Just("static/app.js"),
            Just("a/b/c")
        ],
        "[a-z0-9]{0,8}",
    )
        .prop_map(|(protected, base, seg)| {
            let path = if protected {
                format!("/socket.io/{seg}")
            } else if seg.is_empty() {
                format!("/{base}")
            } else {
                format!("/{base}/{seg}")
            };
            (protected, path)
        });
    let query = prop::collection::vec(("q[a-z]{0,4}", "[a-z0-9]{0,5}"), 0..3);
    let name = prop_oneof![
        Just("Accept"),
        Just("User-Agent"),
        Just("X-Request-Id"),
        Just("Content-Type"),
        Just("X-Custom"),
        Just("cache-control"),
        Just("X-Dup"),
        Just("Accept-Language"),
    ];
    let value = "[a-zA-Z0-9]([a-zA-Z0-9 ,;=/._-]{0,16}[a-zA-Z0-9])?";
    let headers = prop::collection::vec((name, value), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect::<Vec<_>>()
    });
    let hops = prop::collection::vec(
        prop_oneof![
            Just(Hop::NamedByConnection),
            Just(Hop::KeepAlive),
            Just(Hop::Te)
        ],
        0..2,
    );
    let spoof = prop::option::of(prop_oneof![
        Just("X-Auth-User"),
        Just("x-auth-user"),
        Just("X_Auth_User")
    ]);
    let framing = prop_oneof![
        Just(Framing::Length),
        (
            prop::collection::vec(1usize..64, 1..6),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(sizes, extension, trailer)| Framing::Chunked {
                sizes,
                extension,
                trailer,
            }),
    ];
    let body = (prop::collection::vec(any::<u8>(), 0..300), framing);
    (method, place, query, 0usize..4, headers, hops, spoof, body).prop_map(
        |(method, (protected, path), query, token_at, headers, hops, spoof, body)| Req {
            method,
            protected,
            path,
            query,
            token_at,
            headers,
            hops,
            spoof,
            body: matches!(method, "POST" | "PUT").then_some(body),
        },
    )
}

/// Sends `reqs` pipelined in one write and compares the upstream's record with the
/// reference.
async fn check(gw: SocketAddr, up: &RawUpstream, token: &str, reqs: &[Req]) -> Result<(), String> {
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| r.serialize(token)).collect();
    let before = up.seen().len();
    let mut s = TcpStream::connect(gw)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let want = format!("{} {}", r.method, r.forwarded_target());
        match http1::next_response(&mut s, &mut buf, false).await {
            Some(a) if a.status == 200 && a.text() == want => {}
            Some(a) => {
                return Err(format!(
                    "answer {} is {} {:?}, not the echo of {want:?}",
                    i + 1,
                    a.status,
                    a.text()
                ));
            }
            None => return Err(format!("no answer {} (to {want:?})", i + 1)),
        }
    }
    let seen = up.seen().get(before..).unwrap_or_default().to_vec();
    if seen.len() != reqs.len() {
        return Err(format!(
            "the upstream parsed {} requests for {}: {:?}",
            seen.len(),
            reqs.len(),
            seen.iter().map(echo_text).collect::<Vec<_>>()
        ));
    }
    for (i, (r, got)) in reqs.iter().zip(&seen).enumerate() {
        let n = i + 1;
        let want = format!("{} {}", r.method, r.forwarded_target());
        if echo_text(got) != want {
            return Err(format!(
                "request {n} arrived as {:?}, not {want:?}",
                echo_text(got)
            ));
        }
        let want_body = r.body.as_ref().map(|(b, _)| b.clone()).unwrap_or_default();
        if got.body != want_body {
            return Err(format!(
                "request {n}: body of {} bytes, not the {} sent",
                got.body.len(),
                want_body.len()
            ));
        }
        if let Some(p) = forwarded_problem(got) {
            return Err(format!("request {n}: {p}"));
        }
        let (want_h, got_h) = (r.forwarded_headers(), received_headers(got));
        if want_h != got_h {
            return Err(format!("request {n}: headers {got_h:?}, not {want_h:?}"));
        }
    }
    Ok(())
}

#[test]
fn random_pipelined_requests_reach_the_upstream_as_the_reference_serializer_says() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (up, gw) = rt.block_on(async {
        let up = RawUpstream::scripted(|seen| Reply::keep(echo(seen))).await;
        let mut cfg = GatewayConfig::hs256(up.addr);
        cfg.auth.push_str("reject_with = \"http\"\n");
        let gw = Gateway::start(&cfg).await;
        (up, gw)
    });
    let token = valid("alice");
    let mut runner = TestRunner::new(Config {
        cases: 32,
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(req_strategy(), 1..6), |reqs| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), check(gw.addr, &up, &token, &reqs))
                .await
                .unwrap_or_else(|_| Err("no verdict within 15 s".into()))
        })
        .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, reqs)) => {
            let shown: Vec<String> = reqs
                .iter()
                .map(|r| String::from_utf8_lossy(&r.serialize("<token>")).into_owned())
                .collect();
            panic!("{reason}\nminimal failing sequence:\n{}", shown.join(""));
        }
        Err(e) => panic!("{e}"),
    }
}
