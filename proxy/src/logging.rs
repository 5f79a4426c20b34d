//! Logging: `tracing` filtered by `RUST_LOG`, Pingora's `log` records bridged into it,
//! and one last line of defence at the sink: every line is redacted before it is written,
//! so a token can not reach the log even through a dependency's debug output
//! (SECURITY.md "Defences and the tests that show them": nothing secret in logs).

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;

use crate::token::TokenSource;

use tracing_subscriber::EnvFilter;

const REDACTED: &str = "[redacted]";

/// Targets that dump message bodies below `info`: capped at `info`.
const QUIET_TARGETS: [&str; 2] = ["pingora_proxy=info", "pingora_core=info"];

/// Removes secrets from text, whatever their spelling: JWT-shaped strings, `Bearer` and
/// `Basic` credentials, the values of the token query parameters, token cookies and the
/// Engine.IO `sid` (names compared after percent-decoding and in any letter case, as
/// servers read them), and whole `Cookie`/`Authorization`/token-header values in every
/// form a header dump takes (debug-quoted with escapes, on the wire with or without a
/// space after the colon, escaped raw heads).
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Lower-case query parameter and cookie names whose values are secret.
    params: Vec<Vec<u8>>,
    /// Lower-case header names whose whole values are secret in header dumps.
    headers: Vec<Vec<u8>>,
    /// Bytes a secret can start with other than after a parameter delimiter (`e` of a
    /// JWT, `b` of `Bearer`/`Basic`, a secret header's first letter in either case):
    /// every other byte is passed over with one lookup.
    starts: [bool; 256],
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Longest parameter name decoded when looking for a secret one.
const MAX_PARAM_NAME: usize = 96;

/// Ends a parameter or credential value.
fn is_value_end(b: u8) -> bool {
    matches!(
        b,
        b'&' | b' ' | b'"' | b'\'' | b';' | b',' | b'\n' | b'\r' | b'\\' | b'\t'
    )
}

/// The percent-decoded (`+` as space), lower-cased form of a parameter name.
fn decode_name(raw: &[u8]) -> Vec<u8> {
    let plus: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&plus)
        .map(|b| b.to_ascii_lowercase())
        .collect()
}

impl Redactor {
    /// A redactor for the configured token sources. The Engine.IO `sid` and the
    /// default `token` parameter are always secret, and so are `Cookie` and
    /// `Authorization` (which covers `Proxy-Authorization`) header values.
    pub fn for_sources(sources: &[TokenSource]) -> Self {
        let mut params: Vec<Vec<u8>> = vec![b"token".to_vec(), b"sid".to_vec()];
        // `sid` also as a JSON member (`"sid":"…"`, the open packet) and in any dump of it.
        let mut headers: Vec<Vec<u8>> = vec![
            b"cookie".to_vec(),
            b"authorization".to_vec(),
            b"sid".to_vec(),
        ];
        for s in sources {
            match s {
                TokenSource::Query(n) | TokenSource::Cookie(n) => {
                    params.push(n.to_ascii_lowercase().into_bytes());
                }
                TokenSource::Header(h) => headers.push(h.as_str().as_bytes().to_vec()),
                TokenSource::Bearer => {}
            }
        }
        params.sort();
        params.dedup();
        headers.sort();
        headers.dedup();
        Self::new(params, headers)
    }

    fn new(params: Vec<Vec<u8>>, headers: Vec<Vec<u8>>) -> Self {
        let mut starts = [false; 256];
        for first in [b'e', b'b', b'B']
            .into_iter()
            .chain(headers.iter().filter_map(|h| h.first().copied()))
        {
            starts[usize::from(first.to_ascii_lowercase())] = true;
            starts[usize::from(first.to_ascii_uppercase())] = true;
        }
        Redactor {
            params,
            headers,
            starts,
        }
    }

    /// The redacted text (borrowed when nothing needed hiding).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let b = text.as_bytes();
        let mut out = String::new();
        let mut copied = 0;
        let mut i = 0;
        while i < b.len() {
            if let Some((start, end)) = self.secret_at(b, i) {
                // Ranges start and end at ASCII bytes, so they are char boundaries.
                out.push_str(text.get(copied..start).unwrap_or_default());
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
        out.push_str(text.get(copied..).unwrap_or_default());
        Cow::Owned(out)
    }

    /// If a secret value starts at `i`, the byte range to hide.
    fn secret_at(&self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        let after_delimiter =
            i == 0 || matches!(b[i - 1], b'?' | b'&' | b';' | b' ' | b'"' | b'\t' | b',');
        if !after_delimiter && !self.starts[usize::from(b[i])] {
            return None;
        }
        // After a separator, or after a percent-encoded byte (`token%3DeyJ…`).
        let boundary =
            i == 0 || !is_b64url(b[i - 1]) && b[i - 1] != b'.' || i >= 3 && b[i - 3] == b'%';
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
        if let Some(range) = self.header_value_at(b, i) {
            return Some(range);
        }
        if after_delimiter {
            if let Some(range) = self.param_value_at(b, i) {
                return Some(range);
            }
        }
        for scheme in [&b"bearer "[..], b"basic "] {
            if boundary
                && b.len() > i + scheme.len()
                && b[i..i + scheme.len()].eq_ignore_ascii_case(scheme)
            {
                return non_empty(value_after(b, i + scheme.len()));
            }
        }
        None
    }

    /// `name=value` at `i` with a secret decoded name: the value's range.
    fn param_value_at(&self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        let rest = &b[i..b.len().min(i + MAX_PARAM_NAME + 1)];
        let eq = rest.iter().position(|c| *c == b'=' || is_value_end(*c))?;
        if rest[eq] != b'=' || eq == 0 {
            return None;
        }
        let raw = &rest[..eq];
        let secret = if raw.iter().any(|b| matches!(b, b'%' | b'+')) {
            self.params.contains(&decode_name(raw))
        } else {
            self.params.iter().any(|p| p.eq_ignore_ascii_case(raw))
        };
        if !secret {
            return None;
        }
        non_empty(value_after(b, i + eq + 1))
    }

    /// A secret header's value at `i`, in any dump form: `cookie: v`, `Cookie:v`,
    /// `"cookie": "v"` (ends at the first unescaped quote), or an escaped raw head
    /// (ends at `\r` or `\n`, written out or escaped).
    fn header_value_at(&self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        let name = self
            .headers
            .iter()
            .find(|h| b.len() > i + h.len() && b[i..i + h.len()].eq_ignore_ascii_case(h))?;
        let mut j = i + name.len();
        if b[j..].starts_with(b"\\\"") {
            j += 2;
        } else if b.get(j) == Some(&b'"') {
            j += 1;
        }
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if b.get(j) != Some(&b':') {
            return None;
        }
        j += 1;
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        let quoted = b.get(j) == Some(&b'"');
        let start = j + usize::from(quoted);
        let mut k = start;
        while k < b.len() {
            match b[k] {
                b'\r' | b'\n' => break,
                b'"' if quoted => break,
                b'\\' => match b.get(k + 1) {
                    Some(b'r' | b'n') => break,
                    Some(_) => k += 2,
                    None => k += 1,
                },
                _ => k += 1,
            }
        }
        non_empty((start, k.min(b.len())))
    }
}

/// The value starting at `start` (an opening `"` or `\"` is part of it): up to the
/// first byte that ends a value.
fn value_after(b: &[u8], start: usize) -> (usize, usize) {
    let mut j = start;
    if b[j..].starts_with(b"\\\"") {
        j += 2;
    } else if b[j..].starts_with(b"\"") {
        j += 1;
    }
    while j < b.len() && !is_value_end(b[j]) {
        j += 1;
    }
    (start, j)
}

fn non_empty((start, end): (usize, usize)) -> Option<(usize, usize)> {
    (end > start).then_some((start, end))
}

/// The writer thread's sink: lines are redacted into `pending`, which goes to stderr
/// when the thread has no more lines waiting (tracing-appender's worker flushes after
/// each batch): a flood of refusals costs one `write` per batch, not one per line.
#[derive(Debug)]
pub struct RedactingStderr {
    redactor: Redactor,
    /// Redacted lines not written yet (written at [`PENDING_BYTES`] without waiting).
    pending: Vec<u8>,
}

const PENDING_BYTES: usize = 64 * 1024;

impl RedactingStderr {
    /// A sink redacting with `redactor`.
    pub fn new(redactor: Redactor) -> Self {
        let pending = Vec::new();
        RedactingStderr { redactor, pending }
    }
}

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.pending
            .extend_from_slice(self.redactor.redact(&text).as_bytes());
        if self.pending.len() >= PENDING_BYTES {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut stderr = std::io::stderr().lock();
        let written = stderr.write_all(&self.pending);
        self.pending.clear();
        written.and(stderr.flush())
    }
}

/// Lines waiting for the writer thread at most; past that, lines are dropped (and
/// counted by the writer) rather than making a request wait for stderr.
const BUFFERED_LINES: usize = 65_536;

/// Keeps the writer thread alive; taken by [`flush`] before the process exits.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the subscriber (`RUST_LOG`, default `info`) and the `log` bridge. Lines are
/// formatted on the request's thread and handed to a writer thread that redacts them and
/// writes stderr a batch at a time ([`RedactingStderr`]), so a flood of rejections (one
/// info line each) costs no write syscall on the request path, and one per batch off it.
pub fn init(redactor: Redactor) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora logs whole requests and response bodies (socket.io messages, open
    // packets with their sid) at debug: never below info, whatever `RUST_LOG` says.
    let filter = QUIET_TARGETS
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(RedactingStderr::new(redactor));
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
    use proptest::prelude::*;

    fn redactor() -> Redactor {
        let sources = [
            "query:token",
            "cookie:io_token",
            "header:x-token",
            "query:access",
        ]
        .map(|s| TokenSource::parse(s).unwrap_or_else(|e| panic!("{e}")));
        Redactor::for_sources(&sources)
    }

    #[test]
    fn hides_tokens_everywhere() {
        let r = redactor();
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

    #[test]
    fn the_forms_found_in_the_field_are_hidden() {
        let r = redactor();
        for (text, secret) in [
            ("GET /socket.io/?EIO=4&%74oken=S1a.b%2Ec", "S1a"),
            (
                "request=GET /socket.io/?EIO=4&transport=polling&sid=SIDSECRET",
                "SIDSECRET",
            ),
            ("request=GET /socket.io/?%53ID=SIDSECRET", "SIDSECRET"),
            (r#"{"cookie": "a=\"x\"; sid=SECRET1"}"#, "SECRET1"),
            (
                r#"buf: GET / HTTP/1.1\r\nCookie:sid=SECRET2\r\nAuthorization:Basic QWxhZGRpbjpvcGVu\r\n"#,
                "SECRET2",
            ),
            (
                r#"buf: GET / HTTP/1.1\r\nAuthorization:Basic QWxhZGRpbjpvcGVu\r\n"#,
                "QWxhZGRpbjpvcGVu",
            ),
            (
                "Proxy-Authorization: Basic QWxhZGRpbjpvcGVu",
                "QWxhZGRpbjpvcGVu",
            ),
            ("x-token: SECRET3", "SECRET3"),
            (r#"cookie: io_token="SECRET4""#, "SECRET4"),
            ("access=SECRET5", "SECRET5"),
            (
                "GET /socket.io/?EIO=4&token%3deyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
                "eyJzdWIiOiJhIn0",
            ),
            (r#"body: 0{"sid":"SIDSECRET6","upgrades":[]}"#, "SIDSECRET6"),
            (
                r#"Body(Some(b"0{\"sid\":\"SIDSECRET7\",\"upgrades\":[]}"))"#,
                "SIDSECRET7",
            ),
            (r#"{"sid" : "SIDSECRET8"}"#, "SIDSECRET8"),
        ] {
            let out = r.redact(text);
            assert!(!out.contains(secret), "{secret} in {out}");
        }
    }

    /// A name spelled with random percent-escapes and letter case.
    fn spelled(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), name.len())
            .prop_map(move |choices| {
                name.bytes()
                    .zip(choices)
                    .map(|(c, (escape, upper, hex_upper))| {
                        let c = if upper { c.to_ascii_uppercase() } else { c };
                        match (escape, hex_upper) {
                            (true, true) => format!("%{c:02X}"),
                            (true, false) => format!("%{c:02x}"),
                            (false, _) => char::from(c).to_string(),
                        }
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn no_secret_survives_any_spelling(
            name in prop_oneof![spelled("token"), spelled("sid"), spelled("access")],
            secret in "[A-Za-z0-9_.~-]{12,40}",
            before in "[a-z=&]{0,10}",
            form in 0..6usize,
        ) {
            let r = redactor();
            let text = match form {
                0 => format!("GET /socket.io/?{before}&{name}={secret}&x=1 HTTP/1.1"),
                1 => format!("request=GET /p?{name}={secret}"),
                2 => format!(r#"{{"cookie": "a=\"x\"; {name}={secret}"}}"#),
                3 => format!(r#"buf: GET / HTTP/1.1\r\nCookie:{before}{secret}\r\nHost: a\r\n"#),
                4 => format!("Authorization: Basic {secret}"),
                _ => format!(r#"Cookie: {name}="{secret}"; other=1"#),
            };
            let out = r.redact(&text);
            prop_assert!(!out.contains(&secret), "{} in {}", secret, out);
        }
    }
}
