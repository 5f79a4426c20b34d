//! The smuggling corpus: request heads and bodies that two HTTP/1.1 parsers could frame
//! differently, each written in one write with a follow-up request behind it, through
//! the real gateway binary to a raw recording keep-alive upstream, on a public path and
//! on a protected one with a valid token. (`smuggling.rs` covers requests hidden behind
//! upgrade heads and plain pipelining.)
//!
//! Each row is refused or normalized, and nothing else:
//! - refused: one `400` (a few rows name another status the RFCs allow), the
//!   connection closed (RFC 9112 6.3, 5; 6.1), nothing of the request and nothing of
//!   the follow-up reaches the upstream; for an error found in the body (a head a
//!   streaming gateway may already have sent), no complete request reaches it and the
//!   upstream connection that carried the part is closed;
//! - normalized (only where the RFCs allow it): the upstream receives exactly one
//!   well-formed request with the body the RFCs give the message, and then either the
//!   follow-up (a message whose framing was clear) or nothing more, the client
//!   connection closed (both `Content-Length` and `Transfer-Encoding`, RFC 9112 6.1).
//!
//! Every row runs before the upstream's record is judged; the gateway is stopped first,
//! so nothing forwarded late can be missed.

use std::net::SocketAddr;
use std::time::Duration;

use tests::procs::{Gateway, GatewayConfig};
use tests::raw_upstream::{RawUpstream, Reply};
use tests::tokens::valid;
use tests::wire::{echo, echo_text, forwarded_problem, read_until_close, shown, split_responses};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a client waits for the gateway to close its connection.
const LIMIT: Duration = Duration::from_secs(5);

/// What a row allows: a refusal with one of `refuse`, or the forwarding `forward`
/// describes; `in_body`: the error lies in the body, after a head a streaming gateway
/// may already have forwarded.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    refuse: &'static [u16],
    forward: Forward,
    in_body: bool,
}

/// How a row may be forwarded instead of refused.
#[derive(Debug, Clone, Copy)]
enum Forward {
    /// It may not.
    Never,
    /// Once, with `body`; the client connection then closed and nothing after the
    /// request forwarded.
    ThenClose { body: &'static str },
    /// Once, with `body` (and the header `header` with this value, whitespace runs read
    /// as one space); then the follow-up forwarded too.
    AndGoOn {
        body: &'static str,
        header: Option<(&'static str, &'static str)>,
    },
}

const REFUSE: Allowed = Allowed {
    refuse: &[400],
    forward: Forward::Never,
    in_body: false,
};
const REFUSE_IN_BODY: Allowed = Allowed {
    refuse: &[400],
    forward: Forward::Never,
    in_body: true,
};
/// Refused (`400`, or for an unknown transfer coding `501`, RFC 9112 6.1).
const REFUSE_CODING: Allowed = Allowed {
    refuse: &[400, 501],
    forward: Forward::Never,
    in_body: false,
};

/// Refused, or forwarded once with `body`, then the connection closed.
const fn or_forward_then_close(body: &'static str) -> Allowed {
    Allowed {
        refuse: &[400],
        forward: Forward::ThenClose { body },
        in_body: false,
    }
}

/// Refused, or forwarded once with `body` (and `header`), the follow-up too.
const fn or_forward(body: &'static str, header: Option<(&'static str, &'static str)>) -> Allowed {
    Allowed {
        refuse: &[400],
        forward: Forward::AndGoOn { body, header },
        in_body: false,
    }
}

/// One row of the corpus.
struct Row {
    name: &'static str,
    /// The whole request; `@T@` stands for the target.
    request: &'static str,
    allowed: Allowed,
}

const ROWS: &[Row] = &[
    Row {
        name: "CL.TE: Content-Length then Transfer-Encoding: chunked",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        allowed: or_forward_then_close(""),
    },
    Row {
        name: "TE.CL: Transfer-Encoding: chunked then Content-Length",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        allowed: or_forward_then_close("SMUGGLED"),
    },
    Row {
        name: "Transfer-Encoding: xchunked with Content-Length",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello",
        // RFC 9112 6.1: chunked is not the final coding (400); an unknown coding may
        // also be 501.
        allowed: REFUSE_CODING,
    },
    Row {
        name: "Transfer-Encoding: xchunked alone",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        allowed: REFUSE_CODING,
    },
    Row {
        name: "whitespace between Transfer-Encoding and the colon",
        // RFC 9112 5.1: MUST be rejected with 400.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: REFUSE,
    },
    Row {
        name: "Transfer-Encoding: chunked, identity",
        // RFC 9112 6.1: chunked not final: 400.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: REFUSE_CODING,
    },
    Row {
        name: "a whitespace-led Transfer-Encoding line right after the request line",
        // RFC 9112 2.2: reject, or consume the line without processing it.
        request: "POST @T@ HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: gw\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: or_forward("0\r\n\r\n", None),
    },
    Row {
        name: "Transfer-Encoding folded into the header before it (obs-fold)",
        // RFC 9112 5.2: reject, or replace the fold with spaces (then it is part of
        // X-Foo's value).
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nX-Foo: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: or_forward("0\r\n\r\n", Some(("x-foo", "a Transfer-Encoding: chunked"))),
    },
    Row {
        name: "Transfer-Encoding:<TAB>chunked with Content-Length",
        // A tab is whitespace (RFC 9110 5.6.3): this is chunked, with a length too.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
        allowed: or_forward_then_close(""),
    },
    Row {
        name: "Transfer-Encoding: Chunked (coding names are case-insensitive)",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        allowed: or_forward("hello", None),
    },
    Row {
        name: "Transfer-Encoding: chunked in an HTTP/1.0 request",
        // RFC 9112 6.1: the framing is faulty.
        request: "POST @T@ HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: REFUSE,
    },
    Row {
        name: "obs-fold in another header",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nX-Folded: a\r\n\tb\r\nContent-Length: 5\r\n\r\nhello",
        allowed: or_forward("hello", Some(("x-folded", "a b"))),
    },
    Row {
        name: "bare LF line endings",
        // RFC 9112 2.2: a recipient MAY take a bare LF as a line end; forwarded, the
        // request's lines end in CRLF.
        request: "POST @T@ HTTP/1.1\nHost: gw\nX-A: 1\nContent-Length: 5\n\nhello",
        allowed: or_forward("hello", Some(("x-a", "1"))),
    },
    Row {
        name: "bare LF in chunk lines",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        // Not CRLF (RFC 9112 7.1): refused, or read as LF line ends and forwarded
        // re-encoded.
        allowed: Allowed {
            refuse: &[400],
            forward: Forward::AndGoOn {
                body: "hello",
                header: None,
            },
            in_body: true,
        },
    },
    Row {
        name: "NUL in a header value",
        // RFC 9110 5.5: reject, or replace with SP.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\nContent-Length: 5\r\n\r\nhello",
        allowed: or_forward("hello", Some(("x-a", "a b"))),
    },
    Row {
        name: "bare CR in a header value",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nX-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        allowed: or_forward("0\r\n\r\n", Some(("x-a", "a Transfer-Encoding: chunked"))),
    },
    Row {
        name: "chunk size overflowing 64 bits",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        allowed: REFUSE_IN_BODY,
    },
    Row {
        name: "chunk size with a 0x prefix",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        allowed: REFUSE_IN_BODY,
    },
    Row {
        name: "chunk data longer than its size",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        allowed: REFUSE_IN_BODY,
    },
    Row {
        name: "Content-Length: -1",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: -1\r\n\r\nhello",
        allowed: REFUSE,
    },
    Row {
        name: "Content-Length: +5",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nhello",
        allowed: REFUSE,
    },
    Row {
        name: "Content-Length: (empty)",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: \r\n\r\nhello",
        allowed: REFUSE,
    },
    Row {
        name: "Content-Length beyond 64 bits",
        // RFC 9110 8.6: no overflow may make it a smaller number.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 18446744073709551621\r\n\r\nhello",
        allowed: Allowed {
            refuse: &[400, 413],
            forward: Forward::Never,
            in_body: false,
        },
    },
    Row {
        name: "Content-Length: 005 (leading zeros)",
        // 1*DIGIT (RFC 9110 8.6): five bytes, or refused; never another length.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 005\r\n\r\nhello",
        allowed: or_forward("hello", None),
    },
    Row {
        name: "two different Content-Length fields",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        allowed: REFUSE,
    },
    Row {
        name: "Content-Length: 5, 6",
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 6\r\n\r\nhello!",
        allowed: REFUSE,
    },
    Row {
        name: "Content-Length: 5, 5",
        // RFC 9110 8.6: reject, or read as the one number.
        request: "POST @T@ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nhello",
        allowed: or_forward("hello", None),
    },
    Row {
        name: "two Host fields",
        // RFC 9112 3.2: 400.
        request: "GET @T@ HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n",
        allowed: REFUSE,
    },
    Row {
        name: "no Host field",
        // RFC 9112 3.2: 400.
        request: "GET @T@ HTTP/1.1\r\nX-A: 1\r\n\r\n",
        allowed: REFUSE,
    },
];

/// Where a row's request goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Public,
    Protected,
}

impl Place {
    /// The target to send with `query` and the one the upstream must receive.
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
}

/// What the client saw for one row.
#[derive(Debug)]
struct ClientSide {
    name: String,
    allowed: Allowed,
    place: Place,
    /// The marker only this row's request carries, and the follow-up's.
    marker: String,
    next_marker: String,
    forwarded: String,
    next_forwarded: String,
    bytes: Vec<u8>,
    closed: bool,
    /// An upstream connection that carried part of a request refused for its body and
    /// stayed open.
    left_open: Option<usize>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn collapse(v: &str) -> String {
    v.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

async fn run_row(
    gw: SocketAddr,
    up: &RawUpstream,
    i: usize,
    row: &Row,
    place: Place,
) -> ClientSide {
    let marker = format!("case=c{i:03}{}", place_tag(place));
    let next_marker = format!("next=n{i:03}{}", place_tag(place));
    let (sent, forwarded) = place.target(&marker);
    let (next_sent, next_forwarded) = place.target(&next_marker);
    let mut bytes = row.request.replace("@T@", &sent).into_bytes();
    bytes.extend_from_slice(
        format!("GET {next_sent} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut s = TcpStream::connect(gw)
        .await
        .unwrap_or_else(|e| panic!("connect {gw}: {e}"));
    // A gateway may close before reading everything: what it answered is judged.
    let _ = s.write_all(&bytes).await;
    let (got, closed) = read_until_close(&mut s, LIMIT).await;
    let side = ClientSide {
        name: format!("{} ({place:?})", row.name),
        allowed: row.allowed,
        place,
        marker,
        next_marker,
        forwarded,
        next_forwarded,
        bytes: got,
        closed,
        left_open: None,
    };
    let (answers, _) = split_responses(&side.bytes);
    let forwarded_whole = answers.first().is_some_and(|r| r.status == 200);
    // An error in the body: whatever part of the request went upstream must not stay
    // on a connection the gateway uses again (RFC 9112 6.3, 5: close it).
    if !forwarded_whole && row.allowed.in_body {
        let carried: Vec<usize> = up
            .received()
            .iter()
            .enumerate()
            .filter(|(_, r)| contains(r, side.marker.as_bytes()))
            .map(|(c, _)| c)
            .collect();
        for c in carried {
            if !up.wait_conn_ended(c, LIMIT).await {
                return ClientSide {
                    left_open: Some(c),
                    ..side
                };
            }
        }
    }
    side
}

fn place_tag(p: Place) -> &'static str {
    match p {
        Place::Public => "p",
        Place::Protected => "s",
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The row's verdict, from what the client saw and everything the upstream received.
async fn judge(side: &ClientSide, up: &RawUpstream) -> Option<String> {
    let received = up.received();
    let anywhere = |m: &str| received.iter().any(|r| contains(r, m.as_bytes()));
    let seen = up.seen();
    let this: Vec<_> = seen
        .iter()
        .filter(|s| s.target.contains(&side.marker))
        .collect();
    let next: Vec<_> = seen
        .iter()
        .filter(|s| s.target.contains(&side.next_marker))
        .collect();
    let (answers, rest) = split_responses(&side.bytes);
    let shown = || shown(&side.bytes);
    let Some(first) = answers.first() else {
        return Some(format!(
            "no complete answer, where a 400 is due ({}; got {:?}); the upstream parsed {} complete requests of it{}{}",
            if side.closed {
                "the connection was closed"
            } else {
                "the connection stayed open"
            },
            shown(),
            this.len(),
            if anywhere(&side.next_marker) {
                ", and the request after it reached the upstream"
            } else {
                ""
            },
            match side.left_open {
                Some(c) => format!(
                    "; upstream connection {c}, which got part of it, stayed open for {LIMIT:?}"
                ),
                None => String::new(),
            }
        ));
    };
    if side.allowed.refuse.contains(&first.status) {
        // Refused.
        if answers.len() != 1 || !rest.is_empty() {
            return Some(format!("more after the refusal: {:?}", shown()));
        }
        if !side.closed {
            return Some("the connection stayed open after the refusal".into());
        }
        if anywhere(&side.next_marker) {
            return Some("the request after the refused one reached the upstream".into());
        }
        if let Some(c) = side.left_open {
            return Some(format!(
                "upstream connection {c}, which got part of the refused request, stayed open"
            ));
        }
        return if side.allowed.in_body {
            (!this.is_empty()).then(|| "a complete request reached the upstream".to_string())
        } else {
            anywhere(&side.marker)
                .then(|| "bytes of the refused request reached the upstream".to_string())
        };
    }
    let (body, header, then_close) = match side.allowed.forward {
        Forward::Never => {
            return Some(format!(
                "answered {} where only {:?} is right: {:?}; the upstream parsed {:?}",
                first.status,
                side.allowed.refuse,
                shown(),
                this.iter()
                    .map(|s| (s.method.clone(), s.target.clone(), text(&s.body)))
                    .collect::<Vec<_>>()
            ));
        }
        Forward::ThenClose { body } => (body, None, true),
        Forward::AndGoOn { body, header } => (body, header, false),
    };
    // Forwarded: the first answer is the upstream's echo of this request.
    let want_echo = format!("POST {}", side.forwarded);
    if first.status != 200 || first.text() != want_echo {
        return Some(format!(
            "neither refused nor the upstream's answer: {:?}",
            shown()
        ));
    }
    let [one] = this.as_slice() else {
        return Some(format!("the upstream parsed it {} times", this.len()));
    };
    if one.body != body.as_bytes() {
        return Some(format!(
            "the upstream got the body {:?}, not {body:?}",
            text(&one.body)
        ));
    }
    if let Some(p) = forwarded_problem(one) {
        return Some(format!("forwarded malformed: {p}: {:?}", text(&one.head)));
    }
    let user = one.all("x-auth-user");
    let identity_ok = match side.place {
        Place::Public => user.is_empty(),
        Place::Protected => user == ["alice"],
    };
    if !identity_ok {
        return Some(format!("x-auth-user {user:?}"));
    }
    if let Some((name, value)) = header {
        let got: Vec<String> = one.all(name).iter().map(|v| collapse(v)).collect();
        if got != [value] {
            return Some(format!("{name} forwarded as {got:?}, not {value:?}"));
        }
    }
    if then_close {
        // RFC 9112 6.1: a server MUST close the connection after such a request.
        if answers.len() != 1 || !side.closed {
            return Some(format!(
                "the connection went on after a request with both framings: {:?}",
                shown()
            ));
        }
        if anywhere(&side.next_marker) {
            return Some("bytes after the request reached the upstream".into());
        }
        return None;
    }
    let want_next = format!("GET {}", side.next_forwarded);
    if answers.len() != 2 || answers[1].text() != want_next || !rest.is_empty() {
        return Some(format!("not two answers in order: {:?}", shown()));
    }
    if next.len() != 1 {
        return Some(format!(
            "the follow-up reached the upstream {} times",
            next.len()
        ));
    }
    let echo_check = echo_text(next[0]);
    (echo_check != want_next).then(|| format!("the follow-up arrived as {echo_check:?}"))
}

#[tokio::test]
async fn ambiguous_framings_are_refused_or_normalized_and_nothing_behind_them_is_forwarded() {
    let up = RawUpstream::scripted(|seen| Reply::keep(echo(seen))).await;
    let mut cfg = GatewayConfig::hs256(up.addr);
    cfg.auth.push_str("reject_with = \"http\"\n");
    let gw = Gateway::start(&cfg).await;
    let mut sides = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        for place in [Place::Public, Place::Protected] {
            sides.push(run_row(gw.addr, &up, i, row, place).await);
        }
    }
    // Nothing can reach the upstream once the gateway is gone.
    drop(gw);
    assert!(
        up.wait_all_ended(LIMIT).await,
        "upstream connections outlived the gateway"
    );
    let mut failures = Vec::new();
    for side in &sides {
        // What each row got, for the log (`--nocapture`).
        let (answers, _) = split_responses(&side.bytes);
        println!(
            "{}: {:?}",
            side.name,
            answers.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        if let Some(p) = judge(side, &up).await {
            failures.push(format!("{}: {p}", side.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        sides.len(),
        failures.join("\n")
    );
}
