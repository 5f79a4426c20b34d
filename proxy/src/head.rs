//! HTTP/1 heads the gateway reads and writes itself (docs/websockets.md): every
//! request head of a client connection, read bounded in size ([`MAX_HEAD`]) and in time
//! (a deadline for the whole head, however it is trickled) and scanned once; the
//! upgrade request as written upstream; and the upstream's answer head.

use std::time::Duration;

use http::header;
use pingora::http::RequestHeader;

use crate::conn::Conn;
use crate::connection_options;
use crate::framing::{Framing, request_framing};

/// Largest request or response head read (`431` past it for a request).
pub const MAX_HEAD: usize = 64 * 1024;

/// How long a connection may stay silent before its next request head starts (as
/// Pingora's keep-alive and idle timeout).
pub const IDLE: Duration = Duration::from_secs(60);

/// How long a request head may take from its first byte to its end, however it is
/// trickled (a deadline for the whole head, not for each read).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A request head read from the client, parsed once by the reader that found its end.
#[derive(Debug)]
pub struct Head {
    /// Length of the head in the connection's read-ahead bytes.
    pub len: usize,
    /// How its body is framed (RFC 9112 6).
    pub framing: Framing,
    /// The request line and fields, parsed.
    pub request: RequestHeader,
    /// A WebSocket upgrade (an HTTP/1.1 `Upgrade` header naming `websocket`, with the
    /// `upgrade` connection option): carried by the gateway's tunnel.
    pub upgrade: bool,
}

/// Why no head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum NoHead {
    /// The connection closed or stayed idle between requests: nothing to answer.
    Closed,
    /// The head grew past [`MAX_HEAD`] (or has more than [`MAX_HEADERS`] lines): `431`.
    TooLarge,
    /// The head did not end within [`HEAD_TIMEOUT`]: closed.
    TooSlow,
    /// Not an HTTP/1.x request head, or framed ambiguously: `400`, then closed.
    Malformed(&'static str),
}

/// Most header lines in a request head.
pub const MAX_HEADERS: usize = 256;

/// Where the head ends in `buf`, looking only at bytes from `from` on (minus the
/// three that could start the blank line): each byte is scanned once however the head
/// is trickled.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while let Some(p) = buf[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// How many empty lines (CRLF or LF) start `buf`: a server ignores them before a
/// request line (RFC 9112 2.2), and so does the gateway's reader, so that the head is
/// found, classified and read by one reader.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Reads the next request head into `conn`'s read-ahead bytes: the first byte within
/// [`IDLE`], the whole head within [`HEAD_TIMEOUT`] of it, at most [`MAX_HEAD`] bytes,
/// then parses it once with `httparse`.
pub async fn read_head(conn: &mut Conn) -> Result<Head, NoHead> {
    let mut scanned: usize = 0;
    let mut deadline = None;
    loop {
        let blank = leading_empty_lines(conn.ahead());
        if blank > 0 {
            conn.consume(blank);
            scanned = scanned.saturating_sub(blank);
        }
        let ahead = conn.ahead();
        if !ahead.is_empty() {
            if let Some(len) = head_end(ahead, scanned) {
                if len > MAX_HEAD {
                    return Err(NoHead::TooLarge);
                }
                return parse_head(&ahead[..len]);
            }
            if ahead.len() > MAX_HEAD {
                return Err(NoHead::TooLarge);
            }
            // Bytes no request head can hold (a TLS hello, garbage): refused now rather
            // than after waiting for a head that never ends.
            if !ahead[0].is_ascii_alphabetic() || ahead[scanned..].iter().any(|b| never_in_head(*b))
            {
                return Err(NoHead::Malformed("not an HTTP/1.1 request"));
            }
            scanned = ahead.len();
        }
        let limit = *deadline.get_or_insert_with(|| {
            let wait = if ahead.is_empty() { IDLE } else { HEAD_TIMEOUT };
            tokio::time::Instant::now() + wait
        });
        // Pingora's coarse shared timers: no timer-wheel entry per read.
        let left = limit.saturating_duration_since(tokio::time::Instant::now());
        match pingora::prelude::fast_timeout::fast_timeout(left, conn.read_ahead()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Closed),
            Ok(Ok(_)) => {
                if scanned == 0 && leading_empty_lines(conn.ahead()) < conn.ahead().len() {
                    // The head's first bytes: from now on the head deadline runs.
                    deadline = Some(tokio::time::Instant::now() + HEAD_TIMEOUT);
                }
            }
            Err(_) if conn.ahead().is_empty() => return Err(NoHead::Closed),
            Err(_) => return Err(NoHead::TooSlow),
        }
    }
}

/// A byte that never appears in an HTTP/1 head: controls other than tab, CR and LF.
fn never_in_head(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f
}

/// Parses a complete head (as Pingora's reader parses it: `httparse`), its framing,
/// and whether it asks for a WebSocket upgrade.
pub fn parse_head(bytes: &[u8]) -> Result<Head, NoHead> {
    const BAD: NoHead = NoHead::Malformed("the request head is not valid HTTP/1.1");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => {}
        Err(httparse::Error::TooManyHeaders) => return Err(NoHead::TooLarge),
        _ => return Err(BAD),
    }
    let framing = request_framing(req.headers).map_err(|e| NoHead::Malformed(e.reason()))?;
    // RFC 9112 3.2: an HTTP/1.1 request without a Host field, or with two, is `400`.
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 || (hosts == 0 && req.version == Some(1)) {
        return Err(NoHead::Malformed(
            "an HTTP/1.1 request needs exactly one Host field",
        ));
    }
    // RFC 9110 7.8: `Upgrade` is hop-by-hop, and means something only with the
    // `upgrade` connection option beside it; an HTTP/1.0 request's is ignored. Any other
    // request is a plain one (docs/request-handling.md, docs/websockets.md).
    let upgrade = req.version == Some(1)
        && connection_options::has(connection_options::of_fields(req.headers), b"upgrade")
        && connection_options::list(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
                .map(|h| h.value),
        )
        .any(|name| {
            let name = name.split(|b| *b == b'/').next().unwrap_or(name);
            name.eq_ignore_ascii_case(b"websocket")
        });
    Ok(Head {
        len: bytes.len(),
        framing,
        request: request_header(&req).ok_or(BAD)?,
        upgrade,
    })
}

/// The parsed request as Pingora's header type, for the decision.
fn request_header(req: &httparse::Request<'_, '_>) -> Option<RequestHeader> {
    let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let mut out =
        RequestHeader::build(method, req.path?.as_bytes(), Some(req.headers.len())).ok()?;
    if req.version != Some(1) {
        out.set_version(http::Version::HTTP_10);
    }
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        out.append_header(name, value).ok()?;
    }
    Some(out)
}

/// Drops hop-by-hop headers (RFC 9110 7.6.1): those `Connection` names and the
/// standard ones, `Transfer-Encoding` (the gateway writes a body's framing itself) and
/// `Proxy-Authorization` (meant for the gateway). An `upgrade` request keeps its
/// `Upgrade` with `Connection: Upgrade`; any other request carries neither (HTTP/1.1
/// keeps the upstream connection alive by default).
pub fn strip_hop_by_hop(req: &mut RequestHeader, upgrade: bool) {
    let named: Vec<http::HeaderName> = connection_options::of_map(&req.headers)
        // An upgrade keeps the `Connection: upgrade` it needs.
        .filter(|t| !(upgrade && t.eq_ignore_ascii_case(b"upgrade")))
        .filter_map(|t| http::HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        req.remove_header(&name);
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer"] {
        req.remove_header(name);
    }
    req.remove_header(&header::PROXY_AUTHORIZATION);
    req.remove_header(&header::TRANSFER_ENCODING);
    if upgrade {
        let _ = req.insert_header(header::CONNECTION, "Upgrade");
    } else {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
}

/// The request head as written upstream (HTTP/1.1, headers in order).
pub fn request_bytes(req: &RequestHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_headers(&mut out, &req.headers);
    out.extend_from_slice(b"\r\n");
    out
}

/// Header lines, `name: value\r\n` each.
pub fn push_headers(out: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_once_whatever_the_cut() {
        let head = b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nEXTRA";
        let end = head.len() - "EXTRA".len();
        assert_eq!(head_end(head, 0), Some(end));
        for cut in 0..head.len() {
            let first = head_end(&head[..cut], 0);
            if cut < end {
                assert_eq!(first, None, "cut {cut}");
                assert_eq!(head_end(head, cut), Some(end), "cut {cut}");
            }
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
    }

    fn upgrade(head: &[u8]) -> bool {
        parse_head(head).is_ok_and(|h| h.upgrade)
    }

    #[test]
    fn heads_are_classified_by_their_parse() {
        assert!(upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nUPGRADE:WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\r\n"
        ));
        assert!(upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nUpgrade: h2c, websocket/13\r\nConnection: upgrade\r\n\r\n"
        ));
        // RFC 9110 7.8: without the `upgrade` connection option, or in HTTP/1.0, a plain
        // request.
        assert!(!upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!upgrade(
            b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(!upgrade(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        let h2c = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nUpgrade-Insecure-Requests: 1\r\nX: websocket\r\n\r\n";
        assert!(!upgrade(h2c));
        assert_eq!(leading_empty_lines(b"\r\n\nGET"), 3);
        assert_eq!(leading_empty_lines(b"\rGET"), 0);
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(NoHead::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let head = parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(head.map(|h| h.framing), Ok(Framing::Chunked));
    }
}
