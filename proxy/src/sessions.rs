//! Engine.IO sessions the gateway has seen opened: which user each belongs to, and
//! with several upstream servers, which server it lives on (README "What the gateway
//! does to a request", 7 and 11).
//!
//! Every request of a session carries its `sid`, and any valid token passes the token
//! check, so the token alone would let one user read and write another's session. The
//! gateway therefore binds each `sid` to the user whose handshake opened it, learning
//! the `sid` from the server's open packet (`0{"sid":"…",…}`) as the handshake answer
//! passes through. That answer reaches the gateway before the client can send any
//! request with the `sid`, so the binding (and the server) is known from the session's
//! first request on. Consistent hashing alone would also move a session's requests when
//! a server comes back; the remembered server keeps them where the session lives.
//!
//! The map is bounded ([`SESSIONS`], least recently used first out). A `sid` it does
//! not know (evicted, or opened through another gateway process) is judged on its
//! token alone.

use http::HeaderValue;
use pingora::lb::Backend;

use crate::token::query_pairs;

/// How many Engine.IO sessions the map remembers; the least recently used go first, so
/// a flood of handshakes costs a fixed amount of memory.
pub const SESSIONS: usize = 100_000;

/// How many bytes of a handshake answer are searched for the open packet's `sid`.
/// Engine.IO servers send the open packet first and it is about 100 bytes long.
const OPEN_PACKET_SCAN: usize = 512;

/// What the gateway knows of one session.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The user whose handshake opened it; `None` when the gateway only learnt the
    /// session's server (a `sid` first seen on a later request).
    pub user: Option<HeaderValue>,
    /// The server it lives on, with several servers.
    pub server: Option<Backend>,
}

/// The known Engine.IO sessions.
pub struct Sessions {
    map: quick_cache::sync::Cache<Box<str>, Owner>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::with_capacity(SESSIONS)
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} known)", self.map.len())
    }
}

impl Sessions {
    /// A map remembering at most `capacity` sessions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// What is known of `sid`.
    pub fn get(&self, sid: &str) -> Option<Owner> {
        self.map.get(sid)
    }

    /// Whether a request of `sid` by `user` must be refused: the session was opened by
    /// another user.
    pub fn belongs_to_another(&self, sid: &str, user: &HeaderValue) -> bool {
        self.map
            .get(sid)
            .and_then(|o| o.user)
            .is_some_and(|owner| owner != user)
    }

    /// Records a session opened by `user`'s handshake (on `server`).
    pub fn opened(&self, sid: &str, user: HeaderValue, server: Option<Backend>) {
        self.map.insert(
            sid.into(),
            Owner {
                user: Some(user),
                server,
            },
        );
    }

    /// Records that `sid` now lives on `server`, keeping its user.
    pub fn moved(&self, sid: &str, server: Backend) {
        let user = self.map.get(sid).and_then(|o| o.user);
        self.map.insert(
            sid.into(),
            Owner {
                user,
                server: Some(server),
            },
        );
    }

    /// Sessions known now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// The `sid` query parameter, if any (names decoded as Engine.IO's server decodes them).
pub fn sid_of(query: &[u8]) -> Option<&str> {
    query_pairs(query)
        .find(|(_, name, value)| **name == *b"sid" && !value.is_empty())
        .and_then(|(_, _, value)| std::str::from_utf8(value).ok())
}

/// The start of a handshake answer, read as it streams by until the open packet's `sid`
/// shows up. Nothing is copied when the packet arrives in one chunk (the usual case).
#[derive(Debug)]
pub struct Handshake {
    /// The verified user of the handshake.
    pub user: HeaderValue,
    /// The server the handshake went to, with several servers.
    pub server: Option<Backend>,
    /// Bytes of earlier chunks, when the open packet was split across them.
    head: Vec<u8>,
}

/// What [`Handshake::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The open packet's session id.
    Sid(String),
    /// Not yet: the open packet may continue in the next chunk.
    More,
    /// No open packet at the start of this answer (an error page, another protocol, or
    /// more than [`OPEN_PACKET_SCAN`] bytes without one): stop looking.
    None,
}

impl Handshake {
    /// Starts reading the answer of `user`'s handshake.
    pub fn new(user: HeaderValue) -> Self {
        Self {
            user,
            server: None,
            head: Vec::new(),
        }
    }

    /// Feeds the next chunk of the answer body.
    pub fn feed(&mut self, chunk: &[u8]) -> Scan {
        if self.head.is_empty() {
            return match open_packet_sid(chunk) {
                Scan::More if chunk.len() < OPEN_PACKET_SCAN => {
                    self.head.extend_from_slice(chunk);
                    Scan::More
                }
                Scan::More => Scan::None,
                other => other,
            };
        }
        let take = chunk.len().min(OPEN_PACKET_SCAN - self.head.len());
        self.head.extend_from_slice(&chunk[..take]);
        match open_packet_sid(&self.head) {
            Scan::More if self.head.len() >= OPEN_PACKET_SCAN => Scan::None,
            other => other,
        }
    }
}

/// The `sid` of the Engine.IO open packet at the start of `body`: `0{"sid":"…"` for
/// Engine.IO v4, or behind v3's length prefix (`96:0{…`). JSON whitespace is allowed
/// around the `:`.
fn open_packet_sid(body: &[u8]) -> Scan {
    let body = &body[..body.len().min(OPEN_PACKET_SCAN)];
    // Engine.IO v3 polling frames packets as `<length>:<packet>`.
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let packet = match body.get(digits) {
        Some(b':') if digits > 0 => &body[digits + 1..],
        _ => body,
    };
    if digits == body.len() {
        return Scan::More; // a v3 length prefix cut short
    }
    match packet {
        [] | [b'0'] => return Scan::More,
        [b'0', b'{', ..] => {}
        _ => return Scan::None,
    }
    const KEY: &[u8] = b"\"sid\"";
    let Some(at) = packet.windows(KEY.len()).position(|w| w == KEY) else {
        return Scan::More;
    };
    let rest = match after(&packet[at + KEY.len()..], b':').and_then(|r| after(r, b'"')) {
        Ok(rest) => rest,
        Err(scan) => return scan,
    };
    let Some(end) = rest.iter().position(|b| *b == b'"') else {
        return Scan::More;
    };
    // Engine.IO ids are URL-safe base64 or similar; anything needing JSON escapes or
    // not printable ASCII is not a sid a client would send back verbatim.
    let sid = &rest[..end];
    if sid.is_empty() || !sid.iter().all(|b| b.is_ascii_graphic() && *b != b'\\') {
        return Scan::None;
    }
    Scan::Sid(sid.iter().copied().map(char::from).collect())
}

/// What follows `byte` after optional JSON whitespace; `More` when `bytes` ends first,
/// `None` when something else comes.
fn after(bytes: &[u8], byte: u8) -> Result<&[u8], Scan> {
    let n = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    match &bytes[n..] {
        [] => Err(Scan::More),
        [first, rest @ ..] if *first == byte => Ok(rest),
        _ => Err(Scan::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Backend {
        Backend::new("127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"))
    }

    fn handshake() -> Handshake {
        Handshake::new(HeaderValue::from_static("alice"))
    }

    #[test]
    fn the_sid_of_v4_and_v3_open_packets_is_found() {
        let v4 =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(
            open_packet_sid(v4),
            Scan::Sid("lv_VI97HAXpY6yYWAAAC".into())
        );
        let v3 = br#"96:0{"sid" : "abc-123","upgrades":[]}2:40"#;
        assert_eq!(open_packet_sid(v3), Scan::Sid("abc-123".into()));
        for cut in 0..v3.len() {
            let mut h = handshake();
            match h.feed(&v3[..cut]) {
                Scan::Sid(sid) => assert_eq!(sid, "abc-123", "cut {cut}"),
                Scan::More => assert_eq!(h.feed(&v3[cut..]), Scan::Sid("abc-123".into())),
                Scan::None => panic!("gave up at cut {cut}"),
            }
        }
    }

    #[test]
    fn answers_that_are_not_open_packets_are_left_alone() {
        for body in [
            &br#"{"error":"upstream_unavailable"}"#[..],
            br#"<html>sid</html>"#,
            br#"4{"sid":"x"}"#,
            br#"0{"sid":42}"#,
            br#"0{"sid":"a\"b"}"#,
            br#"0{"sid":""}"#,
        ] {
            assert_eq!(
                open_packet_sid(body),
                Scan::None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_split_open_packet_is_assembled_and_a_long_one_given_up() {
        let packet = br#"0{"sid":"split-sid","upgrades":[]}"#;
        for cut in 0..packet.len() {
            let mut h = handshake();
            let first = h.feed(&packet[..cut]);
            if let Scan::Sid(sid) = first {
                assert_eq!(sid, "split-sid", "cut {cut}");
                continue;
            }
            assert_eq!(first, Scan::More, "cut {cut}");
            assert_eq!(
                h.feed(&packet[cut..]),
                Scan::Sid("split-sid".into()),
                "cut {cut}"
            );
        }

        // No sid within the scanned bytes: give up instead of buffering for ever.
        let mut h = handshake();
        assert_eq!(h.feed(b"0{\"pad\":\""), Scan::More);
        let filler = vec![b'x'; 100];
        let mut last = Scan::More;
        for _ in 0..10 {
            last = h.feed(&filler);
            if last != Scan::More {
                break;
            }
        }
        assert_eq!(last, Scan::None);
        assert!(h.head.len() <= OPEN_PACKET_SCAN);
    }

    #[test]
    fn the_sid_query_parameter_is_read_like_engine_io_reads_it() {
        assert_eq!(sid_of(b"EIO=4&transport=polling&sid=abc"), Some("abc"));
        assert_eq!(sid_of(b"EIO=4&%73id=abc"), Some("abc"));
        assert_eq!(sid_of(b"EIO=4&sid="), None);
        assert_eq!(sid_of(b""), None);
    }

    #[test]
    fn sessions_are_bound_to_the_user_who_opened_them() {
        let s = Sessions::default();
        let alice = HeaderValue::from_static("alice");
        let mallory = HeaderValue::from_static("mallory");
        s.opened("s1", alice.clone(), None);
        assert!(!s.belongs_to_another("s1", &alice));
        assert!(s.belongs_to_another("s1", &mallory));
        // Unknown: judged on the token alone.
        assert!(!s.belongs_to_another("s2", &mallory));
        // Moving a session keeps its user; a session first seen later has none.
        s.moved("s1", server());
        assert!(s.belongs_to_another("s1", &mallory));
        assert_eq!(
            s.get("s1")
                .and_then(|o| o.server)
                .map(|b| b.addr.to_string()),
            Some("127.0.0.1:9".into())
        );
        s.moved("s3", server());
        assert!(!s.belongs_to_another("s3", &mallory));
    }
}
