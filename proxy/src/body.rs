//! Message bodies the gateway relays itself (docs/request-handling.md "What the gateway
//! does to a request"): a body by its length is counted, a chunked body is decoded
//! (chunk-size lines with `httparse`, RFC 9112 7.1) and written again by the gateway as
//! plain chunks, without extensions or trailers. No byte of a body's framing reaches
//! the other side as the sender wrote it, so the two sides can not read it
//! differently.

use std::io;
use std::time::Duration;

use pingora::prelude::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framing::BadChunk;

/// Bytes gathered before a write (a body larger than this is relayed in pieces).
pub const WRITE_BATCH: usize = 16 * 1024;

/// Bytes read at once from either side.
const READ_BYTES: usize = 16 * 1024;

/// Longest chunk-size line (with its extensions) accepted.
const MAX_SIZE_LINE: usize = 4 * 1024;

/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// Most trailer fields accepted.
const MAX_TRAILER_FIELDS: usize = 64;

/// A chunked body decoded as its bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunks {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body ended.
    Done,
}

impl Chunks {
    /// Decodes what it can of `buf`, handing each piece of chunk data to `data`;
    /// returns how many bytes of `buf` it used (the rest waits for more bytes).
    pub fn decode(&mut self, buf: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BadChunk> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match *self {
                Chunks::Done => return Ok(at),
                Chunks::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        *self = if size == 0 {
                            Chunks::Trailers
                        } else {
                            Chunks::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_SIZE_LINE => {
                        return Ok(at);
                    }
                    _ => return Err(BadChunk),
                },
                Chunks::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = left.min(rest.len() as u64) as usize;
                    data(&rest[..n]);
                    at += n;
                    *self = match left - n as u64 {
                        0 => Chunks::DataEnd,
                        more => Chunks::Data(more),
                    };
                }
                Chunks::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        *self = Chunks::Size;
                    }
                    [] | [b'\r'] => return Ok(at),
                    _ => return Err(BadChunk),
                },
                Chunks::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            at += used;
                            *self = Chunks::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() <= MAX_TRAILERS => {
                            return Ok(at);
                        }
                        _ => return Err(BadChunk),
                    }
                }
            }
        }
    }

    /// Whether the body ended.
    pub fn done(&self) -> bool {
        matches!(self, Chunks::Done)
    }
}

/// Appends `data` to `out` as one chunk.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a body is written to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// As it is (a length, or a body the connection's close ends).
    Plain,
    /// As chunks (a chunked body, or a close-delimited one to an HTTP/1.1 client).
    Chunked,
}

/// How a body arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This many bytes.
    Length(u64),
    /// Chunks.
    Chunked,
    /// Everything until the sender closes.
    UntilClose,
}

/// Why a relay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The sender closed or failed before the body's end.
    #[error("the sender ended the body early")]
    Read,
    /// The sender framed the body badly (a malformed chunk).
    #[error("the body is framed badly")]
    Malformed,
    /// The sender was silent for longer than the read timeout.
    #[error("the sender was silent for too long")]
    TimedOut,
    /// The receiver could not be written to.
    #[error("the receiver could not be written to: {0}")]
    Write(io::Error),
}

/// A body relayed: what was left over behind its end.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes the sender sent after the body's end (an upstream that does this is not
    /// reused).
    pub extra: bool,
}

/// Relays a body from `src` to `dst`: `first` are bytes already read from `src` (behind
/// the head), `out` holds bytes to write before the body (the head), and is written
/// together with the body's first bytes. Each read waits at most `timeout` (`None`:
/// no limit, as for a client's body, which the connection's own limits bound).
pub async fn relay<R, W>(
    src: &mut R,
    first: &[u8],
    dst: &mut W,
    mut out: Vec<u8>,
    source: Source,
    encode: Encode,
    timeout: Option<Duration>,
) -> Result<Relayed, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(first.len().clamp(1024, READ_BYTES));
    buf.extend_from_slice(first);
    let mut chunks = Chunks::default();
    let mut left = match source {
        Source::Length(n) => n,
        _ => u64::MAX,
    };
    let mut extra = false;
    loop {
        // Take what the buffer holds of the body.
        let used = match source {
            Source::Length(_) => {
                let n = left.min(buf.len() as u64) as usize;
                out.extend_from_slice(&buf[..n]);
                left -= n as u64;
                if n < buf.len() {
                    extra = true;
                }
                n
            }
            Source::UntilClose => {
                match encode {
                    Encode::Chunked => push_chunk(&mut out, &buf),
                    Encode::Plain => out.extend_from_slice(&buf),
                }
                buf.len()
            }
            Source::Chunked => {
                let used = chunks
                    .decode(&buf, |data| match encode {
                        Encode::Chunked => push_chunk(&mut out, data),
                        Encode::Plain => out.extend_from_slice(data),
                    })
                    .map_err(|_| RelayError::Malformed)?;
                if chunks.done() && used < buf.len() {
                    extra = true;
                }
                used
            }
        };
        buf.drain(..used);
        let ended = match source {
            Source::Length(_) => left == 0,
            Source::Chunked => chunks.done(),
            Source::UntilClose => false,
        };
        if ended {
            if encode == Encode::Chunked {
                out.extend_from_slice(LAST_CHUNK);
            }
            dst.write_all(&out).await.map_err(RelayError::Write)?;
            dst.flush().await.map_err(RelayError::Write)?;
            return Ok(Relayed { extra });
        }
        if out.len() >= WRITE_BATCH || (!out.is_empty() && buf.is_empty()) {
            dst.write_all(&out).await.map_err(RelayError::Write)?;
            dst.flush().await.map_err(RelayError::Write)?;
            out.clear();
        }
        // Read more of the body.
        let at = buf.len();
        let want = match source {
            Source::Length(_) => left.min(READ_BYTES as u64) as usize,
            _ => READ_BYTES,
        };
        buf.resize(at + want, 0);
        let read = src.read(&mut buf[at..]);
        let n = match timeout {
            Some(t) => fast_timeout(t, read)
                .await
                .map_err(|_| RelayError::TimedOut)?,
            None => read.await,
        }
        .map_err(|e| match e.kind() {
            // A client connection refuses a malformed chunk as it reads it.
            io::ErrorKind::InvalidData => RelayError::Malformed,
            _ => RelayError::Read,
        })?;
        buf.truncate(at + n);
        if n == 0 {
            if source == Source::UntilClose {
                if encode == Encode::Chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                dst.write_all(&out).await.map_err(RelayError::Write)?;
                dst.flush().await.map_err(RelayError::Write)?;
                return Ok(Relayed { extra: false });
            }
            return Err(RelayError::Read);
        }
    }
}

/// Reads a whole body of at most `limit` bytes (decoded); `None` when it is longer,
/// malformed, or the sender stops early.
pub async fn read_all<R: AsyncRead + Unpin>(
    src: &mut R,
    first: &[u8],
    source: Source,
    limit: usize,
    timeout: Option<Duration>,
) -> Option<(Vec<u8>, Relayed)> {
    let mut sink = Limited {
        bytes: Vec::new(),
        limit,
    };
    let relayed = relay(
        src,
        first,
        &mut sink,
        Vec::new(),
        source,
        Encode::Plain,
        timeout,
    )
    .await
    .ok()?;
    Some((sink.bytes, relayed))
}

/// A writer into memory that fails past its limit.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(io::ErrorKind::FileTooLarge.into()));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(body: &[u8], cut: usize) -> Result<(Vec<u8>, usize), BadChunk> {
        let mut c = Chunks::default();
        let mut data = Vec::new();
        let mut buf = body[..cut].to_vec();
        let mut total = 0;
        let used = c.decode(&buf, |d| data.extend_from_slice(d))?;
        total += used;
        buf.drain(..used);
        buf.extend_from_slice(&body[cut..]);
        total += c.decode(&buf, |d| data.extend_from_slice(d))?;
        if !c.done() {
            return Err(BadChunk);
        }
        Ok((data, total))
    }

    #[test]
    fn a_chunked_body_decodes_to_its_data_whatever_the_cut() {
        let body = b"5;ext=\"a\"\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        for cut in 0..body.len() {
            let (data, used) = decode_all(body, cut).unwrap_or_else(|e| panic!("{e} at {cut}"));
            assert_eq!(data, b"hello!", "cut {cut}");
            assert_eq!(used, end, "cut {cut}");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nBad Field\r\n\r\n",
        ] {
            assert!(
                decode_all(body, body.len()).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn bodies_are_relayed_by_their_framing() {
        let cases: [(&[u8], Source, Encode, &[u8]); 4] = [
            (
                b"hello world",
                Source::Length(5),
                Encode::Plain,
                b"HEADhello",
            ),
            (
                b"3\r\nabc\r\n0\r\n\r\n",
                Source::Chunked,
                Encode::Chunked,
                b"HEAD3\r\nabc\r\n0\r\n\r\n",
            ),
            (
                b"3\r\nabc\r\n0\r\n\r\n",
                Source::Chunked,
                Encode::Plain,
                b"HEADabc",
            ),
            (
                b"until close",
                Source::UntilClose,
                Encode::Chunked,
                b"HEADb\r\nuntil close\r\n0\r\n\r\n",
            ),
        ];
        for (input, source, encode, want) in cases {
            let mut src: &[u8] = input;
            let mut dst = Vec::new();
            let relayed = relay(
                &mut src,
                &[],
                &mut dst,
                b"HEAD".to_vec(),
                source,
                encode,
                None,
            )
            .await;
            assert!(relayed.is_ok(), "{source:?}");
            assert_eq!(dst, want, "{source:?}");
        }
        let mut short: &[u8] = b"abc";
        let mut dst = Vec::new();
        let r = relay(
            &mut short,
            &[],
            &mut dst,
            Vec::new(),
            Source::Length(10),
            Encode::Plain,
            None,
        )
        .await;
        assert!(matches!(r, Err(RelayError::Read)));
    }
}
