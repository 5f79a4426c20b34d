//! An open tunnel (docs/websockets.md): bytes relayed both ways without a buffer per
//! connection (read into one buffer per worker thread, written straight through; only
//! a write that would block keeps its remainder), WebSocket frame boundaries tracked
//! from the upstream, and at `exp + leeway` (`close_on_expiry`) a 1008 close frame
//! sent to the client by a timer, however idle the socket is. A refresh moves that
//! timer, a revocation fires it at once ([`Relay::reschedule`], [`Relay::revoke`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::conn::Conn;
use crate::live_sockets::{Control, Slot};
use crate::upstream_tls::UpstreamStream;

/// How long the other direction may go on after one side of a tunnel closed.
const LINGER: Duration = Duration::from_secs(2);

/// After `exp + leeway`, how long the gateway waits for the upstream to finish a frame
/// in flight before it closes without a close frame.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// Bytes read at once, into the worker's buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// The one copy buffer of this worker thread: borrowed only inside a poll, never
    /// across an await, so every tunnel of the thread shares it.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Why a tunnel ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side.
    Client,
    /// The upstream closed its side.
    Upstream,
    /// A read or write failed.
    Error,
    /// The token expired (`close_on_expiry`): closed with a 1008 close frame.
    Expired,
    /// The token expired while the upstream was mid-frame; closed without a frame.
    ExpiredMidFrame,
}

/// WebSocket frame boundaries of one direction (RFC 6455 5.2), so that the gateway's
/// own close frame never lands inside a frame the upstream is sending.
#[derive(Debug, Default)]
pub struct Frames {
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
}

impl Frames {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (data.len() as u64).min(self.remaining);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(payload) = self.header_complete() {
                self.remaining = payload;
                self.have = 0;
            }
        }
    }

    /// The payload length once the header is complete.
    fn header_complete(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        let len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
        };
        Some(len)
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }
}

/// The reason of the gateway's close frame when the token expired.
const EXPIRED: &[u8] = b"token expired";
/// The reason of the gateway's close frame when the token was revoked
/// (docs/websockets.md, "Refresh and revocation").
const REVOKED: &[u8] = b"token revoked";

/// A WebSocket close frame from the server: code 1008 (policy violation) and `reason`.
fn close_frame(reason: &[u8]) -> Vec<u8> {
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&1008u16.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
struct Pump {
    /// What a blocked write left over; empty (no allocation) otherwise.
    pending: Vec<u8>,
    at: usize,
    flush: bool,
    /// The source ended (or the gateway ends this direction): shut the sink down.
    eof: bool,
    done: bool,
    bytes: u64,
}

impl Pump {
    /// Moves bytes until the source would block; `Ready` once this direction is done.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        mut frames: Option<&mut Frames>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.flush = true;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.flush = false;
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
                let data = buf.filled();
                if data.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                self.bytes += data.len() as u64;
                if let Some(f) = frames.as_deref_mut() {
                    f.feed(data);
                }
                let mut off = 0;
                while off < data.len() {
                    match Pin::new(&mut *to).poll_write(cx, &data[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pending = data[off..].to_vec();
                            break;
                        }
                    }
                }
                self.flush = true;
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
    }
}

/// Both directions of a tunnel, the expiry timer and the linger after one side ended.
#[derive(Debug)]
pub struct Relay<'a> {
    client: &'a mut Conn,
    upstream: &'a mut UpstreamStream,
    c2u: Pump,
    u2c: Pump,
    /// Frame boundaries of what the upstream sends the client.
    frames: Frames,
    /// `exp + leeway`, then [`EXPIRY_GRACE`] for a frame in flight.
    expiry: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// The token was revoked: the close frame says so.
    revoked: bool,
    closing: bool,
    /// Started when one direction ended.
    linger: Option<Pin<Box<Sleep>>>,
}

impl<'a> Relay<'a> {
    pub fn new(
        client: &'a mut Conn,
        upstream: &'a mut UpstreamStream,
        frames: Frames,
        expiry: Option<Duration>,
    ) -> Self {
        Relay {
            client,
            upstream,
            c2u: Pump::default(),
            u2c: Pump::default(),
            frames,
            expiry: expiry.map(|d| Box::pin(tokio::time::sleep(d))),
            expired: false,
            revoked: false,
            closing: false,
            linger: None,
        }
    }

    /// Bytes relayed so far: from the client, to the client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.c2u.bytes, self.u2c.bytes)
    }

    /// Moves the close to `after` from now (a refresh moved the token's `exp`), or
    /// takes it away (`None`); no effect once the close has begun. The caller never
    /// moves it earlier (docs/websockets.md, "Refresh and revocation").
    pub fn reschedule(&mut self, after: Option<Duration>) {
        if self.expired {
            return;
        }
        self.expiry = after.map(|d| Box::pin(tokio::time::sleep(d)));
    }

    /// Closes the tunnel now, at the next frame boundary, with 1008 "token revoked".
    pub fn revoke(&mut self) {
        if self.expired {
            return;
        }
        self.revoked = true;
        self.expiry = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
    }

    /// Whether the gateway closed it because its token was revoked.
    pub fn was_revoked(&self) -> bool {
        self.revoked
    }

    /// Relays until the tunnel ends; returns why.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Some(timer) = self.expiry.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                if self.expired {
                    return Poll::Ready(End::ExpiredMidFrame);
                }
                self.expired = true;
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + EXPIRY_GRACE);
                let _ = timer.as_mut().poll(cx);
            }
        }
        if self.expired && !self.closing && self.u2c.pending.is_empty() && self.frames.at_boundary()
        {
            // Close frame to the client, then close both sides.
            self.closing = true;
            self.u2c.pending = close_frame(if self.revoked { REVOKED } else { EXPIRED });
            self.u2c.at = 0;
            self.u2c.eof = true;
            self.c2u.eof = true;
        }
        if !self.c2u.done {
            match self.c2u.poll(cx, self.client, self.upstream, None) {
                Poll::Ready(Err(_)) => return Poll::Ready(End::Error),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {}
            }
        }
        if !self.u2c.done {
            let frames = (!self.closing).then_some(&mut self.frames);
            match self.u2c.poll(cx, self.upstream, self.client, frames) {
                Poll::Ready(Err(_)) => return Poll::Ready(End::Error),
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {}
            }
        }
        if self.closing {
            return if self.u2c.done {
                Poll::Ready(End::Expired)
            } else {
                Poll::Pending
            };
        }
        match (self.c2u.done, self.u2c.done) {
            (true, true) => Poll::Ready(if self.u2c.bytes > 0 {
                End::Upstream
            } else {
                End::Client
            }),
            (false, false) => Poll::Pending,
            (c_done, _) => {
                let linger = self
                    .linger
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
                match linger.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(if c_done { End::Client } else { End::Upstream })
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Relays until the tunnel ends, moving its close as `control` says (a refresh) or
/// closing it now (a revocation): the relay's timer is reset when the value changes,
/// nothing polls.
pub async fn run(relay: &mut Relay<'_>, control: Option<&Slot>) -> End {
    /// What woke the loop.
    enum Woke {
        Ended(End),
        Told(Control),
    }
    loop {
        let told = async {
            match control {
                Some(slot) => {
                    slot.changed().await;
                    slot.control()
                }
                // No registration: nothing will be told.
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            end = std::future::poll_fn(|cx| relay.poll(cx)) => Woke::Ended(end),
            c = told => Woke::Told(c),
        };
        match woke {
            Woke::Ended(end) => return end,
            Woke::Told(Control::Revoked) => relay.revoke(),
            Woke::Told(Control::Until(at)) => {
                let now = crate::gateway::now_secs();
                relay.reschedule(at.map(|at| Duration::from_secs_f64((at - now).max(0.0))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_tracked_across_any_split() {
        // A 3-byte text frame, a 300-byte binary frame (16-bit length), a masked ping.
        let mut bytes = vec![0x81, 3, b'a', b'b', b'c', 0x82, 126, 1, 44];
        bytes.extend(std::iter::repeat_n(7u8, 300));
        bytes.extend_from_slice(&[0x89, 0x80 | 1, 1, 2, 3, 4, b'p']);
        let boundaries = [0, 5, 5 + 4 + 300, bytes.len()];
        for cut in 0..bytes.len() {
            let mut f = Frames::default();
            f.feed(&bytes[..cut]);
            assert_eq!(f.at_boundary(), boundaries.contains(&cut), "cut {cut}");
            f.feed(&bytes[cut..]);
            assert!(f.at_boundary(), "cut {cut}");
        }
    }

    #[test]
    fn the_expiry_close_frame_is_a_valid_1008() {
        let f = close_frame(EXPIRED);
        assert_eq!(f[0], 0x88);
        assert_eq!(usize::from(f[1]), f.len() - 2);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1008);
        assert_eq!(&f[4..], b"token expired");
    }
}
