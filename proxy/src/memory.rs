//! Giving freed memory back to the system. A burst of abusive connections (10,000 idle
//! sockets, megabyte-sized headers) makes glibc's allocator grow its heaps; freed, that
//! memory stays mapped unless it is trimmed. Two measures keep the gateway's memory at
//! its baseline once a burst is over:
//!
//! - a fixed `M_MMAP_THRESHOLD` (128 KiB, glibc's initial value): large buffers such as a
//!   header being read stay in their own mappings and are unmapped when freed, instead of
//!   glibc raising the threshold after the first free and serving them from the heap;
//! - a background task that calls `malloc_trim(0)` every few seconds, which returns the
//!   free pages of every arena.
//!
//! The two libc calls are the only `unsafe` code in the workspace.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Allocations at least this large get their own mapping.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// How often free memory is returned.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Fixes the mmap threshold; call once at start-up, before any thread is started.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns free heap pages to the system every [`TRIM_EVERY`].
#[derive(Debug)]
pub struct Trimmer;

#[async_trait]
impl BackgroundService for Trimmer {
    #[allow(unsafe_code)]
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    // SAFETY: malloc_trim only releases free memory held by the allocator.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            }
        }
    }
}
