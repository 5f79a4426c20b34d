//! The Redis link of a demo instance in a cluster (docs/clusters.md): a pub/sub driver for socket.io's Redis adapter that survives a Redis
//! restart.
//!
//! `socketioxide-redis` 0.4's own driver holds one multiplexed connection: when Redis
//! goes away its subscriptions are gone for good, and the instance never hears the
//! cluster again. This driver implements the adapter's public `Driver` trait over the
//! `redis` crate's `ConnectionManager`, which reconnects when the connection drops
//! (with backoff) and subscribes again to every channel it had. Meanwhile the instance
//! keeps serving its own sockets; what it publishes while Redis is down is logged and
//! lost, as with any pub/sub.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushInfo, PushKind, Value};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// A Redis pub/sub driver that reconnects and resubscribes.
#[derive(Clone)]
pub struct ResilientDriver {
    conn: ConnectionManager,
    handlers: Handlers,
}

impl std::fmt::Debug for ResilientDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResilientDriver")
    }
}

/// An error of the Redis link.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LinkError(#[from] redis::RedisError);

/// Hands a pushed message to the subscriber of its channel.
fn deliver(msg: PushInfo, handlers: &Handlers) {
    match msg.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut data = msg.data.into_iter();
            let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
                return;
            };
            let (Ok(chan), Ok(payload)) = (
                redis::from_redis_value::<String>(chan),
                redis::from_redis_value::<Vec<u8>>(payload),
            ) else {
                tracing::warn!("redis: a pushed message that is not (channel, bytes)");
                return;
            };
            let sender = handlers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&chan)
                .cloned();
            if let Some(tx) = sender {
                if let Err(e) = tx.try_send((chan, payload)) {
                    tracing::warn!("redis: adapter channel full, message dropped: {e}");
                }
            }
        }
        PushKind::Disconnection => {
            tracing::warn!("redis: connection lost; serving local sockets, reconnecting");
        }
        _ => {}
    }
}

impl ResilientDriver {
    /// Connects to `client` (a RESP3 URL) and starts receiving pushed messages.
    pub async fn connect(client: redis::Client) -> Result<Self, redis::RedisError> {
        let handlers: Handlers = Arc::default();
        let for_pushes = handlers.clone();
        let config = ConnectionManagerConfig::new()
            .set_automatic_resubscription()
            .set_push_sender(move |msg: PushInfo| {
                deliver(msg, &for_pushes);
                Ok::<(), std::convert::Infallible>(())
            });
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(ResilientDriver { conn, handlers })
    }
}

impl Driver for ResilientDriver {
    type Error = LinkError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn.clone().publish::<_, _, Value>(chan, val).await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        self.conn.clone().subscribe(chan.as_str()).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        self.conn.clone().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let mut conn = self.conn.clone();
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}
