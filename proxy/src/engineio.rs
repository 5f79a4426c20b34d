//! Engine.IO as the gateway reads it (README "What the gateway does to a request"):
//! which Engine.IO request a query names (handshake, session request, WebSocket),
//! its `sid`, and the session id in the open packet of a handshake's answer. A
//! request's query is parsed once, into an [`EngineQuery`], for all of these.

use http::{HeaderMap, HeaderValue, Method, header};
use pingora::lb::Backend;

use crate::token::query_pairs;

/// Query parameters that make a request part of an Engine.IO session: a public path
/// requested with any of them (in any letter case) is protected like any other.
const ENGINE_IO_PARAMS: [&[u8]; 3] = [b"eio", b"transport", b"sid"];

/// How many bytes of a handshake answer are searched for the open packet's `sid`.
/// Engine.IO servers send the open packet first and it is about 100 bytes long.
const OPEN_PACKET_SCAN: usize = 512;

/// The Engine.IO parameters of one request's query, read in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineQuery<'q> {
    /// `EIO`, `transport` and `sid` when each was given exactly once (as Engine.IO's
    /// server names them).
    eio: Option<&'q [u8]>,
    transport: Option<&'q [u8]>,
    only_sid: Option<&'q [u8]>,
    /// One of those given more than once: not a request Engine.IO would take.
    repeated: bool,
    /// The first non-empty `sid`, as Engine.IO's server reads it.
    sid: Option<&'q str>,
    /// Whether any Engine.IO parameter is named, in any letter case.
    named: bool,
}

impl<'q> EngineQuery<'q> {
    /// Reads a query string (without the `?`); names are decoded as Engine.IO decodes
    /// them.
    pub fn parse(query: &'q [u8]) -> Self {
        let mut q = EngineQuery::default();
        for (_, name, value) in query_pairs(query) {
            if ENGINE_IO_PARAMS
                .iter()
                .any(|p| name.eq_ignore_ascii_case(p))
            {
                q.named = true;
            }
            let slot = match &*name {
                b"EIO" => &mut q.eio,
                b"transport" => &mut q.transport,
                b"sid" => {
                    if q.sid.is_none() && !value.is_empty() {
                        q.sid = std::str::from_utf8(value).ok();
                    }
                    &mut q.only_sid
                }
                _ => continue,
            };
            if slot.is_some() {
                q.repeated = true;
            }
            *slot = Some(value);
        }
        q
    }

    /// The session this request belongs to, if it names one.
    pub fn sid(&self) -> Option<&'q str> {
        self.sid
    }

    /// Whether the query names any Engine.IO parameter (in any letter case).
    pub fn is_engine_io(&self) -> bool {
        self.named
    }

    /// What kind of Engine.IO v4 request this is, from its method and headers too.
    pub fn classify(&self, method: &Method, headers: &HeaderMap) -> Option<EngineRequest> {
        if self.repeated || self.eio != Some(&b"4"[..]) {
            return None;
        }
        let upgrade = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        match (self.transport?, self.only_sid.filter(|s| !s.is_empty())) {
            (b"polling", None) if *method == Method::GET && !upgrade => {
                Some(EngineRequest::PollingHandshake)
            }
            (b"websocket", None)
                if *method == Method::GET
                    && upgrade
                    && headers.contains_key(header::SEC_WEBSOCKET_KEY)
                    && headers
                        .get(header::SEC_WEBSOCKET_VERSION)
                        .is_some_and(|v| v.as_bytes() == b"13") =>
            {
                Some(EngineRequest::WebSocketHandshake)
            }
            (b"polling", Some(sid)) if *method == Method::GET || *method == Method::POST => {
                Some(EngineRequest::Session {
                    sid: std::str::from_utf8(sid).ok()?.to_string(),
                    post: *method == Method::POST,
                })
            }
            _ => None,
        }
    }
}

/// What kind of Engine.IO v4 request this is; `None` from [`EngineQuery::classify`] for anything
/// else (other `EIO` versions, other transports, malformed requests), which keeps the
/// HTTP `401`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineRequest {
    /// `GET ?EIO=4&transport=polling` without `sid`.
    PollingHandshake,
    /// `GET ?EIO=4&transport=websocket` with a WebSocket upgrade, without `sid`.
    WebSocketHandshake,
    /// A request of an existing session.
    Session {
        /// The `sid` parameter.
        sid: String,
        /// `POST` (the client sending packets) rather than `GET` (polling).
        post: bool,
    },
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

    fn classify(method: &Method, headers: &HeaderMap, query: &[u8]) -> Option<EngineRequest> {
        EngineQuery::parse(query).classify(method, headers)
    }

    fn sid_of(query: &[u8]) -> Option<&str> {
        EngineQuery::parse(query).sid()
    }

    #[test]
    fn classifies_engine_io_v4_requests_only() {
        let h = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(
            classify(&get, &h, b"EIO=4&transport=polling&t=x&token=a"),
            Some(EngineRequest::PollingHandshake)
        );
        assert_eq!(
            classify(&Method::POST, &h, b"EIO=4&transport=polling&sid=abc"),
            Some(EngineRequest::Session {
                sid: "abc".into(),
                post: true
            })
        );
        for q in [
            &b"EIO=3&transport=polling"[..],
            b"transport=polling",
            b"EIO=4",
            b"EIO=4&transport=carrier-pigeon",
            b"EIO=4&EIO=4&transport=polling",
            b"EIO=4&transport=websocket",
        ] {
            assert_eq!(
                classify(&get, &h, q),
                None,
                "{}",
                String::from_utf8_lossy(q)
            );
        }
        let ws: HeaderMap = [
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="),
            (header::SEC_WEBSOCKET_VERSION, "13"),
        ]
        .into_iter()
        .map(|(n, v)| (n, http::HeaderValue::from_static(v)))
        .collect();
        assert_eq!(
            classify(&get, &ws, b"EIO=4&transport=websocket"),
            Some(EngineRequest::WebSocketHandshake)
        );
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
    fn engine_io_parameters_are_noticed_in_any_case() {
        assert!(EngineQuery::parse(b"a=1&Eio=4").is_engine_io());
        assert!(EngineQuery::parse(b"SID=x").is_engine_io());
        assert!(!EngineQuery::parse(b"v=2&token=x").is_engine_io());
    }
}
