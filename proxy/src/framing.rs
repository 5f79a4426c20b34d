//! Where a request message ends (RFC 9112 6): the body framing the gateway reads from
//! a request head, and the end of a chunked body found as its bytes pass (RFC 9112
//! 7.1), with `httparse`'s chunk-size parser, the same one Pingora's HTTP/1 reader
//! uses. [`crate::conn::Conn`] hands a reader exactly one message at a time with it,
//! so no reader behind the gateway ever sees the bytes of the next request as part of
//! this one (docs/request-handling.md "What the gateway does to a request").

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: neither `Content-Length` nor `Transfer-Encoding` (RFC 9112 6.3: a
    /// request is never close-delimited).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    /// Whether the message has a body at all.
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}

/// Why a request's framing is refused (`400`): a server behind the gateway could read
/// it differently (request smuggling, RFC 9112 6.1, 6.3 and 11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// A `Content-Length` that is not one decimal number (`5, 5`, `+5`, empty).
    NotANumber,
    /// `Content-Length` given twice.
    TwoLengths,
    /// A transfer coding other than plain `chunked`.
    NotChunked,
    /// `Transfer-Encoding` given twice.
    TwoCodings,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.1 lets a server refuse
    /// them rather than guess which one a server behind it reads).
    Both,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for FramingError {}

impl FramingError {
    /// The reason, as the `400` says it.
    pub fn reason(self) -> &'static str {
        match self {
            FramingError::NotANumber => "Content-Length must be a single number",
            FramingError::TwoLengths => "Content-Length is given more than once",
            FramingError::NotChunked => "only the chunked transfer coding is accepted",
            FramingError::TwoCodings => "Transfer-Encoding is given more than once",
            FramingError::Both => "Content-Length and Transfer-Encoding must not be combined",
        }
    }
}

/// The framing of a request from its headers (`(name, value)` pairs): the one rule for
/// HTTP/1 heads the gateway reads and for HTTP/2 requests.
pub fn framing_of<'h>(
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) -> Result<Framing, FramingError> {
    let mut length = None;
    let mut chunked = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::NotANumber);
            }
            if length.is_some() {
                return Err(FramingError::TwoLengths);
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or(FramingError::NotANumber)?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::NotChunked);
            }
            if chunked {
                return Err(FramingError::TwoCodings);
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(FramingError::Both),
        (Some(n), false) => Ok(Framing::Length(n)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::None),
    }
}

/// The framing of a message whose headers are an `http` map: HTTP/2 requests (whose
/// heads Pingora reads) and upstream answers.
pub fn map_framing(headers: &http::HeaderMap) -> Result<Framing, FramingError> {
    framing_of(
        headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    )
}

/// The framing of a request head parsed by `httparse`.
pub fn request_framing(headers: &[httparse::Header<'_>]) -> Result<Framing, FramingError> {
    framing_of(headers.iter().map(|h| (h.name.as_bytes(), h.value)))
}

/// Longest chunk-size line (with its extensions) accepted.
const MAX_SIZE_LINE: usize = 4 * 1024;

/// Longest trailer section accepted (Pingora's own limit).
const MAX_TRAILERS: usize = 64 * 1024;

/// A chunked body's end, found as its bytes pass by: each byte is looked at once.
#[derive(Debug)]
pub struct ChunkedEnd {
    state: Chunk,
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line; its bytes so far.
    Size(Vec<u8>),
    /// Chunk data still to pass.
    Data(u64),
    /// The CRLF after chunk data: how many of its two bytes were seen.
    DataEnd(u8),
    /// After the last chunk: trailer lines until an empty one. `line` counts the bytes
    /// of the current line, `cr` whether the last byte was its CR.
    Trailers { line: usize, cr: bool, total: usize },
    /// The body ended.
    Done,
}

/// The chunked body is malformed: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: Chunk::Size(Vec::new()),
        }
    }
}

impl ChunkedEnd {
    /// Looks at the next bytes of the body: how many of them belong to it (all of them,
    /// or fewer when the body ends among them).
    pub fn scan(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                Chunk::Done => break,
                Chunk::Size(line) => {
                    let rest = &bytes[at..];
                    let take = rest
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(rest.len(), |p| p + 1);
                    line.extend_from_slice(&rest[..take]);
                    at += take;
                    if line.len() > MAX_SIZE_LINE {
                        return Err(BadChunk);
                    }
                    if line.last() != Some(&b'\n') {
                        continue;
                    }
                    match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            // A line ends at its CRLF; nothing may follow it here.
                            if used != line.len() {
                                return Err(BadChunk);
                            }
                            self.state = if size == 0 {
                                Chunk::Trailers {
                                    line: 0,
                                    cr: false,
                                    total: 0,
                                }
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        // A LF inside an extension: the line goes on.
                        Ok(httparse::Status::Partial) => {}
                        Err(_) => return Err(BadChunk),
                    }
                }
                Chunk::Data(left) => {
                    let n = (*left).min((bytes.len() - at) as u64);
                    *left -= n;
                    at += n as usize;
                    if *left == 0 {
                        self.state = Chunk::DataEnd(0);
                    }
                }
                Chunk::DataEnd(seen) => {
                    let want = if *seen == 0 { b'\r' } else { b'\n' };
                    if bytes[at] != want {
                        return Err(BadChunk);
                    }
                    at += 1;
                    *seen += 1;
                    if *seen == 2 {
                        self.state = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Trailers { line, cr, total } => {
                    let b = bytes[at];
                    at += 1;
                    *total += 1;
                    if *total > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    match (b, *cr) {
                        (b'\n', true) if *line == 1 => self.state = Chunk::Done,
                        (b'\n', true) => {
                            *line = 0;
                            *cr = false;
                        }
                        // Bare LF, or CR not followed by LF.
                        (b'\n', false) | (_, true) => return Err(BadChunk),
                        (b'\r', false) => {
                            *line += 1;
                            *cr = true;
                        }
                        _ => *line += 1,
                    }
                }
            }
        }
        Ok(at)
    }

    /// Whether the body ended.
    pub fn done(&self) -> bool {
        matches!(self.state, Chunk::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut c = ChunkedEnd::default();
        let n = c.scan(body)?;
        Ok(c.done().then_some(n))
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end_whatever_the_cut() {
        let body = b"5;ext=\"a\nb\"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next HTTP/1.1\r\n";
        let end = body.len() - "GET /next HTTP/1.1\r\n".len();
        assert_eq!(end_of(body), Ok(Some(end)));
        for cut in 0..body.len() {
            let mut c = ChunkedEnd::default();
            let first = c
                .scan(&body[..cut])
                .unwrap_or_else(|e| panic!("{e} at {cut}"));
            let second = c
                .scan(&body[cut..])
                .unwrap_or_else(|e| panic!("{e} at {cut}"));
            assert!(c.done(), "cut {cut}");
            assert_eq!(first + second, end, "cut {cut}");
        }
        assert_eq!(end_of(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n",
            b"10000000000000000\r\n",
            b"5\nhello\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\n\r\r",
        ] {
            assert_eq!(
                end_of(body),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn framing_is_read_once_and_ambiguity_refused() {
        assert_eq!(request_framing(&headers(&[])), Ok(Framing::None));
        assert_eq!(
            request_framing(&headers(&[("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&headers(&[("Transfer-Encoding", "Chunked")])),
            Ok(Framing::Chunked)
        );
        for bad in [
            &[("content-length", "1"), ("Content-Length", "1")][..],
            &[("content-length", "1, 1")],
            &[("content-length", "+1")],
            &[("content-length", "")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "xchunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "3")],
        ] {
            assert!(request_framing(&headers(bad)).is_err(), "{bad:?}");
        }
    }
}
