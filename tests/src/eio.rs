//! Engine.IO v4 / socket.io v5 spoken for real: the polling handshake, polls and POSTs
//! with `sid`, the polling-to-WebSocket upgrade (`2probe`/`3probe`/`5`), and
//! WebSocket-only sessions. Pings from the server are answered as a client would.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http1::{self, Response};

/// Engine.IO's packet separator in polling payloads.
pub const SEP: char = '\u{1e}';

/// How long a single protocol step may take.
pub const STEP: Duration = Duration::from_secs(10);

/// A polling session.
#[derive(Debug, Clone)]
pub struct Polling {
    addr: SocketAddr,
    /// Query carried by every request (the token, typically).
    query: String,
    headers: Vec<(String, String)>,
    /// The session id.
    pub sid: String,
    /// The open packet's JSON.
    pub open: Value,
}

fn split(body: &str) -> Vec<String> {
    body.split(SEP)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl Polling {
    /// Performs the handshake; the error is the HTTP response when it was refused.
    pub async fn handshake(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Polling, Response> {
        let target = format!("/socket.io/?EIO=4&transport=polling{}", amp(query));
        let resp = http1::get(addr, &target, headers).await;
        if resp.status != 200 {
            return Err(resp);
        }
        let text = resp.text();
        let open_json = text
            .strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {text:?}"));
        let open: Value = serde_json::from_str(open_json).unwrap_or_else(|e| panic!("{e}: {text}"));
        let sid = open["sid"].as_str().unwrap_or_default().to_string();
        assert!(!sid.is_empty(), "open packet without sid: {text}");
        Ok(Polling {
            addr,
            query: query.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
            sid,
            open,
        })
    }

    /// The same session, its requests sent to another address (another gateway in
    /// front of the same servers).
    pub fn via(&self, addr: SocketAddr) -> Polling {
        Polling {
            addr,
            ..self.clone()
        }
    }

    fn target(&self) -> String {
        format!(
            "/socket.io/?EIO=4&transport=polling&sid={}{}",
            self.sid,
            amp(&self.query)
        )
    }

    fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// POSTs packets; returns the response.
    pub async fn post(&self, packets: &[&str]) -> Response {
        let body = packets.join(&SEP.to_string());
        let mut h = self.header_refs();
        h.push(("Content-Type", "text/plain;charset=UTF-8"));
        http1::request(self.addr, "POST", &self.target(), &h, body.as_bytes()).await
    }

    /// One long-poll GET: the packets it carried (a server ping is answered).
    pub async fn poll(&self) -> Result<Vec<String>, Response> {
        let resp = tokio::time::timeout(
            STEP,
            http1::get(self.addr, &self.target(), &self.header_refs()),
        )
        .await
        .unwrap_or_else(|_| panic!("poll timed out"));
        if resp.status != 200 {
            return Err(resp);
        }
        let packets = split(&resp.text());
        if packets.iter().any(|p| p == "2") {
            let r = self.post(&["3"]).await;
            assert_eq!(r.status, 200, "pong refused: {}", r.text());
        }
        Ok(packets.into_iter().filter(|p| p != "2").collect())
    }

    /// Polls until a packet starting with `prefix` arrives; returns it.
    pub async fn poll_until(&self, prefix: &str) -> String {
        for _ in 0..10 {
            let packets = self
                .poll()
                .await
                .unwrap_or_else(|r| panic!("poll refused: {} {}", r.status, r.text()));
            if let Some(p) = packets.into_iter().find(|p| p.starts_with(prefix)) {
                return p;
            }
        }
        panic!("no packet starting with {prefix:?}");
    }

    /// Joins namespace `/` and returns the `welcome` payload.
    pub async fn join(&self) -> Value {
        let r = self.post(&["40"]).await;
        assert_eq!(r.status, 200, "CONNECT refused: {}", r.text());
        let mut join = Join::default();
        for _ in 0..10 {
            for p in self
                .poll()
                .await
                .unwrap_or_else(|r| panic!("poll refused: {} {}", r.status, r.text()))
            {
                join.feed(&p);
            }
            if let Some(w) = join.done() {
                return w;
            }
        }
        panic!("no welcome (connected = {})", join.connected);
    }
}

fn amp(query: &str) -> String {
    if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    }
}

/// Progress of joining namespace `/`: the CONNECT reply and the `welcome` event, in
/// whichever order they arrive; a CONNECT_ERROR fails the test.
#[derive(Debug, Default)]
struct Join {
    connected: bool,
    welcome: Option<Value>,
}

impl Join {
    fn feed(&mut self, packet: &str) {
        if packet.starts_with("40") {
            self.connected = true;
        } else if let Some(w) = event(packet, "welcome") {
            self.welcome = Some(w);
        } else if packet.starts_with("44") {
            panic!("CONNECT_ERROR: {packet}");
        }
    }

    fn done(&self) -> Option<Value> {
        self.welcome.clone().filter(|_| self.connected)
    }
}

/// The payload of `42["name", payload]`, if `packet` is that event.
pub fn event(packet: &str, name: &str) -> Option<Value> {
    let json = packet.strip_prefix("42")?;
    let v: Value = serde_json::from_str(json).ok()?;
    (v.get(0)?.as_str()? == name).then(|| v.get(1).cloned().unwrap_or(Value::Null))
}

/// A WebSocket session.
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Why the last [`Ws::recv`] saw the connection end (close frame, EOF or error).
    pub ended: Option<String>,
}

/// What ended a [`Ws::recv`].
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A text frame (pings already answered).
    Text(String),
    /// The connection was closed or broke.
    Closed,
}

impl Ws {
    /// Opens `/socket.io/?EIO=4&transport=websocket&<query>`. A connection that ends
    /// after its `101` is a failure: the harness never reconnects.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        Self::over(TcpStream::connect(addr).await?, addr, query, headers).await
    }

    /// Opens a WebSocket session over an already connected TCP stream (the soak tool
    /// binds several 127.0.0.x source addresses).
    pub async fn over(
        stream: TcpStream,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        Self::handshake(MaybeTlsStream::Plain(stream), addr, query, headers).await
    }

    /// Opens a WSS session over an established TLS connection ([`crate::tls::connect`]).
    pub async fn over_tls(
        stream: tokio_rustls::client::TlsStream<TcpStream>,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        Self::handshake(MaybeTlsStream::Rustls(stream), addr, query, headers).await
    }

    async fn handshake(
        stream: MaybeTlsStream<TcpStream>,
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let scheme = match stream {
            MaybeTlsStream::Plain(_) => "ws",
            _ => "wss",
        };
        let url = format!(
            "{scheme}://{addr}/socket.io/?EIO=4&transport=websocket{}",
            amp(query)
        );
        let mut req = url.into_client_request()?;
        for (n, v) in headers {
            req.headers_mut().append(
                http_name(n),
                v.parse().unwrap_or_else(|e| panic!("header {n}: {e}")),
            );
        }
        let (stream, _) = tokio_tungstenite::client_async(req, stream).await?;
        Ok(Ws {
            stream,
            ended: None,
        })
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    }

    /// Sends a text frame; false when the connection is gone.
    pub async fn try_send(&mut self, text: &str) -> bool {
        self.stream.send(Message::text(text)).await.is_ok()
    }

    /// The next text frame, answering Engine.IO pings on the way.
    pub async fn recv(&mut self) -> Recv {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        if !self.try_send("3").await {
                            return Recv::Closed;
                        }
                        continue;
                    }
                    return Recv::Text(t.as_str().to_string());
                }
                Some(Ok(Message::Close(frame))) => {
                    self.ended = Some(format!("close frame {frame:?}"));
                    return Recv::Closed;
                }
                None => {
                    self.ended = Some("end of stream".into());
                    return Recv::Closed;
                }
                Some(Err(e)) => {
                    self.ended = Some(format!("error: {e}"));
                    return Recv::Closed;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next text frame within [`STEP`], `None` when the connection ended (panics on
    /// timeout).
    async fn expect_or_closed(&mut self) -> Option<String> {
        match tokio::time::timeout(STEP, self.recv()).await {
            Ok(Recv::Text(t)) => Some(t),
            Ok(Recv::Closed) => None,
            Err(_) => panic!("no frame within {STEP:?}"),
        }
    }

    /// The next text frame within [`STEP`] (panics on close or timeout).
    pub async fn expect(&mut self) -> String {
        match self.expect_or_closed().await {
            Some(t) => t,
            None => self.closed(),
        }
    }

    fn closed(&self) -> ! {
        panic!(
            "connection closed ({})",
            self.ended.as_deref().unwrap_or("?")
        )
    }

    /// WebSocket-only session: reads the open packet, joins `/`, returns `welcome`
    /// (panics when the connection ends first).
    pub async fn open_and_join(&mut self) -> Value {
        match self.try_open_and_join().await {
            Some(welcome) => welcome,
            None => self.closed(),
        }
    }

    /// [`Ws::open_and_join`], `None` when the connection ended first.
    pub async fn try_open_and_join(&mut self) -> Option<Value> {
        let open = self.expect_or_closed().await?;
        assert!(open.starts_with("0{"), "not an open packet: {open}");
        self.try_join().await
    }

    /// Joins `/` on a session whose open packet was read (or that was upgraded from
    /// polling); returns `welcome`, `None` when the connection ended first.
    pub async fn try_join(&mut self) -> Option<Value> {
        if !self.try_send("40").await {
            return None;
        }
        let mut join = Join::default();
        loop {
            join.feed(&self.expect_or_closed().await?);
            if let Some(w) = join.done() {
                return Some(w);
            }
        }
    }

    /// Emits `echo` with ack id `id`; returns the acknowledged payload.
    pub async fn echo(&mut self, id: u32, payload: &Value) -> Value {
        self.send(&format!("42{id}[\"echo\",{payload}]")).await;
        let prefix = format!("43{id}");
        loop {
            let p = self.expect().await;
            if let Some(json) = p.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {p}"));
                return v.get(0).cloned().unwrap_or(Value::Null);
            }
        }
    }

    /// Upgrades a polling session to this WebSocket (`2probe`, `3probe`, `5`).
    pub async fn upgrade(addr: SocketAddr, polling: &Polling) -> Ws {
        let query = format!("sid={}{}", polling.sid, amp(&polling.query));
        let headers = polling.header_refs();
        let mut ws = Ws::connect(addr, &query, &headers)
            .await
            .unwrap_or_else(|e| panic!("upgrade refused: {e}"));
        ws.send("2probe").await;
        match tokio::time::timeout(STEP, ws.recv()).await {
            Ok(Recv::Text(t)) => {
                assert_eq!(t, "3probe");
                ws.send("5").await;
                ws
            }
            other => panic!("no 3probe: {other:?} ({:?})", ws.ended),
        }
    }
}

fn http_name(n: &str) -> axum::http::HeaderName {
    axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap_or_else(|e| panic!("header {n}: {e}"))
}
