//! `auth.revocation_file` (docs/websockets.md, "Refresh and revocation"): a JSON array of
//! revocation entries, re-read when it changes (rewritten in place or renamed over it,
//! like `jwks_file`), within a second. A file that cannot be read or is not a JSON
//! array keeps the last good list and logs an error; an element of it that is not an
//! entry is skipped alone, with an error naming its position; a missing file is an
//! empty list (the issuer may create it on the first sign-out).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::file_stamp::FileStamp;
use crate::gateway::now_secs;
use crate::live_sockets::LiveSockets;
use crate::metrics::Metrics;
use crate::revocation::{Entry, EntryError, Listed, MAX_FILE_BYTES, Revocations};

/// How often the file's metadata is looked at.
const EVERY: Duration = Duration::from_millis(250);

/// Why the file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// Over [`MAX_FILE_BYTES`].
    #[error("it is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    /// Not a JSON array of entries.
    #[error(transparent)]
    Entries(#[from] EntryError),
}

/// The file's entries (none when it does not exist), and the elements skipped.
pub fn read(path: &Path) -> Result<Listed, FileError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listed::default()),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    Ok(Entry::parse_list(&bytes)?)
}

/// The entries in force at start-up: the file's (read at start, so that the first
/// requests are judged by them; checked before, so a read error here is a race).
pub fn initial(auth: &crate::config::AuthSettings) -> Revocations {
    let horizon = auth.rules.max_lifetime.map(|m| m + auth.rules.leeway);
    let revocations = Revocations::new(horizon);
    if let Some(file) = &auth.revocation_file {
        match read(file) {
            Ok(listed) => {
                log_skipped(file, &listed);
                revocations.set_file(listed.entries, now_secs());
            }
            Err(e) => tracing::error!(file = %file.display(), "revocation list not read: {e}"),
        }
    }
    revocations
}

/// Logs each element of the file that is not an entry (its position and problem).
fn log_skipped(file: &Path, listed: &Listed) {
    for (at, e) in &listed.skipped {
        tracing::error!(file = %file.display(), entry = at, "revocation entry ignored: {e}");
    }
}

/// Applies a new list of entries: installs it, closes the open WebSockets it matches,
/// counts both.
pub fn apply(
    entries: Vec<Entry>,
    revocations: &Revocations,
    live: &LiveSockets,
    metrics: &Metrics,
) -> (usize, usize) {
    metrics.revocations_file.inc_by(entries.len() as u64);
    let kept = revocations.set_file(entries, now_secs());
    metrics.revocation_entries.set(revocations.len() as i64);
    let closed = live.close_revoked(revocations);
    count_closes(metrics, closed);
    (kept, closed)
}

/// Counts WebSockets closed by a revocation.
pub fn count_closes(metrics: &Metrics, closed: usize) {
    metrics.revocation_closes.inc_by(closed as u64);
    metrics
        .failure(crate::verify::ErrorCode::TokenRevoked)
        .inc_by(closed as u64);
}

/// Adds the watcher of `auth.revocation_file`, when one is configured.
pub fn add_watcher(server: &mut pingora::server::Server, gw: &Arc<crate::gateway::Gateway>) {
    let Some(file) = gw.settings().auth.revocation_file.clone() else {
        return;
    };
    let watcher = RevocationWatcher {
        file,
        revocations: gw.revocations().clone(),
        live: gw.live().clone(),
        metrics: gw.metrics().clone(),
    };
    server.add_service(pingora::services::background::background_service(
        "revocation_file watcher",
        watcher,
    ));
}

/// Re-reads the file when it changes.
#[derive(Debug)]
pub struct RevocationWatcher {
    /// The file.
    pub file: PathBuf,
    /// Where its entries go.
    pub revocations: Arc<Revocations>,
    /// The open WebSockets they may close.
    pub live: Arc<LiveSockets>,
    /// What it counts.
    pub metrics: Metrics,
}

impl RevocationWatcher {
    /// Reads the file and applies it, logging the result.
    fn load(&self) {
        let file = self.file.display().to_string();
        match read(&self.file) {
            Ok(listed) => {
                log_skipped(&self.file, &listed);
                let (kept, closed) =
                    apply(listed.entries, &self.revocations, &self.live, &self.metrics);
                tracing::info!(
                    file,
                    entries = kept,
                    websockets_closed = closed,
                    "revocation list loaded"
                );
            }
            Err(e) => tracing::error!(
                file,
                "revocation list not reloaded, keeping the last good list: {e}"
            ),
        }
    }
}

#[async_trait]
impl BackgroundService for RevocationWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = FileStamp::of(&self.file);
        self.load();
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = FileStamp::of(&self.file);
            if now != seen {
                seen = now;
                self.load();
            }
        }
    }
}
