//! Logging: `tracing` filtered by `RUST_LOG`, Pingora's `log` records bridged into it,
//! and one last line of defence at the sink: every line is redacted before it is written,
//! so a token can not reach the log even through a dependency's debug output (SPEC 13).

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::WorkerGuard;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

const REDACTED: &str = "[redacted]";

/// Removes tokens from text: JWT-shaped strings, `Bearer` credentials, and the values of
/// the configured token query parameters and cookies.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// `name=` prefixes whose values are secret (query parameters and cookies).
    names: Vec<String>,
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl Redactor {
    /// A redactor for these parameter/cookie names.
    pub fn new<I: IntoIterator<Item = String>>(names: I) -> Self {
        Redactor {
            names: names.into_iter().map(|n| format!("{n}=")).collect(),
        }
    }

    /// The redacted text (borrowed when nothing needed hiding).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let b = text.as_bytes();
        let mut out = String::new();
        let mut copied = 0;
        let mut i = 0;
        while i < b.len() {
            if let Some(end) = self.secret_at(b, i) {
                let (start, end) = end;
                out.push_str(&text[copied..start]);
                out.push_str(REDACTED);
                copied = end;
                i = end;
                continue;
            }
            i += 1;
        }
        if copied == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }

    /// If a secret value starts at `i`, the byte range to hide.
    fn secret_at(&self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        let boundary = i == 0 || !is_b64url(b[i - 1]) && b[i - 1] != b'.';
        // A JWT: base64url "ey..." segment, a dot, a segment, a dot, a segment.
        if boundary && b[i..].starts_with(b"ey") {
            let mut j = i;
            let mut dots = 0;
            while j < b.len() && (is_b64url(b[j]) || b[j] == b'.') {
                dots += usize::from(b[j] == b'.');
                j += 1;
            }
            if dots >= 2 {
                return Some((i, j));
            }
        }
        let value_end = |start: usize| {
            let mut j = start;
            while j < b.len()
                && !matches!(
                    b[j],
                    b'&' | b' ' | b'"' | b'\'' | b';' | b',' | b'\n' | b'\r' | b'\\'
                )
            {
                j += 1;
            }
            j
        };
        if (i == 0 || matches!(b[i - 1], b'?' | b'&' | b';' | b' ' | b'"'))
            && let Some(n) = self.names.iter().find(|n| b[i..].starts_with(n.as_bytes()))
        {
            let start = i + n.len();
            let end = value_end(start);
            if end > start {
                return Some((start, end));
            }
        }
        // Header dumps, debug-formatted (`"cookie": "..."`) or on the wire
        // (`Cookie: ...\r\n`): credentials of any shape, e.g. session ids.
        for (name, stop) in [
            (&b"\"cookie\": \""[..], &b"\""[..]),
            (b"\"authorization\": \"", b"\""),
            (b"cookie: ", b"\\\r\n\""),
            (b"authorization: ", b"\\\r\n\""),
        ] {
            if b.len() > i + name.len() && b[i..i + name.len()].eq_ignore_ascii_case(name) {
                let start = i + name.len();
                let len = b[start..]
                    .iter()
                    .position(|c| stop.contains(c))
                    .unwrap_or(b.len() - start);
                if len > 0 {
                    return Some((start, start + len));
                }
            }
        }
        if boundary && b.len() > i + 7 && b[i..i + 7].eq_ignore_ascii_case(b"bearer ") {
            let start = i + 7;
            let end = value_end(start);
            if end > start {
                return Some((start, end));
            }
        }
        None
    }
}

/// A writer that redacts each formatted line before it reaches stderr.
#[derive(Debug, Clone)]
pub struct RedactingStderr(Arc<Redactor>);

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(self.0.redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Lines waiting for the writer thread at most; past that, lines are dropped (and
/// counted by the writer) rather than making a request wait for stderr.
const BUFFERED_LINES: usize = 65_536;

/// Keeps the writer thread alive; taken by [`flush`] before the process exits.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the subscriber (`RUST_LOG`, default `info`) and the `log` bridge. Lines are
/// formatted on the request's thread and handed to a writer thread that redacts them and
/// writes stderr, so a flood of rejections (one info line each) costs no write syscall
/// on the request path.
pub fn init(redactor: Redactor) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(RedactingStderr(Arc::new(redactor)));
    // `try_init` also installs the `log` bridge (Pingora logs through `log`); it reports
    // an error only when something was installed before, which is harmless here.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
    if let Ok(mut slot) = WRITER.lock() {
        *slot = Some(guard);
    }
}

/// Writes out every line logged so far; call before `std::process::exit`.
pub fn flush() {
    let guard = WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
}

/// Flushes the log and exits with `code`.
pub fn exit(code: i32) -> ! {
    flush();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_tokens_everywhere() {
        let r = Redactor::new(["token".to_string(), "io_token".to_string()]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let line = format!(
            "GET /socket.io/?EIO=4&token=abc&x=1 Authorization: Bearer zzz cookie: io_token=q; {jwt}"
        );
        let out = r.redact(&line);
        for secret in ["abc", "zzz", "q;", jwt] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("EIO=4") && out.contains("x=1"), "{out}");
        assert_eq!(r.redact("nothing here 127.0.0.1"), "nothing here 127.0.0.1");
        let dump =
            r#"headers: {"Cookie": "sid=s3cr3t; a=b", "authorization": "Basic dXNlcjpwYXNz"}"#;
        let out = r.redact(dump);
        assert!(
            !out.contains("s3cr3t") && !out.contains("dXNlcjpwYXNz"),
            "{out}"
        );
    }
}
