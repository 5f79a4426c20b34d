//! Signing a user out everywhere (docs/demo.md, "Sign out everywhere"): `/logout`
//! revokes every token of the user issued before now, with the entry
//! `{"user": <name>, "issued_before": <unix seconds>}` the gateway reads (README,
//! "Refresh and sign-out"). Two ways reach the gateways:
//!
//! - with `demo.redis_url`, one `XADD <cluster_key_prefix>revocations * revoke <entry>`
//!   into the stream every gateway of the cluster reads;
//! - on a single machine, `demo.revocation_file` (the gateway's `auth.revocation_file`),
//!   rewritten atomically: a temporary file in the same directory, flushed to disk, then
//!   renamed over the old one, so the gateway never reads half a list.
//!
//! Concurrent sign-outs of this process never lose an entry: one process-local mutex
//! serialises the read-modify-write of the file. Other writers of the same file (another
//! process, an operator's editor) are not coordinated with.
//!
//! The file stays bounded: an `issued_before` entry older than the longest a token can
//! live (`auth.max_lifetime`, else `demo.token_ttl`, plus `auth.leeway`) can no longer
//! match a token the gateway accepts and is dropped, as is an older entry of the same
//! user. Entries of other kinds (`{"jti"}`) are kept as they are.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use serde_json::{Value, json};

use crate::DemoSettings;

/// Why a sign-out could not reach the gateways.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The revocation file exists but cannot be read.
    #[error("demo.revocation_file ({}): cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The revocation file is not a JSON array: left alone rather than overwritten, so
    /// the entries someone else wrote there are not lost.
    #[error("demo.revocation_file ({}): not a JSON array of entries, left unchanged: {message}", path.display())]
    NotAList {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The new list could not be written or put in place.
    #[error("demo.revocation_file ({}): cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writing task failed.
    #[error("demo.revocation_file: the writing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The stream entry could not be added.
    #[error("demo.redis_url: cannot add to {stream}: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// The revocation file of a single machine.
#[derive(Debug)]
struct RevocationFile {
    path: PathBuf,
    /// Serialises this process's rewrites (never held across an await: the whole
    /// rewrite runs on a blocking thread).
    lock: Arc<Mutex<()>>,
}

/// The gateways' Redis stream.
struct RevocationStream {
    conn: ConnectionManager,
    stream: String,
}

impl std::fmt::Debug for RevocationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Where sign-outs go: the stream, the file, both, or nowhere (the gateway then closes
/// the user's sockets only when their tokens expire).
#[derive(Debug)]
pub struct Revoker {
    file: Option<RevocationFile>,
    stream: Option<RevocationStream>,
    /// How long after its `issued_before` an entry can still match an accepted token.
    horizon: Duration,
    /// Whether `auth.max_lifetime` is set: the horizon the gateways keep entries for,
    /// so that older stream entries, whoever wrote them, may be trimmed.
    horizon_is_binding: bool,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Revoker {
    /// Sign-outs go to `redis` (the cluster's Redis, with `demo.redis_url`) and to
    /// `demo.revocation_file`.
    pub fn new(settings: &DemoSettings, redis: Option<ConnectionManager>) -> Self {
        let stream = redis.map(|conn| RevocationStream {
            conn,
            stream: settings.revocation_stream.clone(),
        });
        let file = settings.revocation_file.clone().map(|path| RevocationFile {
            path,
            lock: Arc::default(),
        });
        let lifetime = settings
            .auth
            .max_lifetime
            .as_ref()
            .map_or(settings.token_ttl, |d| d.0.max(settings.token_ttl));
        Revoker {
            file,
            stream,
            horizon: lifetime + settings.auth.leeway.0,
            horizon_is_binding: settings.auth.max_lifetime.is_some(),
        }
    }

    /// Revokes every token of `user` issued before now. Returns the entry's
    /// `issued_before` (`None` when neither a stream nor a file is configured): the next
    /// whole second, so that a token minted earlier in this second (its `iat` is rounded
    /// down) is revoked too; tokens minted from that second on are not.
    pub async fn revoke_user(&self, user: &str) -> Result<Option<u64>, RevokeError> {
        if self.stream.is_none() && self.file.is_none() {
            return Ok(None);
        }
        let now = unix_now();
        let issued_before = now.as_secs() + 1;
        let entry = json!({ "user": user, "issued_before": issued_before });
        if let Some(s) = &self.stream {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&s.stream);
            if self.horizon_is_binding {
                // Stream ids are milliseconds. Entries older than `auth.max_lifetime`
                // are past the horizon the gateways keep entries for (docs/demo.md,
                // "Sign out everywhere"): no gateway that starts later needs them.
                let oldest = now.saturating_sub(self.horizon).as_millis();
                cmd.arg("MINID").arg("~").arg(oldest.to_string());
            }
            cmd.arg("*").arg("revoke").arg(entry.to_string());
            cmd.query_async::<String>(&mut s.conn.clone())
                .await
                .map_err(|source| RevokeError::Stream {
                    stream: s.stream.clone(),
                    source,
                })?;
        }
        if let Some(f) = &self.file {
            let (path, lock, horizon) = (f.path.clone(), f.lock.clone(), self.horizon);
            let oldest = now.saturating_sub(horizon).as_secs();
            tokio::task::spawn_blocking(move || {
                let _serialised = lock.lock().unwrap_or_else(|p| p.into_inner());
                append_entry(&path, entry, oldest)
            })
            .await??;
        }
        Ok(Some(issued_before))
    }
}

/// The `issued_before` of an entry, and its `user` (`None`: every user).
fn issued_before_of(entry: &Value) -> Option<(u64, Option<&str>)> {
    let at = entry.get("issued_before")?.as_u64()?;
    Some((at, entry.get("user").and_then(Value::as_str)))
}

/// Reads the list, drops what `entry` makes useless and what is older than `oldest`
/// (unix seconds), adds `entry`, and puts the new list in place atomically.
fn append_entry(path: &Path, entry: Value, oldest: u64) -> Result<(), RevokeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(RevokeError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut entries: Vec<Value> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&text).map_err(|e| RevokeError::NotAList {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
    };
    let new = issued_before_of(&entry);
    entries.retain(|old| match (issued_before_of(old), new) {
        (Some((at, _)), _) if at < oldest => false,
        (Some((at, who)), Some((new_at, new_who))) => !(who == new_who && at <= new_at),
        _ => true,
    });
    entries.push(entry);
    let body = serde_json::to_vec_pretty(&entries).map_err(|e| RevokeError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    write_atomically(path, &body).map_err(|source| RevokeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `body` to a temporary file beside `path`, flushes it to disk, renames it over
/// `path`, and flushes the directory, so that a reader sees the old list or the new one,
/// even after a crash.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".revocations-")
        .tempfile_in(dir)?;
    // The new file keeps the old one's permissions (the gateway may run as another
    // user); a first file gets the temporary file's owner-only ones.
    match std::fs::metadata(path) {
        Ok(old) => tmp.as_file().set_permissions(old.permissions())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tmp.write_all(body)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn keeps_other_entries_drops_superseded_and_expired_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("revoked.json");
        let old = json!([
            {"jti": "kept"},
            {"user": "gonzalo", "issued_before": 1000},
            {"user": "alice", "issued_before": 1500},
            {"user": "bob", "issued_before": 50},
            {"issued_before": 40},
        ]);
        std::fs::write(&path, old.to_string()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        append_entry(
            &path,
            json!({"user": "gonzalo", "issued_before": 2000}),
            100,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(&path),
            vec![
                json!({"jti": "kept"}),
                json!({"user": "alice", "issued_before": 1500}),
                json!({"user": "gonzalo", "issued_before": 2000}),
            ]
        );
        let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
        assert_eq!(mode & 0o777, 0o644, "the permissions changed");
    }

    #[test]
    fn a_broken_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("revoked.json");
        std::fs::write(&path, "[{\"jti\": ").unwrap_or_else(|e| panic!("{e}"));
        let err = append_entry(&path, json!({"user": "g", "issued_before": 1}), 0);
        assert!(matches!(err, Err(RevokeError::NotAList { .. })), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            "[{\"jti\": "
        );
    }
}
