//! Where the web app's sessions live (docs/clusters.md): SQLite
//! for one instance (`demo.session_db`, so signed-in users survive a restart), or
//! Redis with `demo.redis_url`, so that any instance of a cluster serves any signed-in
//! user.

use async_trait::async_trait;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Result, SessionStore};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool, ReconnectPolicy};
use tower_sessions_sqlx_store::SqliteStore;

/// The session store of this instance.
#[derive(Debug, Clone)]
pub enum Sessions {
    /// One instance: SQLite.
    Sqlite(SqliteStore),
    /// A cluster: the Redis server the instances share.
    Redis(RedisStore<Pool>),
}

impl Sessions {
    /// A Redis store at `url`, reconnecting (with backoff) when Redis goes away.
    pub async fn redis(url: &str) -> std::result::Result<Self, String> {
        let config = Config::from_url(url).map_err(|e| format!("demo.redis_url: {e}"))?;
        let pool = Pool::new(config, None, None, Some(ReconnectPolicy::default()), 2)
            .map_err(|e| format!("demo.redis_url: {e}"))?;
        pool.init()
            .await
            .map_err(|e| format!("demo.redis_url: sessions: {e}"))?;
        Ok(Sessions::Redis(RedisStore::new(pool)))
    }
}

#[async_trait]
impl SessionStore for Sessions {
    async fn create(&self, record: &mut Record) -> Result<()> {
        match self {
            Sessions::Sqlite(s) => s.create(record).await,
            Sessions::Redis(s) => s.create(record).await,
        }
    }

    async fn save(&self, record: &Record) -> Result<()> {
        match self {
            Sessions::Sqlite(s) => s.save(record).await,
            Sessions::Redis(s) => s.save(record).await,
        }
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        match self {
            Sessions::Sqlite(s) => s.load(id).await,
            Sessions::Redis(s) => s.load(id).await,
        }
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        match self {
            Sessions::Sqlite(s) => s.delete(id).await,
            Sessions::Redis(s) => s.delete(id).await,
        }
    }
}
