//! What the Redis broker ([`crate::broker::RedisBroker`]) and the Redis
//! Streams events backend ([`crate::events::RedisEvents`]) share: connecting,
//! the shared command connection, connections of one's own for what blocks,
//! and the errors naming the server.
//!
//! The errors carry the error id of the caller (`micro.broker`,
//! `micro.events`), given to [`Server::connect`].

use crate::error::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisError, RedisResult};
use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

/// How long connecting to the server may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may take, retry included.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The first and the longest delay between reconnection attempts.
pub(crate) const RECONNECT_DELAYS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));

/// A Redis server as one broker or backend reaches it.
pub(crate) struct Server {
    /// Opens the connections of one's own (for what blocks).
    pub(crate) client: redis::Client,
    /// Shared by the commands (not by what blocks: subscribers, blocking
    /// reads); it reconnects by itself, backing off by [`RECONNECT_DELAYS`].
    pub(crate) commands: ConnectionManager,
    /// The address connected with, named by the errors.
    pub(crate) address: String,
    /// The id of the errors.
    error_id: &'static str,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Connects to the Redis server at `address` (`redis://host:port` or
    /// `host:port`), with errors of id `error_id`. An unreachable server is a
    /// 503 naming it, within a few seconds; a malformed address is a 400.
    pub(crate) async fn connect(error_id: &'static str, address: &str) -> Result<Self> {
        let url = if address.contains("://") {
            address.to_owned()
        } else {
            format!("redis://{address}")
        };
        let client = redis::Client::open(url).map_err(|e| {
            Error::bad_request(
                error_id,
                format!("invalid Redis server address `{address}`: {e}"),
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(RECONNECT_DELAYS.0)
            .set_max_delay(RECONNECT_DELAYS.1);
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        let commands = within(error_id, address, COMMAND_TIMEOUT, connecting).await?;
        Ok(Self {
            client,
            commands,
            address: address.to_owned(),
            error_id,
        })
    }

    /// Runs a command on the shared connection; once more if the connection
    /// turned out to be broken (the manager reconnects meanwhile).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let attempt = || async {
            let mut conn = self.commands.clone();
            cmd.query_async::<T>(&mut conn).await
        };
        self.within(COMMAND_TIMEOUT, async {
            match attempt().await {
                Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => attempt().await,
                result => result,
            }
        })
        .await
    }

    /// Awaits a Redis operation for at most `limit`; a failure to reach the
    /// server is a 503 naming it, any other a 500.
    pub(crate) async fn within<T>(
        &self,
        limit: Duration,
        op: impl Future<Output = RedisResult<T>>,
    ) -> Result<T> {
        within(self.error_id, &self.address, limit, op).await
    }

    /// A connection of one's own, whose answers may take up to
    /// `response_timeout` (a blocking command's wait included).
    pub(crate) async fn connection(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        self.within(CONNECT_TIMEOUT, connecting).await
    }

    /// The client id of `conn` (`CLIENT ID`), to unblock it with
    /// `CLIENT UNBLOCK`.
    pub(crate) async fn client_id(&self, conn: &mut MultiplexedConnection) -> Result<i64> {
        let id = redis::cmd("CLIENT").arg("ID").to_owned();
        self.within(COMMAND_TIMEOUT, id.query_async::<i64>(conn))
            .await
    }
}

/// [`Server::within`], before there is a server.
async fn within<T>(
    error_id: &str,
    address: &str,
    limit: Duration,
    op: impl Future<Output = RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(redis_error(error_id, address, &e)),
        Err(_) => Err(unavailable(
            error_id,
            address,
            format_args!("no answer within {limit:?}"),
        )),
    }
}

/// A 503 if `e` is a failure to reach the server, else a 500.
fn redis_error(error_id: &str, address: &str, e: &RedisError) -> Error {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        unavailable(error_id, address, e)
    } else {
        Error::internal(error_id, format!("Redis server at {address}: {e}"))
    }
}

/// A 503 naming the server at `address`, saying `why`.
fn unavailable(error_id: &str, address: &str, why: impl Display) -> Error {
    Error::unavailable(error_id, format!("Redis server at {address}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_addresses_are_400_and_unreachable_servers_503() {
        let e = Server::connect("test.id", "http://127.0.0.1:6379")
            .await
            .unwrap_err();
        assert_eq!((e.code, e.id.as_str()), (400, "test.id"), "{e}");
        let e = Server::connect("test.id", "127.0.0.1:1").await.unwrap_err();
        assert_eq!((e.code, e.id.as_str()), (503, "test.id"), "{e}");
        assert!(e.detail.contains("Redis server at 127.0.0.1:1"), "{e}");
    }
}
