//! Kept-alive upstream connections (docs/request-handling.md "Upstream connections"):
//! one idle list per configured server, most recently used first. A connection goes
//! back only after an exchange in which both sides ended cleanly
//! ([`crate::exchange`]); one taken out is checked first (idle for less than
//! `upstream.pool_idle`, and the upstream has neither closed it nor sent anything since
//! its last answer), so a request is never written onto a connection known to be dead.
//! Nothing runs in the background: expired connections are dropped when the list is
//! next touched.
//!
//! A connection is used again only for a request carrying the same identity (the
//! fields the gateway set on the request before: its verified user and claims, or none
//! on a public path). HTTP/1.1 answers carry nothing that names their request (RFC 9112
//! 9.3), so an upstream that answers one request twice shifts every later answer on its
//! connection by one, and its stale answer can arrive after the check above; bound to
//! one identity, such a shift can never hand one user's answer to another. A public
//! request has no identity the gateway knows (it may carry the app's own session
//! cookie): its connection is kept by its client connection alone ([`Kept`]) and
//! closed with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::upstream_tls::UpstreamStream;

/// Idle connections kept per server at the most (beyond it, a returned one is closed).
pub const MAX_IDLE_PER_SERVER: usize = 512;

/// The fields the gateway set on a request for its verified identity (empty on a
/// public path): a kept-alive connection serves only requests with the same.
pub type Identity = Vec<(HeaderName, HeaderValue)>;

/// An idle connection, when it was last used, and whose requests it carries.
#[derive(Debug)]
struct Idle {
    stream: UpstreamStream,
    since: Instant,
    owner: Identity,
}

impl Idle {
    /// The connection, when it was idle for less than `idle_for` and is still quiet
    /// ([`quiet`]); else it is dropped.
    fn usable(self, idle_for: Duration) -> Option<UpstreamStream> {
        let Idle {
            mut stream, since, ..
        } = self;
        (since.elapsed() < idle_for && quiet(&mut stream)).then_some(stream)
    }
}

/// The idle connections of every server.
#[derive(Debug)]
pub struct Pool {
    /// The servers are known at start-up: the map is never written after it.
    servers: HashMap<SocketAddr, Mutex<Vec<Idle>>>,
    /// `upstream.pool_idle`: how long a connection may stay idle.
    idle_for: Duration,
}

impl Pool {
    /// An empty pool for these servers.
    pub fn new(servers: &[SocketAddr], idle_for: Duration) -> Self {
        Pool {
            servers: servers
                .iter()
                .map(|a| (*a, Mutex::new(Vec::new())))
                .collect(),
            idle_for,
        }
    }

    /// A kept-alive connection to `addr` that is still usable and last carried a
    /// request of `owner`'s, if any.
    pub fn take(
        &self,
        addr: SocketAddr,
        owner: &[(HeaderName, HeaderValue)],
    ) -> Option<UpstreamStream> {
        let list = self.servers.get(&addr)?;
        loop {
            let idle = {
                let mut list = list.lock().ok()?;
                // The most recent first: with one identity, the last one.
                let at = list.iter().rposition(|i| i.owner == owner)?;
                list.remove(at)
            };
            // Checked and, when stale, dropped outside the lock.
            if let Some(stream) = idle.usable(self.idle_for) {
                return Some(stream);
            }
        }
    }

    /// Keeps a connection whose exchange (a request of `owner`'s) ended cleanly, for
    /// the next request of `owner`'s to `addr`.
    pub fn put(&self, addr: SocketAddr, owner: Identity, stream: UpstreamStream) {
        if self.idle_for.is_zero() {
            return;
        }
        let Some(list) = self.servers.get(&addr) else {
            return;
        };
        let expired: Vec<Idle> = {
            let Ok(mut list) = list.lock() else {
                return;
            };
            // The oldest are at the front.
            let stale = list
                .iter()
                .take_while(|i| i.since.elapsed() >= self.idle_for)
                .count();
            let mut expired: Vec<Idle> = list.drain(..stale).collect();
            if list.len() >= MAX_IDLE_PER_SERVER {
                expired.push(list.remove(0));
            }
            list.push(Idle {
                stream,
                since: Instant::now(),
                owner,
            });
            expired
        };
        drop(expired);
    }

    /// The kept-alive connections one client connection may use ([`Kept`]).
    pub fn for_client(&self) -> Kept<'_> {
        Kept {
            pool: self,
            public: None,
        }
    }

    /// Idle connections held, for every server.
    pub fn idle(&self) -> usize {
        self.servers
            .values()
            .filter_map(|l| l.lock().ok().map(|l| l.len()))
            .sum()
    }
}

/// The kept-alive upstream connections one client connection may use: the shared
/// pool for requests with a verified identity, and one connection of its own for its
/// public requests, closed when the client connection ends.
#[derive(Debug)]
pub struct Kept<'p> {
    pool: &'p Pool,
    /// The connection of this client's last public request, and its server.
    public: Option<(SocketAddr, Idle)>,
}

impl Kept<'_> {
    /// A usable kept-alive connection to `addr` for a request of `identity` (empty on a
    /// public path), if any.
    pub fn take(
        &mut self,
        addr: SocketAddr,
        identity: &[(HeaderName, HeaderValue)],
    ) -> Option<UpstreamStream> {
        if !identity.is_empty() {
            return self.pool.take(addr, identity);
        }
        let (at, idle) = self.public.take()?;
        idle.usable(self.pool.idle_for).filter(|_| at == addr)
    }

    /// Keeps a connection whose exchange (a request of `identity`) ended cleanly.
    pub fn put(&mut self, addr: SocketAddr, identity: Identity, stream: UpstreamStream) {
        if !identity.is_empty() {
            return self.pool.put(addr, identity, stream);
        }
        if !self.pool.idle_for.is_zero() {
            let idle = Idle {
                stream,
                since: Instant::now(),
                owner: identity,
            };
            self.public = Some((addr, idle));
        }
    }
}

/// Whether an idle connection has nothing to say: not closed by the upstream, nothing
/// sent since its last answer (a byte there would be read as the next answer's start,
/// and every answer after it would go to the request before it). The socket itself is
/// asked (a non-blocking `MSG_PEEK`): the runtime's readiness flags may not have seen
/// bytes that arrived while the connection sat in the pool.
fn quiet(stream: &mut UpstreamStream) -> bool {
    let tcp = match stream {
        UpstreamStream::Plain(tcp) => &*tcp,
        UpstreamStream::Tls(tls) => {
            // Plaintext the TLS layer already holds counts too.
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            let mut cx = Context::from_waker(Waker::noop());
            if !matches!(
                Pin::new(tls.as_mut()).poll_read(&mut cx, &mut buf),
                Poll::Pending
            ) {
                return false;
            }
            tls.get_ref().0
        }
    };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(tcp).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (server, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        (client, server)
    }

    /// A listening server and a pool for it (`pool_idle` 60 s).
    async fn server() -> (TcpListener, SocketAddr, Pool) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::new(&[addr], Duration::from_secs(60));
        (listener, addr, pool)
    }

    /// The client side once something (a close, bytes) has reached its socket.
    async fn once_readable(client: TcpStream) -> UpstreamStream {
        client.readable().await.unwrap_or_else(|e| panic!("{e}"));
        UpstreamStream::Plain(client)
    }

    #[tokio::test]
    async fn only_quiet_connections_come_back() {
        let (listener, addr, pool) = server().await;
        assert!(pool.take(addr, &[]).is_none());

        let (quiet_one, _server) = pair(&listener).await;
        pool.put(addr, Vec::new(), UpstreamStream::Plain(quiet_one));
        assert!(
            pool.take(addr, &[]).is_some(),
            "an open, quiet connection is reused"
        );

        let (closed, server) = pair(&listener).await;
        drop(server);
        pool.put(addr, Vec::new(), once_readable(closed).await);
        assert!(
            pool.take(addr, &[]).is_none(),
            "a closed connection is dropped"
        );

        let (talking, mut server) = pair(&listener).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        pool.put(addr, Vec::new(), once_readable(talking).await);
        assert!(
            pool.take(addr, &[]).is_none(),
            "a connection with bytes waiting is dropped"
        );
        assert_eq!(pool.idle(), 0);

        let expiring = Pool::new(&[addr], Duration::ZERO);
        let (c, _s) = pair(&listener).await;
        expiring.put(addr, Vec::new(), UpstreamStream::Plain(c));
        assert_eq!(expiring.idle(), 0, "pool_idle = 0s keeps nothing");
    }

    fn user(name: &'static str) -> Identity {
        vec![(
            HeaderName::from_static("x-auth-user"),
            HeaderValue::from_static(name),
        )]
    }

    #[tokio::test]
    async fn a_connection_serves_only_the_identity_it_served() {
        let (listener, addr, pool) = server().await;
        let (alices, _s1) = pair(&listener).await;
        let (publics, _s2) = pair(&listener).await;
        pool.put(addr, user("alice"), UpstreamStream::Plain(alices));
        pool.put(addr, Vec::new(), UpstreamStream::Plain(publics));
        assert!(pool.take(addr, &user("bob")).is_none(), "not bob's");
        assert!(pool.take(addr, &user("alice")).is_some(), "alice's");
        assert!(pool.take(addr, &user("alice")).is_none(), "taken once");
        assert!(pool.take(addr, &[]).is_some(), "the public one");
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn a_public_requests_connection_serves_only_its_client_connection() {
        let (listener, addr, pool) = server().await;
        let mut one = pool.for_client();
        let mut other = pool.for_client();
        let (public, _s1) = pair(&listener).await;
        let (alices, _s2) = pair(&listener).await;
        one.put(addr, Vec::new(), UpstreamStream::Plain(public));
        one.put(addr, user("alice"), UpstreamStream::Plain(alices));
        assert_eq!(pool.idle(), 1, "only alice's is shared");
        assert!(other.take(addr, &[]).is_none(), "not another client's");
        assert!(
            other.take(addr, &user("alice")).is_some(),
            "alice's, anywhere"
        );
        assert!(one.take(addr, &[]).is_some(), "its own");
        assert!(one.take(addr, &[]).is_none(), "taken once");
    }
}
