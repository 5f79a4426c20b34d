//! A byte-exact HTTP/1.1 client: the request target is sent exactly as written, so tests
//! can send `//socket.io/`, `/./socket.io/` or `%2F` that URL libraries would rewrite.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header of this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = raw.get(end + 2..).unwrap_or_default();
    }
}

/// Parses a complete response (the server closed the connection after it).
pub fn parse(raw: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let status = resp
        .parse(raw)
        .unwrap_or_else(|e| panic!("bad response ({e}): {:?}", String::from_utf8_lossy(raw)));
    let httparse::Status::Complete(head_len) = status else {
        panic!("incomplete response: {:?}", String::from_utf8_lossy(raw));
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let body_raw = &raw[head_len..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    Response {
        status: resp.code.unwrap_or(0),
        headers,
        body: if chunked {
            dechunk(body_raw)
        } else {
            body_raw.to_vec()
        },
    }
}

/// Sends raw request bytes on a new connection and reads until the server closes it.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    send_and_read(s, request).await
}

/// Like [`raw`] from a chosen source address (`127.0.0.x`), so that tests can act as
/// several clients.
pub async fn raw_from(src: std::net::IpAddr, addr: SocketAddr, request: &[u8]) -> Response {
    let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("socket: {e}"));
    sock.bind(SocketAddr::new(src, 0))
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    let s = sock
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    send_and_read(s, request).await
}

async fn send_and_read(mut s: TcpStream, request: &[u8]) -> Response {
    s.write_all(request)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    parse(&buf)
}

/// A new connection with `request` written (a write error is left to the reader).
async fn connect_and_send(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.write_all(request).await;
    s
}

/// Sends bytes a server may refuse half-way (it may close before reading them all) and
/// returns whatever came back before the connection ended; errors end the exchange.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = connect_and_send(addr, request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of the first response in `buf` once it is complete: by its
/// `Content-Length`, the end of its chunked body, or none for a head-only answer
/// (`want_body` false: `HEAD`, 1xx, 204, 304).
pub fn complete_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = parse(&buf[..end]);
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let body = &buf[end..];
        return body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .filter(|p| *p == 0 || body[..*p].ends_with(b"\r\n"))
            .map(|p| end + p + 5);
    }
    let len = head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())?;
    (buf.len() >= end + len).then_some(end + len)
}

/// Reads one response from a kept-alive connection (complete by [`complete_len`]);
/// fails after [`crate::eio::STEP`] or when the connection closes first.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(len) = complete_len(&buf) {
                return parse(&buf[..len]);
            }
            let n = stream
                .read(&mut chunk)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                n > 0,
                "closed before a full response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(crate::eio::STEP, read)
        .await
        .unwrap_or_else(|_| panic!("no complete response within {:?}", crate::eio::STEP))
}

/// Sends raw request bytes and reads one response, complete by its `Content-Length` or
/// chunked end (or by the server closing), leaving a kept-alive connection alone. Fails
/// after [`crate::eio::STEP`].
pub async fn one(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = connect_and_send(addr, request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if complete_len(&buf).is_some() {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(crate::eio::STEP, read)
        .await
        .unwrap_or_else(|_| panic!("no complete response within {:?}", crate::eio::STEP));
    assert!(!buf.is_empty(), "the connection closed without an answer");
    parse(&buf)
}

/// Sends `METHOD target` with extra headers and an optional body (`Connection: close`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes).await
}

/// `GET target` with extra headers.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", target, headers, b"").await
}

/// A complete chunked body at the start of `buf` (chunk extensions and trailers
/// allowed): its length in `buf` and the de-chunked bytes; `Ok(None)` while incomplete,
/// `Err(())` when it is not chunked framing.
#[allow(clippy::result_unit_err)]
pub fn chunked(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, ()> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        at += skip;
        if size == 0 {
            // Trailer lines up to the blank line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((at, body)));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ())?;
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// Reads the next complete response on a kept-alive connection: `buf` holds bytes
/// already read and keeps whatever follows the response (the next pipelined answer).
/// Framed by `Content-Length`, chunked, or nothing for `no_body` (the answer to a
/// `HEAD`) and 1xx/204/304; otherwise up to the end of the stream. `None` when the
/// connection ended (or [`crate::eio::STEP`] passed) before a complete response.
pub async fn next_response<S>(stream: &mut S, buf: &mut Vec<u8>, no_body: bool) -> Option<Response>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    let mut ended = false;
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head_len = end + 4;
                let head = parse(&buf[..head_len]);
                let te_chunked = head
                    .header("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let length = head
                    .header("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let bodyless =
                    no_body || head.status < 200 || head.status == 204 || head.status == 304;
                let total = if bodyless {
                    Some(head_len)
                } else if te_chunked {
                    match chunked(&buf[head_len..]) {
                        Ok(Some((n, _))) => Some(head_len + n),
                        Ok(None) => None,
                        Err(()) => Some(buf.len()),
                    }
                } else if let Some(n) = length {
                    (buf.len() >= head_len + n).then_some(head_len + n)
                } else if ended {
                    Some(buf.len())
                } else {
                    None
                };
                if let Some(total) = total {
                    let mut resp = parse(&buf[..total]);
                    if bodyless {
                        resp.body.clear();
                    }
                    buf.drain(..total);
                    return Some(resp);
                }
            }
            if ended {
                return None;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => ended = true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(crate::eio::STEP, read)
        .await
        .ok()
        .flatten()
}
