//! When each user last signed out everywhere, so that the user's web sessions in other
//! browsers end too (docs/demo.md, "Sign out everywhere"): a session that began before
//! its user's last sign-out counts as signed out.
//!
//! One instance keeps the record in memory (one entry per user who signed out; the
//! accounts come from `demo.users`, so it is bounded); a restart forgets it, and other
//! browsers' sessions, kept in SQLite, then stand again (their tokens stay revoked).
//! A cluster keeps it in Redis (`upstream-demo:signed-out:<user>`), for as long as a web
//! session can live, so that every instance sees it.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// How long a session lives without activity (the session layer's expiry): a record
/// older than that can end no session.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// The Redis key prefix of the records.
const KEY_PREFIX: &str = "upstream-demo:signed-out:";

/// The records of sign-outs.
pub enum SignOuts {
    /// One instance: user -> unix milliseconds of the last sign-out.
    Local(Mutex<HashMap<String, u64>>),
    /// A cluster: the shared Redis.
    Redis(ConnectionManager),
}

impl std::fmt::Debug for SignOuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignOuts::Local(_) => "SignOuts::Local",
            SignOuts::Redis(_) => "SignOuts::Redis",
        })
    }
}

/// The cluster's record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("demo.redis_url: sign-out record: {0}")]
pub struct SignOutsError(#[from] redis::RedisError);

impl SignOuts {
    /// Records that `user` signed out everywhere at `at_ms` (unix milliseconds).
    pub async fn record(&self, user: &str, at_ms: u64) -> Result<(), SignOutsError> {
        match self {
            SignOuts::Local(map) => {
                map.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(user.to_string(), at_ms);
            }
            SignOuts::Redis(conn) => {
                let _: () = conn
                    .clone()
                    .set_ex(
                        format!("{KEY_PREFIX}{user}"),
                        at_ms,
                        SESSION_LIFETIME.as_secs(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// When `user` last signed out everywhere (unix milliseconds), if on record.
    pub async fn last(&self, user: &str) -> Result<Option<u64>, SignOutsError> {
        match self {
            SignOuts::Local(map) => Ok(map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(user)
                .copied()),
            SignOuts::Redis(conn) => Ok(conn.clone().get(format!("{KEY_PREFIX}{user}")).await?),
        }
    }
}
