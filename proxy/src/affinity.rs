//! Engine.IO session affinity across several upstream servers (SPEC item 9).
//!
//! Consistent hashing of the sticky key alone would move a session's requests when a
//! server comes back (its keys return to it) and break the sessions opened elsewhere
//! while it was away. So the gateway remembers which server each `sid` lives on, and
//! it learns that from the handshake itself: the server's open packet
//! (`0{"sid":"…",…}`) passes through the gateway before the client can send any request
//! with that `sid`, so no later health-check change can route the session's first
//! request to a server that does not know it.

use pingora::lb::Backend;

use crate::token::query_pairs;

/// How many Engine.IO sessions the map remembers; the least recently used go first, so
/// a flood of handshakes costs a fixed amount.
pub const SESSIONS: usize = 100_000;

/// How many bytes of a handshake answer are searched for the open packet's `sid`.
/// Engine.IO servers send the open packet first and it is about 100 bytes long.
const OPEN_PACKET_SCAN: usize = 512;

/// The server of each known Engine.IO session.
pub struct Affinity {
    sessions: quick_cache::sync::Cache<Box<str>, Backend>,
}

impl Default for Affinity {
    fn default() -> Self {
        Self {
            sessions: quick_cache::sync::Cache::new(SESSIONS),
        }
    }
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Affinity({} sessions)", self.sessions.len())
    }
}

impl Affinity {
    /// The server remembered for `sid`.
    pub fn server_of(&self, sid: &str) -> Option<Backend> {
        self.sessions.get(sid)
    }

    /// Remembers that session `sid` lives on `server`.
    pub fn remember(&self, sid: &str, server: Backend) {
        self.sessions.insert(sid.into(), server);
    }
}

/// The `sid` query parameter, if any (names decoded as Engine.IO's server decodes them).
pub fn sid_of(query: Option<&str>) -> Option<&str> {
    query_pairs(query?.as_bytes())
        .find(|(_, name, value)| **name == *b"sid" && !value.is_empty())
        .and_then(|(_, _, value)| std::str::from_utf8(value).ok())
}

/// The start of a handshake answer, read as it streams by until the open packet's `sid`
/// shows up. Nothing is copied when the packet arrives in one chunk (the usual case).
#[derive(Debug)]
pub struct Handshake {
    /// The server the handshake went to.
    pub server: Backend,
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
    /// Starts reading the answer of a handshake sent to `server`.
    pub fn new(server: Backend) -> Self {
        Self {
            server,
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
            let mut h = Handshake::new(server());
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
            let mut h = Handshake::new(server());
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
        let mut h = Handshake::new(server());
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
        assert_eq!(sid_of(Some("EIO=4&transport=polling&sid=abc")), Some("abc"));
        assert_eq!(sid_of(Some("EIO=4&%73id=abc")), Some("abc"));
        assert_eq!(sid_of(Some("EIO=4&sid=")), None);
        assert_eq!(sid_of(None), None);
    }

    #[test]
    fn remembered_sessions_are_found() {
        let a = Affinity::default();
        a.remember("s1", server());
        assert_eq!(
            a.server_of("s1").map(|b| b.addr.to_string()),
            Some("127.0.0.1:9".into())
        );
        assert!(a.server_of("s2").is_none());
    }
}
