//! Helpers for the framing and smuggling corpora: an echo answer for
//! [`crate::raw_upstream::RawUpstream::scripted`], reading a client connection to its
//! end, splitting what came back into responses, and the rules a request head and body
//! a proxy forwards must follow (RFC 9112).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http1::Response;
use crate::raw_upstream::RawSeen;

/// The text an echo answer carries: `METHOD target`, as the upstream received them.
pub fn echo_text(seen: &RawSeen) -> String {
    format!("{} {}", seen.method, seen.target)
}

/// A complete `200` whose body is [`echo_text`], framed by `Content-Length`.
pub fn echo(seen: &RawSeen) -> Vec<u8> {
    let body = echo_text(seen);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads until the peer closes the connection or `limit` passes: what came back, and
/// whether the connection was closed (an error counts as closed).
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (buf, false),
            Ok(Ok(0) | Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The final responses (1xx left out) in `bytes`, a connection's whole output, each
/// framed by its own head (a length, chunks, or the end of the output; none after a
/// 1xx, 204 or 304); the bytes after the last complete one are returned too. Never
/// panics, whatever came: a head `httparse` refuses (or one with more than 1024
/// fields) ends the list, and is left in the rest.
pub fn split_responses(bytes: &[u8]) -> (Vec<Response>, Vec<u8>) {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let buf = &bytes[at..];
        let mut fields = vec![httparse::EMPTY_HEADER; 1024];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) else {
            break;
        };
        let status = resp.code.unwrap_or(0);
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
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let chunked =
            value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = value("content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let rest = &buf[head_len..];
        let (body, used) = if status < 200 || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if chunked {
            match crate::http1::chunked(rest) {
                Ok(Some((n, body))) => (body, n),
                _ => break,
            }
        } else if let Some(n) = length {
            if rest.len() < n {
                break;
            }
            (rest[..n].to_vec(), n)
        } else {
            (rest.to_vec(), rest.len())
        };
        at += head_len + used;
        if status >= 200 {
            out.push(Response {
                status,
                headers,
                body,
            });
        }
    }
    (out, bytes[at..].to_vec())
}

/// At most the first 300 characters of `bytes`, for failure messages.
pub fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(300).collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why a request as an upstream received it is not one well-formed HTTP/1.1 message
/// (RFC 9112 2-7; RFC 9110 5.5): every line ends in CRLF; no bare CR, LF or NUL; no
/// line folding (RFC 9112 5.2); field names are tokens with no whitespace before the
/// colon (RFC 9112 5.1); exactly one `Host` (RFC 9112 3.2); the body framed by exactly
/// one of `Content-Length` (one number, the body's length) or `Transfer-Encoding:
/// chunked` (well-formed chunks, RFC 9112 7.1), never both (RFC 9112 6.1).
pub fn forwarded_problem(seen: &RawSeen) -> Option<String> {
    let head = &seen.head;
    let Some(body_start) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Some("the head does not end in CRLF CRLF".into());
    };
    if body_start + 4 != head.len() {
        return Some("the head's blank line is not CRLF CRLF".into());
    }
    if head.contains(&0) {
        return Some("NUL in the head".into());
    }
    let lines: Vec<&[u8]> = head[..body_start].split(|b| *b == b'\n').collect();
    let mut hosts = 0;
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let line = if last {
            *line
        } else if let Some(l) = line.strip_suffix(b"\r") {
            l
        } else {
            return Some(format!("line {} ends in a bare LF", i + 1));
        };
        if line.contains(&b'\r') {
            return Some(format!("bare CR in line {}", i + 1));
        }
        if i == 0 {
            let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            if parts.len() != 3 || parts[2] != b"HTTP/1.1" || parts.iter().any(|p| p.is_empty()) {
                return Some(format!(
                    "not a request line: {:?}",
                    String::from_utf8_lossy(line)
                ));
            }
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Some(format!("no colon in {:?}", String::from_utf8_lossy(line)));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Some(format!(
                "bad field name (folded line or whitespace before the colon?): {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let value = line[colon + 1..].trim_ascii();
        if value
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Some(format!(
                "control byte in {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => lengths.push(String::from_utf8_lossy(value).into_owned()),
            "transfer-encoding" => codings.push(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
    if hosts != 1 {
        return Some(format!("{hosts} Host fields"));
    }
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => (!seen.body.is_empty())
            .then(|| "a body without Content-Length or Transfer-Encoding".to_string()),
        ([n], []) => (n.parse::<usize>().ok() != Some(seen.body.len())
            || !n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("Content-Length {n:?} for a body of {}", seen.body.len())),
        ([], [te]) if te.eq_ignore_ascii_case("chunked") => strict_chunked(&seen.body_raw)
            .err()
            .map(|e| format!("chunked body: {e}")),
        _ => Some(format!(
            "framing fields: Content-Length {lengths:?}, Transfer-Encoding {codings:?}"
        )),
    }
}

/// Checks a chunked body strictly (RFC 9112 7.1): hex sizes, CRLF after every line and
/// chunk, trailer fields, the final blank line, nothing after it.
pub fn strict_chunked(raw: &[u8]) -> Result<(), String> {
    let mut at = 0;
    let line = |at: usize| -> Result<(&[u8], usize), String> {
        let rest = &raw[at..];
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a line without CRLF")?;
        let l = &rest[..eol];
        if l.contains(&b'\n') || l.contains(&b'\r') {
            return Err("a bare CR or LF".into());
        }
        Ok((l, at + eol + 2))
    };
    loop {
        let (l, next) = line(at)?;
        let size_text = l.split(|b| *b == b';').next().unwrap_or_default();
        if size_text.is_empty() || !size_text.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "bad chunk size {:?}",
                String::from_utf8_lossy(size_text)
            ));
        }
        let size = usize::from_str_radix(&String::from_utf8_lossy(size_text), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        at = next;
        if size == 0 {
            loop {
                let (l, next) = line(at)?;
                at = next;
                if l.is_empty() {
                    return if at == raw.len() {
                        Ok(())
                    } else {
                        Err("bytes after the last chunk".into())
                    };
                }
            }
        }
        if raw.len() < at + size + 2 || &raw[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}
