//! Sessions bound without state (README "Engine.IO sessions"): 200,000 handshakes'
//! sids sealed and opened again by a gateway's seal keep every binding (each opens to
//! its own user and server, none to another's) while the seal holds no byte per
//! session, counted by a global allocator that tracks live heap bytes, so the figure is
//! exact and the same on every run. A flood of handshakes has nothing to evict.

// A `GlobalAlloc` has to be `unsafe`; this one only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use proxy::sealed_sid::SidSeal;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HANDSHAKES: usize = 200_000;

#[test]
fn two_hundred_thousand_handshakes_keep_every_binding_and_no_state() {
    let seal = SidSeal::new(b"a session key of at least thirty-two bytes")
        .unwrap_or_else(|e| panic!("{e}"));
    let servers: [SocketAddr; 3] = [
        ([10, 0, 0, 1], 3000).into(),
        ([10, 0, 0, 2], 3000).into(),
        ([10, 0, 0, 3], 3000).into(),
    ];
    // What the clients hold (allocated before the count starts).
    let mut sealed: Vec<String> = Vec::with_capacity(HANDSHAKES);
    let before = LIVE.load(Ordering::Relaxed);
    let mut held = 0isize;
    for i in 0..HANDSHAKES {
        let sid = format!("{i:020}");
        let user = format!("user-{}", i % 5000);
        let s = seal
            .seal(sid.as_bytes(), user.as_bytes(), Some(servers[i % 3]))
            .unwrap_or_else(|| panic!("handshake {i} not sealed"));
        held += s.capacity() as isize;
        sealed.push(s);
    }
    // Every byte still live is a sid some client holds: the seal kept nothing.
    assert_eq!(LIVE.load(Ordering::Relaxed) - before, held);
    for (i, s) in sealed.iter().enumerate() {
        let session = seal
            .open(s.as_bytes())
            .unwrap_or_else(|| panic!("handshake {i}: its sid no longer opens"));
        assert_eq!(session.sid, format!("{i:020}"));
        assert_eq!(session.user, format!("user-{}", i % 5000).into_bytes());
        assert_eq!(session.server, Some(servers[i % 3]));
    }
    // Opening 200,000 sids left nothing behind either.
    assert_eq!(LIVE.load(Ordering::Relaxed) - before, held);
    let per_sid = held as f64 / HANDSHAKES as f64;
    println!(
        "{HANDSHAKES} handshakes: 0 bytes held by the gateway, {per_sid:.0} bytes per sid held by its client"
    );
}
