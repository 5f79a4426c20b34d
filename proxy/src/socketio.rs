//! `reject_with = "socketio"` (docs/request-handling.md "Refusals the socket.io client understands"): refusals in the protocol the socket.io
//! client understands, so that moving the JWT check out of the socket.io server changes
//! nothing for client code written against `io.use()` middleware.
//!
//! An `io.use()` middleware that calls `next(new Error(reason))` answers the client's
//! `CONNECT` with a `CONNECT_ERROR` packet; the client then emits `connect_error` with
//! `err.message` and `err.data`, and does not retry. The gateway does the same without
//! the upstream: it opens an Engine.IO session of its own (no upgrades offered), takes
//! the client's `CONNECT` for whatever namespace it asks, and answers with
//! `44<namespace,>{"message":"<reason>","data":{"error":"<code>"}}`.
//!
//! Refused sessions live in a bounded map for a few seconds: a flood of refused
//! handshakes costs at most [`REFUSED_SESSIONS`] small entries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::Notify;

use bytes::Bytes;

use crate::decision::{Answer, Outcome};
use crate::engineio::EngineRequest;
use crate::verify::AuthError;

/// Refused sessions remembered at once; the least recently used go first.
pub const REFUSED_SESSIONS: usize = 10_000;

/// How long a refused session waits for the client's `CONNECT` (and is remembered).
pub const REFUSED_SESSION_TTL: Duration = Duration::from_secs(10);

/// Engine.IO's packet separator in polling payloads.
const SEPARATOR: char = '\u{1e}';

/// A refused Engine.IO session, waiting for the client's `CONNECT`.
#[derive(Debug)]
pub struct Refused {
    /// `{"message":"<reason>","data":{"error":"<code>"}}`
    error: String,
    /// Namespaces the client asked to join (in order).
    namespaces: Mutex<Vec<String>>,
    /// Signalled when a `CONNECT` arrives.
    connect: Notify,
    created: Instant,
}

impl Refused {
    /// Records the `CONNECT` packets of a polling `POST` body.
    pub fn take_post(&self, body: &[u8]) {
        let asked = connect_namespaces(body);
        if asked.is_empty() {
            return;
        }
        if let Ok(mut ns) = self.namespaces.lock() {
            ns.extend(asked);
        }
        self.connect.notify_waiters();
    }

    /// The `CONNECT_ERROR` packets for the namespaces asked so far, if any.
    fn answer(&self) -> Option<String> {
        let ns = self.namespaces.lock().ok()?;
        if ns.is_empty() {
            return None;
        }
        let packets: Vec<String> = ns.iter().map(|n| connect_error(n, &self.error)).collect();
        Some(packets.join(&SEPARATOR.to_string()))
    }

    /// Waits (at most until the session's time is up) for a `CONNECT`, then returns the
    /// `CONNECT_ERROR` payload; `None` when no `CONNECT` came.
    pub async fn wait_answer(&self) -> Option<String> {
        let deadline = tokio::time::Instant::from_std(self.created + REFUSED_SESSION_TTL);
        loop {
            let notified = self.connect.notified();
            if let Some(a) = self.answer() {
                return Some(a);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.answer();
            }
        }
    }
}

/// The refused sessions, bounded in number and age.
#[derive(Debug)]
pub struct Refusals {
    sessions: quick_cache::sync::Cache<Box<str>, Arc<Refused>>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            sessions: quick_cache::sync::Cache::new(REFUSED_SESSIONS),
        }
    }
}

impl Refusals {
    /// Opens a refused session for `err`; returns its Engine.IO open packet.
    pub fn open(&self, err: &AuthError) -> String {
        let sid = new_sid();
        let refused = Arc::new(Refused {
            error: error_data(err),
            namespaces: Mutex::new(Vec::new()),
            connect: Notify::new(),
            created: Instant::now(),
        });
        let open = open_packet(&sid);
        self.sessions.insert(sid.into(), refused);
        open
    }

    /// The refused session `sid`, unless unknown or expired.
    pub fn get(&self, sid: &str) -> Option<Arc<Refused>> {
        self.sessions
            .get(sid)
            .filter(|r| r.created.elapsed() < REFUSED_SESSION_TTL)
    }

    /// Forgets a session once its `CONNECT_ERROR` was delivered.
    pub fn remove(&self, sid: &str) {
        self.sessions.remove(sid);
    }
}

/// Largest polling `POST` body read from a refused session (the client's `CONNECT`).
pub const REFUSED_POST_BYTES: usize = 64 * 1024;

/// The answer to a refused Engine.IO polling request (`reject_with = "socketio"`), for
/// both HTTP paths: a handshake gets the refused session's open packet; a `POST` to a
/// refused session hands over its `CONNECT` (the body, read by `post_body`); a `GET`
/// waits for it and gets the `CONNECT_ERROR`. The `bool` says whether the connection
/// must close after the answer (a `POST` whose body was not read).
pub async fn polling_answer<F>(
    refusals: &Refusals,
    err: &AuthError,
    kind: EngineRequest,
    post_body: impl FnOnce() -> F,
) -> (Answer, bool)
where
    F: std::future::Future<Output = Option<Vec<u8>>>,
{
    const TEXT: &str = "text/plain; charset=UTF-8";
    let plain = |status: u16, content_type: &'static str, body: Bytes| {
        Answer::plain(status, content_type, body, Outcome::Rejected(err.code))
    };
    match kind {
        EngineRequest::PollingHandshake => {
            (plain(200, TEXT, Bytes::from(refusals.open(err))), false)
        }
        EngineRequest::Session { sid, post: true } => match refusals.get(&sid) {
            Some(refused) => match post_body().await {
                Some(body) => {
                    refused.take_post(&body);
                    (plain(200, TEXT, Bytes::from_static(b"ok")), false)
                }
                None => (plain(400, TEXT, Bytes::from_static(b"bad request")), true),
            },
            // Not a session refused here: the token of an established session no
            // longer passes. Engine.IO's answer to a POST it can not take; the client
            // closes the transport and reconnects.
            None => {
                let body = Bytes::from_static(br#"{"code":1,"message":"Session ID unknown"}"#);
                (plain(400, "application/json", body), true)
            }
        },
        EngineRequest::Session { sid, post: false } => {
            let answer = match refusals.get(&sid) {
                Some(refused) => {
                    let answer = refused.wait_answer().await;
                    refusals.remove(&sid);
                    answer
                }
                None => None,
            };
            let body = answer.unwrap_or_else(|| CLOSE_PACKET.to_string());
            (plain(200, TEXT, Bytes::from(body)), false)
        }
        // Upgrades are refused by the tunnel, which completes the WebSocket handshake.
        EngineRequest::WebSocketHandshake => (
            plain(400, TEXT, Bytes::from_static(b"upgrade expected")),
            true,
        ),
    }
}

/// A random Engine.IO session id (20 URL-safe characters, like engine.io's).
fn new_sid() -> String {
    let mut bytes = [0u8; 15];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system RNG failing is not something to refuse a client over; the id only
        // has to be unique among the refused sessions of the last few seconds.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..15].copy_from_slice(&nanos.to_le_bytes()[..15]);
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The Engine.IO open packet of a refused session: no upgrades, the usual timings.
pub fn open_packet(sid: &str) -> String {
    format!(
        r#"0{{"sid":"{sid}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
    )
}

/// `{"message":"<reason>","data":{"error":"<code>"}}`
pub fn error_data(err: &AuthError) -> String {
    let reason = serde_json::Value::from(err.reason.as_ref()).to_string();
    format!(
        r#"{{"message":{reason},"data":{{"error":"{}"}}}}"#,
        err.code.as_str()
    )
}

/// The socket.io `CONNECT_ERROR` packet for `namespace`.
pub fn connect_error(namespace: &str, data: &str) -> String {
    if namespace == "/" {
        format!("44{data}")
    } else {
        format!("44{namespace},{data}")
    }
}

/// Namespaces named by the socket.io `CONNECT` packets (`40`, `40{auth}`, `40/ns,`,
/// `40/ns,{auth}`) in an Engine.IO payload (packets separated by `\x1e`).
pub fn connect_namespaces(payload: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(payload)
        .split(SEPARATOR)
        .filter_map(connect_namespace_of)
        .map(String::from)
        .collect()
}

/// The Engine.IO close packet: an established session whose token no longer passes is
/// closed, and the client reconnects (fetching a fresh token if it is written to).
pub const CLOSE_PACKET: &str = "1";

/// The namespace of one socket.io `CONNECT` packet, `None` for any other packet.
pub fn connect_namespace_of(packet: &str) -> Option<&str> {
    let rest = packet.strip_prefix("40")?;
    Some(if rest.starts_with('/') {
        rest.split(',').next().unwrap_or(rest)
    } else {
        "/"
    })
}

/// Bytes in and out of a WebSocket the gateway completes itself: tungstenite speaks the
/// protocol (unmasking, control frames, fragments) over this in-memory pipe, and the
/// gateway moves the bytes to and from the client's connection.
#[derive(Debug, Default)]
struct Pipe {
    inbound: std::collections::VecDeque<u8>,
    outbound: Vec<u8>,
}

impl std::io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inbound.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbound.len());
        for (slot, b) in buf.iter_mut().zip(self.inbound.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }
}

impl std::io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The most a refused WebSocket client may send before its `CONNECT`.
const WS_INPUT_LIMIT: usize = 64 * 1024;

/// A WebSocket-only handshake refused in socket.io's terms: the open packet, then the
/// `CONNECT_ERROR` for the namespace of the client's `CONNECT`, then a close.
#[derive(Debug)]
pub struct WsRefusal {
    ws: tungstenite::WebSocket<Pipe>,
    error: String,
    received: usize,
}

impl WsRefusal {
    /// Starts the exchange; the bytes to send first (the open packet).
    pub fn start(err: &AuthError) -> (WsRefusal, Vec<u8>) {
        let ws = tungstenite::WebSocket::from_raw_socket(
            Pipe::default(),
            tungstenite::protocol::Role::Server,
            None,
        );
        let mut r = WsRefusal {
            ws,
            error: error_data(err),
            received: 0,
        };
        let _ =
            r.ws.send(tungstenite::Message::text(open_packet(&new_sid())));
        let out = r.take_output();
        (r, out)
    }

    fn take_output(&mut self) -> Vec<u8> {
        let _ = self.ws.flush();
        std::mem::take(&mut self.ws.get_mut().outbound)
    }

    /// Feeds bytes from the client; returns the bytes to send back, and whether the
    /// exchange is over (the connection should be closed after sending them).
    pub fn feed(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        self.received += bytes.len();
        self.ws.get_mut().inbound.extend(bytes);
        let mut done = self.received > WS_INPUT_LIMIT;
        while !done {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    if let Some(ns) = connect_namespace_of(text.as_str()) {
                        let packet = connect_error(ns, &self.error);
                        let _ = self.ws.send(tungstenite::Message::text(packet));
                        let _ = self.ws.close(None);
                        done = true;
                    }
                }
                Ok(tungstenite::Message::Close(_)) => done = true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(_) => done = true,
            }
        }
        (self.take_output(), done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::ErrorCode;

    #[test]
    fn packets_match_what_socket_io_servers_send() {
        let err = AuthError::new(ErrorCode::TokenExpired, "the token has expired");
        let data = error_data(&err);
        assert_eq!(
            data,
            r#"{"message":"the token has expired","data":{"error":"token_expired"}}"#
        );
        assert_eq!(connect_error("/", "{}"), "44{}");
        assert_eq!(connect_error("/admin", "{}"), "44/admin,{}");
        assert_eq!(
            connect_namespaces(b"40\x1e40/admin,{\"token\":\"x\"}\x1e2"),
            vec!["/".to_string(), "/admin".to_string()]
        );
        assert_eq!(connect_namespaces(b"40{\"a\":1}"), vec!["/".to_string()]);
        assert!(connect_namespaces(b"42[\"x\"]").is_empty());
        assert_eq!(connect_namespace_of("40/chat,"), Some("/chat"));
        assert!(open_packet("s").starts_with(r#"0{"sid":"s","upgrades":[]"#));
        assert_eq!(new_sid().len(), 20);
    }

    #[test]
    fn a_refused_websocket_speaks_real_frames() {
        use tungstenite::protocol::Role;
        // The client side, over its own pipe: what the gateway sends is read by it.
        let err = AuthError::new(ErrorCode::MissingToken, "no token was presented");
        let (mut refusal, first) = WsRefusal::start(&err);
        let mut client =
            tungstenite::WebSocket::from_raw_socket(Pipe::default(), Role::Client, None);
        client.get_mut().inbound.extend(first);
        let open = client.read().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            open.to_text()
                .unwrap_or_default()
                .starts_with(r#"0{"sid":""#)
        );
        let _ = client.send(tungstenite::Message::text("40/chat,{\"token\":\"x\"}"));
        let sent = std::mem::take(&mut client.get_mut().outbound);
        let (answer, done) = refusal.feed(&sent);
        assert!(done);
        client.get_mut().inbound.extend(answer);
        let error = client.read().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            error.to_text().unwrap_or_default(),
            r#"44/chat,{"message":"no token was presented","data":{"error":"missing_token"}}"#
        );
        assert!(matches!(client.read(), Ok(tungstenite::Message::Close(_))));
    }
}
