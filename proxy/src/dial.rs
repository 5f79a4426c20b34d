//! Connecting to an upstream server (docs/configuration.md, `[upstream]`): at most
//! `upstream.max_connecting` connects in flight to one server, the others waiting their
//! turn at the gateway; a connect that times out or is refused tried again
//! (`upstream.retries`); the whole dial, queueing included, within
//! `connect_timeout * (retries + 1)`.
//!
//! Why a cap: a reconnect storm (every client of a restarted gateway or upstream at
//! once) would otherwise overflow the server's accept queue, and a SYN the server drops
//! is retransmitted only 1 s later, then 3 s after the first (RFC 6298 2.1 and 5.5: an
//! initial retransmission timeout of 1 s, doubled at each loss): waiting here, in
//! order, is faster than waiting for the kernel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::config::UpstreamSettings;
use crate::upstream_tls::{UpstreamStream, UpstreamTls};

/// Opens connections to the upstream servers, built once at start-up from
/// `[upstream]`.
#[derive(Debug)]
pub struct Dialer {
    /// One semaphore per configured server, as many permits as `max_connecting`; none
    /// when there is no cap.
    slots: HashMap<SocketAddr, Semaphore>,
    /// The permits each semaphore was made with.
    cap: usize,
    /// `upstream.tls`
    tls: Option<UpstreamTls>,
    /// `upstream.connect_timeout`: one try.
    connect_timeout: Duration,
    /// `upstream.retries`
    retries: u32,
}

/// Why a dial failed: the last try's error, or the wait for a turn that outlasted the
/// budget.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({} after {retries} retries)", if *.timed_out { "timed out" } else { "failed" })]
pub struct DialError {
    /// The dial ran out of time (waiting for its turn, or connecting): `504` rather
    /// than `502`.
    pub timed_out: bool,
    /// Tries after the first that were made.
    pub retries: u32,
    /// What the last try met.
    #[source]
    pub error: io::Error,
}

impl Dialer {
    /// A dialer for these settings: a cap of `max_connecting` per server in `servers`.
    pub fn new(settings: &UpstreamSettings) -> Self {
        let cap = settings
            .max_connecting
            .map_or(0, |cap| cap.min(Semaphore::MAX_PERMITS));
        let slots = match cap {
            0 => HashMap::new(),
            _ => settings
                .servers
                .iter()
                .map(|addr| (*addr, Semaphore::new(cap)))
                .collect(),
        };
        Dialer {
            slots,
            cap,
            tls: settings.tls.clone(),
            connect_timeout: settings.connect_timeout,
            retries: settings.retries,
        }
    }

    /// The longest a dial takes, all tries and queueing included:
    /// `connect_timeout * (retries + 1)`.
    pub fn budget(&self) -> Duration {
        self.connect_timeout
            .checked_mul(self.retries.saturating_add(1))
            .unwrap_or(Duration::MAX)
    }

    /// Connects in flight to `addr` now (zero for a server without a cap).
    pub fn connecting(&self, addr: SocketAddr) -> usize {
        self.slots
            .get(&addr)
            .map_or(0, |s| self.cap.saturating_sub(s.available_permits()))
    }

    /// Connects to `addr` (TCP, and the TLS handshake with `upstream.tls`): waits for a
    /// turn among the `max_connecting` connects to that server (a server not in
    /// `upstream.servers` has no cap), holds it only while connecting, and tries again
    /// a connect that timed out or was refused, up to `retries` times, all within
    /// [`Dialer::budget`].
    pub async fn dial(&self, addr: SocketAddr) -> Result<UpstreamStream, DialError> {
        let budget = self.budget();
        let start = Instant::now();
        // A budget too long for the clock is as good as none.
        let deadline = start
            .checked_add(budget)
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
        let mut retries = 0;
        loop {
            let turn = self.turn(addr, deadline, budget).await;
            let turn = turn.map_err(|error| DialError {
                timed_out: true,
                retries,
                error,
            })?;
            let left = deadline.saturating_duration_since(Instant::now());
            let tried =
                UpstreamStream::connect(addr, self.tls.as_ref(), self.connect_timeout.min(left))
                    .await;
            // Connected or not, this connect is over: the next one may go.
            drop(turn);
            match tried {
                Ok(stream) => return Ok(stream),
                Err((timed_out, error))
                    if retries < self.retries
                        && Instant::now() < deadline
                        && (timed_out || error.kind() == io::ErrorKind::ConnectionRefused) =>
                {
                    retries += 1;
                }
                Err((timed_out, error)) => {
                    return Err(DialError {
                        timed_out,
                        retries,
                        error,
                    });
                }
            }
        }
    }

    /// A turn to connect to `addr` (a permit of its semaphore, in arrival order), or
    /// `TimedOut` when none comes before `deadline`.
    async fn turn(
        &self,
        addr: SocketAddr,
        deadline: Instant,
        budget: Duration,
    ) -> io::Result<Option<SemaphorePermit<'_>>> {
        let Some(slots) = self.slots.get(&addr) else {
            return Ok(None);
        };
        match tokio::time::timeout_at(deadline, slots.acquire()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // Never closed: the dialer owns it.
            Ok(Err(closed)) => Err(io::Error::other(closed)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no turn to connect to {addr} within {budget:?}: upstream.max_connecting ({}) connects in flight",
                    self.cap
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::Sticky;

    /// Long enough never to be what ends a test that is not about timing out.
    const LONG: Duration = Duration::from_secs(30);

    fn settings(
        addr: SocketAddr,
        max_connecting: usize,
        retries: u32,
        connect_timeout: Duration,
        tls: Option<UpstreamTls>,
    ) -> UpstreamSettings {
        UpstreamSettings {
            servers: vec![addr],
            sticky: Sticky::Token,
            health_check: Duration::ZERO,
            connect_timeout,
            retries,
            max_connecting: (max_connecting > 0).then_some(max_connecting),
            read_timeout: LONG,
            pool_idle: LONG,
            tls,
        }
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        (l, addr)
    }

    /// TLS trusting a throwaway certificate. The servers below take the TCP connection
    /// and never answer the ClientHello, so a connect stays in flight (holding its
    /// turn) until the server closes it or it times out; and every connect that got a
    /// turn is one connection the listener can count.
    fn tls() -> (tempfile::TempDir, UpstreamTls) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        let tls = UpstreamTls::new(Some(&ca), Some("localhost")).unwrap_or_else(|e| panic!("{e}"));
        (dir, tls)
    }

    async fn accept(l: &TcpListener) -> TcpStream {
        match tokio::time::timeout(LONG, l.accept()).await {
            Ok(Ok((s, _))) => s,
            other => panic!("no connection: {other:?}"),
        }
    }

    fn dials(dialer: &Arc<Dialer>, addr: SocketAddr, n: usize) -> Vec<JoinHandle<bool>> {
        (0..n)
            .map(|_| {
                let d = dialer.clone();
                tokio::spawn(async move { d.dial(addr).await.is_ok() })
            })
            .collect()
    }

    #[tokio::test]
    async fn a_connect_returns_a_stream_and_gives_its_turn_back() {
        let (l, addr) = listener().await;
        let dialer = Dialer::new(&settings(addr, 2, 0, LONG, None));
        let server = tokio::spawn(async move {
            let mut s = accept(&l).await;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map(|_| buf)
        });
        let mut stream = dialer.dial(addr).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(stream, UpstreamStream::Plain(_)), "{stream:?}");
        assert_eq!(dialer.connecting(addr), 0);
        stream
            .write_all(b"ping")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let read = server.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.ok(), Some(*b"ping"));
    }

    #[tokio::test]
    async fn a_refused_connect_is_tried_again_retries_times_then_fails() {
        let (l, addr) = listener().await;
        drop(l);
        for retries in [0, 3] {
            let dialer = Dialer::new(&settings(addr, 2, retries, LONG, None));
            let err = match dialer.dial(addr).await {
                Ok(s) => panic!("connected to a closed port: {s:?}"),
                Err(e) => e,
            };
            assert!(!err.timed_out, "{err}");
            assert_eq!(err.retries, retries, "{err}");
            assert_eq!(err.error.kind(), io::ErrorKind::ConnectionRefused, "{err}");
            assert_eq!(dialer.connecting(addr), 0);
        }
    }

    #[tokio::test]
    async fn no_more_than_max_connecting_connects_reach_a_server_at_once() {
        let (l, addr) = listener().await;
        let (_dir, tls) = tls();
        let dialer = Arc::new(Dialer::new(&settings(addr, 2, 0, LONG, Some(tls))));
        let dials = dials(&dialer, addr, 5);
        let mut held = vec![accept(&l).await, accept(&l).await];
        assert_eq!(dialer.connecting(addr), 2);
        // The other three wait at the gateway: their SYNs are not even sent. (Without
        // the cap they would arrive within milliseconds.)
        let third = tokio::time::timeout(Duration::from_millis(500), l.accept()).await;
        assert!(third.is_err(), "a third connect was let through: {third:?}");
        // A connect that ends (the server closed it: neither refused nor timed out, so
        // not tried again) lets the next one through, and only one.
        held.remove(0);
        held.push(accept(&l).await);
        assert_eq!(dialer.connecting(addr), 2);
        // Each close lets one more through, until all five have been tried.
        for _ in 0..2 {
            held.remove(0);
            held.push(accept(&l).await);
        }
        held.clear();
        for d in dials {
            assert!(
                !d.await.unwrap_or_else(|e| panic!("{e}")),
                "a TLS handshake with a silent server succeeded"
            );
        }
        assert_eq!(dialer.connecting(addr), 0);
    }

    #[tokio::test]
    async fn max_connecting_0_is_no_cap() {
        let (l, addr) = listener().await;
        let (_dir, tls) = tls();
        let dialer = Arc::new(Dialer::new(&settings(addr, 0, 0, LONG, Some(tls))));
        let dials = dials(&dialer, addr, 5);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(accept(&l).await);
        }
        held.clear();
        for d in dials {
            assert!(!d.await.unwrap_or_else(|e| panic!("{e}")));
        }
    }

    #[tokio::test]
    async fn waiting_for_a_turn_counts_against_the_budget() {
        let (l, addr) = listener().await;
        let (_dir, tls) = tls();
        // One turn, one try of 1 s: a budget of 1 s for the whole dial.
        let timeout = Duration::from_secs(1);
        let dialer = Arc::new(Dialer::new(&settings(addr, 1, 0, timeout, Some(tls))));
        let first = dials(&dialer, addr, 1);
        let _held = accept(&l).await;
        // Queued behind a connect that holds the only turn until its own timeout.
        let started = Instant::now();
        let err = match dialer.dial(addr).await {
            Ok(s) => panic!("a TLS handshake with a silent server succeeded: {s:?}"),
            Err(e) => e,
        };
        let took = started.elapsed();
        assert!(err.timed_out, "{err}");
        assert_eq!(err.retries, 0, "{err}");
        // Its own try got what was left of 1 s, not a whole second more.
        assert!(took < Duration::from_millis(1700), "took {took:?}: {err}");
        for d in first {
            assert!(!d.await.unwrap_or_else(|e| panic!("{e}")));
        }
    }
}
