//! The upstream's answer head (RFC 9112 4 and 6.3), read by the gateway: bounded in
//! size ([`MAX_HEAD`]) and time, parsed once with `httparse` (obs-fold refused), its
//! framing judged by the same rule as a request's ([`crate::framing::framing_of`]):
//! one plain `Content-Length`, or `Transfer-Encoding: chunked` alone; both, two
//! lengths or another coding are refused (`502`) rather than guessed. The head the
//! client gets is written by the gateway ([`Received::render`]): the upstream's fields
//! without the hop-by-hop ones (RFC 9110 7.6.1), then the framing the gateway relays
//! the body with.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::connection_options;
use crate::framing::{Framing, FramingError, framing_of};
use crate::head::{MAX_HEAD, head_end};

/// Most header fields in an answer head.
const MAX_FIELDS: usize = 128;

/// How an answer's body is framed (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// None: 1xx, 204, 304 (and any answer to `HEAD`, which the caller knows).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// The upstream's answer head and the bytes that came with it.
#[derive(Debug)]
pub struct Received {
    /// The head and whatever followed it in the same reads.
    pub bytes: Vec<u8>,
    /// Length of the head in `bytes`.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// How the body after the head is framed.
    pub body: ResponseBody,
    /// Whether the upstream keeps the connection open after this answer (HTTP/1.1
    /// without `Connection: close`).
    pub keep_alive: bool,
}

/// Why no answer head was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// Nothing complete within the read timeout.
    #[error("the upstream did not answer in time")]
    TimedOut,
    /// The connection ended first; `silent` when not one byte came (a kept-alive
    /// connection the upstream had closed: the request may be sent again).
    #[error("the upstream closed the connection before answering")]
    Closed {
        /// Not one byte of an answer arrived.
        silent: bool,
    },
    /// Not an HTTP/1.x answer head.
    #[error("the upstream's answer head is malformed")]
    Malformed,
    /// A head over [`MAX_HEAD`] bytes or `MAX_FIELDS` (128) fields.
    #[error("the upstream's answer head is too large")]
    TooLarge,
    /// Framed so that two readers could disagree where it ends.
    #[error("the upstream's answer is framed ambiguously: {0}")]
    Framing(FramingError),
}

/// The framing the client's copy of an answer is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No framing field: the connection's close ends the body.
    Close,
    /// No body (`HEAD`, 1xx, 204, 304): the upstream's `Content-Length` is kept where it
    /// may stand (it describes the representation, RFC 9110 8.6).
    Bodiless,
}

/// Reads the upstream's answer head, each read within `timeout`; `carry` are bytes
/// already read behind an earlier (interim, 1xx) head.
pub async fn read<S: AsyncRead + Unpin>(
    upstream: &mut S,
    timeout: Duration,
    carry: Vec<u8>,
) -> Result<Received, NoAnswer> {
    let mut bytes = carry;
    bytes.reserve(2048);
    let mut scanned = 0;
    loop {
        if let Some(head_len) = head_end(&bytes, scanned) {
            return parse(bytes, head_len);
        }
        if bytes.len() > MAX_HEAD {
            return Err(NoAnswer::TooLarge);
        }
        scanned = bytes.len();
        if bytes.capacity() - bytes.len() < 1024 {
            bytes.reserve(bytes.len().max(2048));
        }
        match fast_timeout(timeout, upstream.read_buf(&mut bytes)).await {
            Err(_) => return Err(NoAnswer::TimedOut),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(NoAnswer::Closed {
                    silent: bytes.is_empty(),
                });
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Parses a complete head at the start of `bytes`.
fn parse(bytes: Vec<u8>, head_len: usize) -> Result<Received, NoAnswer> {
    if head_len > MAX_HEAD {
        return Err(NoAnswer::TooLarge);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(&bytes[..head_len]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Err(httparse::Error::TooManyHeaders) => return Err(NoAnswer::TooLarge),
        _ => return Err(NoAnswer::Malformed),
    }
    let status = resp.code.ok_or(NoAnswer::Malformed)?;
    let framing = framing_of(resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        ResponseBody::None
    } else {
        match framing.map_err(NoAnswer::Framing)? {
            Framing::None => ResponseBody::Close,
            Framing::Length(n) => ResponseBody::Length(n),
            Framing::Chunked => ResponseBody::Chunked,
        }
    };
    let close = connection_options::has(connection_options::of_fields(resp.headers), b"close");
    let keep_alive = resp.version == Some(1) && !close;
    Ok(Received {
        bytes,
        head_len,
        status,
        body,
        keep_alive,
    })
}

/// Fields that describe one connection, never passed on (RFC 9110 7.6.1), and the
/// framing fields the gateway writes itself.
fn hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

impl Received {
    /// The upstream's fields the client gets: without the hop-by-hop ones and those
    /// its `Connection` names; its `Content-Length` only where the answer is written
    /// `Bodiless` (it describes the representation, RFC 9110 8.6).
    fn passed<'h>(
        &self,
        fields: &'h [httparse::Header<'h>],
        framed: Framed,
    ) -> impl Iterator<Item = &'h httparse::Header<'h>> {
        let named: Vec<&[u8]> = connection_options::of_fields(fields).collect();
        let status = self.status;
        fields.iter().filter(move |h| {
            let keep_length = framed == Framed::Bodiless
                && h.name.eq_ignore_ascii_case("content-length")
                && status != 204
                && !(100..200).contains(&status);
            !((hop_by_hop(h.name) && !keep_length)
                || named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes())))
        })
    }

    /// The head as an HTTP/2 client gets it ([`crate::h2_client`]): the same fields as
    /// [`Received::render`] writes, without a reason phrase, `Content-Length` for
    /// `Framed::Length` (HTTP/2 frames the body itself, RFC 9113 8.1).
    pub fn header(&self, framed: Framed) -> Option<ResponseHeader> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        // Parsed before ([`parse`]): the same bytes parse the same way.
        resp.parse(&self.bytes[..self.head_len]).ok()?;
        let mut out = ResponseHeader::build(self.status, Some(resp.headers.len() + 2)).ok()?;
        for h in self.passed(resp.headers, framed) {
            // `httparse` accepted the name and the value: `http` does too.
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(h.value).ok()?;
            out.append_header(name, value).ok()?;
        }
        if let Framed::Length(n) = framed {
            out.insert_header(http::header::CONTENT_LENGTH, n).ok()?;
        }
        Some(out)
    }

    /// The bytes after the head.
    pub fn after(&self) -> &[u8] {
        &self.bytes[self.head_len..]
    }

    /// Appends the head as the client gets it: `HTTP/1.1`, the upstream's status and
    /// reason, its fields without the hop-by-hop ones, then `framed` and, when given,
    /// `Connection: <connection>`.
    pub fn render(&self, out: &mut Vec<u8>, framed: Framed, connection: Option<&str>) {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        // Parsed before ([`parse`]): the same bytes parse the same way.
        if resp.parse(&self.bytes[..self.head_len]).is_err() {
            return;
        }
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in self.passed(resp.headers, framed) {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        match framed {
            Framed::Length(n) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framed::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framed::Close | Framed::Bodiless => {}
        }
        if let Some(c) = connection {
            out.extend_from_slice(b"Connection: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Received, NoAnswer> {
        let len = head_end(raw, 0).ok_or(NoAnswer::Malformed)?;
        parse(raw.to_vec(), len)
    }

    #[test]
    fn answers_are_framed_by_one_rule() {
        let ok = |raw: &[u8]| head(raw).map(|r| r.body);
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(ResponseBody::Length(5))
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(ResponseBody::Chunked)
        );
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(ResponseBody::Close));
        assert_eq!(
            ok(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
            Ok(ResponseBody::None)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(NoAnswer::Framing(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n").map(|r| r.body),
            Err(NoAnswer::Malformed)
        );
    }

    #[test]
    fn the_client_gets_the_fields_without_hop_by_hop_ones() {
        let r = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let Ok(r) = r else {
            panic!("{r:?}");
        };
        assert!(r.keep_alive);
        let mut out = Vec::new();
        r.render(&mut out, Framed::Length(3), Some("close"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let closing = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(closing.is_ok_and(|r| !r.keep_alive));
        let old = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(old.is_ok_and(|r| !r.keep_alive));
    }
}
