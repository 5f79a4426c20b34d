//! The memory bound of the Engine.IO session map (docs/request-handling.md,
//! "What the gateway does to a request", 7): what the map holds at its full 100,000 sessions, counted by a global
//! allocator that tracks live heap bytes, so the figure is exact and the same on every
//! run.

// A `GlobalAlloc` has to be `unsafe`; this one only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use http::HeaderValue;
use pingora::lb::Backend;
use proxy::sessions::{SESSIONS, Sessions};

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

/// The documented bound for a full map.
const BOUND_BYTES: isize = 32 * 1024 * 1024;

fn fill(server: Option<Backend>) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let sessions = Sessions::default();
    for i in 0..SESSIONS {
        // Engine.IO ids are 20 characters; user names about 10.
        let sid = format!("{i:0>20}");
        let user = HeaderValue::from_str(&format!("user-{i:05}")).unwrap_or_else(|e| panic!("{e}"));
        sessions.opened(&sid, user, server.clone());
    }
    // quick_cache keeps about its capacity (its shards evict a little early).
    assert!(sessions.len() > SESSIONS * 99 / 100, "{}", sessions.len());
    let used = LIVE.load(Ordering::Relaxed) - before;
    drop(sessions);
    used
}

#[test]
fn a_full_session_map_stays_within_its_stated_bound() {
    let one = fill(None);
    let server = Backend::new("127.0.0.1:9").unwrap_or_else(|e| panic!("{e}"));
    let many = fill(Some(server));
    println!(
        "session map at {SESSIONS} sessions: {:.1} MiB ({} B each) with one upstream, {:.1} MiB ({} B each) with several",
        one as f64 / 1048576.0,
        one / SESSIONS as isize,
        many as f64 / 1048576.0,
        many / SESSIONS as isize
    );
    assert!(
        one <= BOUND_BYTES && many <= BOUND_BYTES,
        "{one} / {many} bytes"
    );
}
