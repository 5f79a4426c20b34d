//! Engine.IO as the gateway reads it (docs/request-handling.md "What the gateway does to a request"):
//! which Engine.IO request a query names (handshake, session request, WebSocket),
//! its `sid`, and the session id in the open packet of a handshake's answer, which the
//! gateway replaces with its sealed form ([`crate::sealed_sid`]). A request's query is
//! parsed once, into an [`EngineQuery`], for all of these.

use std::ops::Range;

use http::{HeaderMap, Method, header};

use crate::token::query_pairs;

/// The Engine.IO parameters, as Engine.IO's server names them: any other spelling of
/// one of them (in another letter case, percent-encoded) is refused, so that no server
/// behind the gateway can read a parameter the gateway did not.
const ENGINE_IO_PARAMS: [&[u8]; 3] = [b"EIO", b"transport", b"sid"];

/// How many bytes of a handshake answer are searched for the open packet's `sid`.
/// Engine.IO servers send the open packet first and it is about 100 bytes long.
pub const OPEN_PACKET_SCAN: usize = 512;

/// The shortest body that can hold an open packet with a `sid` (`0{"sid":"x"}`):
/// a shorter handshake answer passes as it is.
pub const MIN_OPEN_PACKET: u64 = 12;

/// The Engine.IO parameters of one request's query, read in one pass.
#[derive(Debug, Default, Clone)]
pub struct EngineQuery<'q> {
    eio: Option<&'q [u8]>,
    transport: Option<&'q [u8]>,
    /// The `sid` and where its `name=value` pair lies in the query.
    sid: Option<(&'q [u8], Range<usize>)>,
    /// Whether any Engine.IO parameter is named, in any spelling.
    named: bool,
    /// Why the parameters are refused (`400`): given twice, spelled otherwise, encoded.
    problem: Option<&'static str>,
}

impl<'q> EngineQuery<'q> {
    /// Reads a query string (without the `?`). Names are decoded as Engine.IO's server
    /// decodes them (`+` and percent-escapes); an Engine.IO parameter must then be
    /// written plainly, once: its name exactly as above and its value without escapes,
    /// so that every reader, whichever way it decodes or picks among duplicates, reads
    /// the same value the gateway read.
    pub fn parse(query: &'q [u8]) -> Self {
        let mut q = EngineQuery::default();
        for (range, name, value) in query_pairs(query) {
            let Some(canonical) = ENGINE_IO_PARAMS
                .iter()
                .copied()
                .find(|p| name.eq_ignore_ascii_case(p))
            else {
                continue;
            };
            q.named = true;
            let raw_name = &query[range.start..range.start + canonical.len().min(range.len())];
            let plain = raw_name == canonical
                && query.get(range.start + canonical.len()) == Some(&b'=')
                && !value.is_empty()
                && !value.iter().any(|b| matches!(b, b'%' | b'+'));
            let slot_taken = match canonical {
                b"EIO" => q.eio.replace(value).is_some(),
                b"transport" => q.transport.replace(value).is_some(),
                _ => q.sid.replace((value, range)).is_some(),
            };
            if slot_taken {
                q.problem =
                    Some("an Engine.IO parameter (EIO, transport, sid) is given more than once");
            } else if !plain && q.problem.is_none() {
                q.problem = Some(
                    "Engine.IO parameters (EIO, transport, sid) must be written plainly, with a value",
                );
            }
        }
        q
    }

    /// The session this request names, as the client wrote it.
    pub fn sid(&self) -> Option<&'q [u8]> {
        self.sid.as_ref().map(|(v, _)| *v)
    }

    /// Where the `sid=` pair lies in the query.
    pub fn sid_range(&self) -> Option<Range<usize>> {
        self.sid.as_ref().map(|(_, r)| r.clone())
    }

    /// Whether the query names any Engine.IO parameter (in any spelling).
    pub fn is_engine_io(&self) -> bool {
        self.named
    }

    /// Why the Engine.IO parameters are refused, if they are.
    pub fn problem(&self) -> Option<&'static str> {
        self.problem
    }

    /// Whether this is Engine.IO v4 (`EIO=4`).
    pub fn is_v4(&self) -> bool {
        self.eio == Some(&b"4"[..])
    }

    /// Whether this is a handshake whose answer opens a session: a `GET` naming a
    /// transport and no `sid`.
    pub fn is_handshake(&self, method: &Method) -> bool {
        *method == Method::GET && self.sid.is_none() && self.transport.is_some()
    }

    /// Whether this asks for the `websocket` transport.
    pub fn is_websocket(&self) -> bool {
        self.transport == Some(&b"websocket"[..])
    }

    /// What kind of Engine.IO v4 request this is, from its method and headers too.
    pub fn classify(&self, method: &Method, headers: &HeaderMap) -> Option<EngineRequest> {
        if self.problem.is_some() || self.eio != Some(&b"4"[..]) {
            return None;
        }
        let upgrade = headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        match (self.transport?, self.sid()) {
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

/// A handshake's answer as it streams by: the open packet at its start names the new
/// session, whose `sid` the gateway replaces with its sealed form before the client
/// sees it. Bytes are held only while the open packet is incomplete.
#[derive(Debug)]
pub struct Handshake {
    /// The verified user of the handshake.
    pub user: http::HeaderValue,
    /// The server the handshake went to, with several servers.
    pub server: Option<std::net::SocketAddr>,
    /// Engine.IO v4 (no length prefix: the sealed `sid` grows the body by a length
    /// known in advance).
    pub v4: bool,
    /// The answer's `Content-Length` was raised by the seal's growth before its body
    /// was read: the body must hold an open packet, or the answer is cut off.
    pub promised: bool,
    /// Bytes of earlier chunks, when the open packet was split across them.
    held: Vec<u8>,
}

/// What to send on after [`Handshake::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Nothing yet: the open packet may continue in the next chunk.
    Hold,
    /// These bytes (the open packet with the sealed `sid`, and what followed it); the
    /// handshake is done.
    Rewritten(Vec<u8>),
    /// The bytes held so far and this chunk, unchanged: no open packet starts this
    /// answer (an error page, another protocol).
    Unchanged(Vec<u8>),
    /// This chunk, unchanged (nothing was held): no open packet starts this answer.
    Pass,
    /// An open packet whose `sid` can not be sealed: the answer must not reach the
    /// client.
    Refused,
}

impl Handshake {
    /// Starts reading the answer of `user`'s handshake.
    pub fn new(user: http::HeaderValue, v4: bool) -> Self {
        Self {
            user,
            server: None,
            v4,
            promised: false,
            held: Vec::new(),
        }
    }

    /// Feeds the next chunk of the answer body; `seal` turns the upstream's `sid` into
    /// the one the client gets.
    pub fn feed(&mut self, chunk: &[u8], seal: impl FnOnce(&[u8]) -> Option<String>) -> Fed {
        if self.held.is_empty() {
            // The usual case: the whole open packet in the first chunk, nothing copied.
            return match open_packet(chunk) {
                Scan::Sid(found) => found.seal(chunk, seal),
                Scan::More if chunk.len() < OPEN_PACKET_SCAN => {
                    self.held = chunk.to_vec();
                    Fed::Hold
                }
                Scan::More | Scan::None => Fed::Pass,
            };
        }
        self.held.extend_from_slice(chunk);
        let body = std::mem::take(&mut self.held);
        match open_packet(&body) {
            Scan::Sid(found) => found.seal(&body, seal),
            Scan::More if body.len() < OPEN_PACKET_SCAN => {
                self.held = body;
                Fed::Hold
            }
            Scan::More | Scan::None => Fed::Unchanged(body),
        }
    }

    /// The answer ended: whatever is held goes on unchanged.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Where the open packet's `sid` lies in a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPacket {
    /// Engine.IO v3's `<length>:` prefix: the digits' range.
    length: Option<Range<usize>>,
    /// The `sid` value (between its quotes).
    pub sid: Range<usize>,
}

/// A whole first packet (a WebSocket frame's payload) with its open packet's `sid`
/// sealed; `Unchanged` when it is no open packet.
pub fn rewrite_open_packet(packet: &[u8], seal: impl FnOnce(&[u8]) -> Option<String>) -> Fed {
    match open_packet(packet) {
        Scan::Sid(found) => found.seal(packet, seal),
        Scan::More | Scan::None => Fed::Unchanged(packet.to_vec()),
    }
}

impl OpenPacket {
    /// The body with the `sid` sealed, or `Refused` when it can not be.
    fn seal(&self, body: &[u8], seal: impl FnOnce(&[u8]) -> Option<String>) -> Fed {
        match seal(&body[self.sid.clone()]) {
            Some(sealed) => Fed::Rewritten(self.rewrite(body, &sealed)),
            None => Fed::Refused,
        }
    }

    /// The body with `sealed` in place of the `sid` (and v3's length prefix adjusted).
    pub fn rewrite(&self, body: &[u8], sealed: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + sealed.len());
        let mut from = 0;
        if let Some(digits) = &self.length {
            let old: usize = std::str::from_utf8(&body[digits.clone()])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            let new = (old + sealed.len()).saturating_sub(self.sid.len());
            out.extend_from_slice(new.to_string().as_bytes());
            from = digits.end;
        }
        out.extend_from_slice(&body[from..self.sid.start]);
        out.extend_from_slice(sealed.as_bytes());
        out.extend_from_slice(&body[self.sid.end..]);
        out
    }
}

/// What [`open_packet`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The open packet and its session id.
    Sid(OpenPacket),
    /// Not yet: the open packet may continue in the next chunk.
    More,
    /// No open packet at the start of this answer.
    None,
}

/// The open packet at the start of `body`: `0{"sid":"…"` for Engine.IO v4, or behind
/// v3's length prefix (`96:0{…`). JSON whitespace is allowed around the `:`.
pub fn open_packet(body: &[u8]) -> Scan {
    let scanned = &body[..body.len().min(OPEN_PACKET_SCAN)];
    // Engine.IO v3 polling frames packets as `<length>:<packet>`.
    let digits = scanned.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == scanned.len() {
        return Scan::More; // a v3 length prefix cut short
    }
    let (length, start) = match scanned.get(digits) {
        Some(b':') if digits > 0 => (Some(0..digits), digits + 1),
        _ => (None, 0),
    };
    let packet = &scanned[start..];
    match packet {
        [] | [b'0'] => return Scan::More,
        [b'0', b'{', ..] => {}
        _ => return Scan::None,
    }
    const KEY: &[u8] = b"\"sid\"";
    let Some(at) = packet.windows(KEY.len()).position(|w| w == KEY) else {
        return Scan::More;
    };
    let after_key = &packet[at + KEY.len()..];
    let rest = match after(after_key, b':').and_then(|r| after(r, b'"')) {
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
    let sid_start = scanned.len() - rest.len();
    Scan::Sid(OpenPacket {
        length,
        sid: sid_start..sid_start + end,
    })
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

    #[test]
    fn the_sid_is_read_once_in_one_spelling_or_refused() {
        let q = EngineQuery::parse(b"EIO=4&transport=polling&sid=abc&t=1");
        assert_eq!(q.sid(), Some(&b"abc"[..]));
        assert_eq!(q.sid_range(), Some(24..31));
        assert_eq!(q.problem(), None);
        for bad in [
            &b"EIO=4&%73id=zz&sid=abc"[..],
            b"EIO=4&sid=zz&sid=abc",
            b"EIO=4&SID=zz&sid=abc",
            b"EIO=4&sid=%61bc",
            b"EIO=4&sid=a+c",
            b"EIO=4&sid=",
            b"EIO=4&sid",
            b"%45IO=4&transport=polling",
            b"EIO=4&transport=pol%6Cing",
            b"EIO=4&Transport=polling",
            b"EIO=4&EIO=3",
        ] {
            let q = EngineQuery::parse(bad);
            assert!(q.problem().is_some(), "{}", String::from_utf8_lossy(bad));
            assert!(q.is_engine_io());
        }
        assert!(EngineQuery::parse(b"a=1&Eio=4").is_engine_io());
        assert!(!EngineQuery::parse(b"v=2&token=x").is_engine_io());
        assert_eq!(EngineQuery::parse(b"v=2&token=x").problem(), None);
    }

    fn sealed(_: &[u8]) -> Option<String> {
        Some("SEALED-sid".into())
    }

    #[test]
    fn the_sid_of_v4_and_v3_open_packets_is_replaced_whatever_the_cut() {
        let v4 =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        let want4 = br#"0{"sid":"SEALED-sid","upgrades":["websocket"],"pingInterval":25000}"#;
        let v3 = br#"30:0{"sid" : "abc-123","upgrades":[]}2:40"#;
        let want3 = br#"33:0{"sid" : "SEALED-sid","upgrades":[]}2:40"#;
        for (body, want) in [(&v4[..], &want4[..]), (&v3[..], &want3[..])] {
            for cut in 0..body.len() {
                let mut h = Handshake::new(http::HeaderValue::from_static("alice"), true);
                let out = match h.feed(&body[..cut], sealed) {
                    Fed::Rewritten(out) => {
                        let mut out = out;
                        out.extend_from_slice(&body[cut..]);
                        out
                    }
                    Fed::Hold => match h.feed(&body[cut..], sealed) {
                        Fed::Rewritten(out) => out,
                        other => panic!("cut {cut}: {other:?}"),
                    },
                    other => panic!("cut {cut}: {other:?}"),
                };
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn answers_that_are_not_open_packets_pass_unchanged() {
        for body in [
            &br#"{"error":"upstream_unavailable"}"#[..],
            br#"<html>sid</html>"#,
            br#"4{"sid":"x"}"#,
            br#"0{"sid":42}"#,
            br#"0{"sid":"a\"b"}"#,
            br#"0{"sid":""}"#,
        ] {
            let mut h = Handshake::new(http::HeaderValue::from_static("alice"), true);
            assert_eq!(
                h.feed(body, sealed),
                Fed::Pass,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // No sid within the scanned bytes: given up instead of held for ever.
        let mut h = Handshake::new(http::HeaderValue::from_static("alice"), true);
        assert_eq!(h.feed(b"0{\"pad\":\"", sealed), Fed::Hold);
        let filler = vec![b'x'; 100];
        let mut last = Fed::Hold;
        for _ in 0..10 {
            last = h.feed(&filler, sealed);
            if last != Fed::Hold {
                break;
            }
        }
        assert!(matches!(last, Fed::Unchanged(b) if b.len() > OPEN_PACKET_SCAN));
        // A sid that can not be sealed: the answer is refused.
        let mut h = Handshake::new(http::HeaderValue::from_static("alice"), true);
        assert_eq!(h.feed(br#"0{"sid":"abc"}"#, |_| None), Fed::Refused);
    }
}
