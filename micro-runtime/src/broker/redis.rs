//! The Redis broker: see [`RedisBroker`].

use super::{
    run_subscription, sender_of, Broker, MessageHandler, SubscribeOptions, Subscription, ERROR_ID,
};
use crate::context::Metadata;
use crate::error::{Error, Result};
use crate::events::check_name;
use crate::redis::{Server, COMMAND_TIMEOUT, CONNECT_TIMEOUT, RECONNECT_DELAYS};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubStream};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a group member blocks on its list before checking whether its
/// subscription ended (ending it also unblocks it at once).
const POP_WAIT_SECS: u64 = 1;
/// How many messages a group's list keeps at most (the newest).
const MAX_QUEUED: u64 = 100_000;

/// How long a broker trusts what it read of a topic's set of queue groups.
const GROUPS_REFRESH: Duration = Duration::from_secs(1);
/// How long after removing a group [`RedisBroker::remove_queue`] deletes its
/// list once more: what publishers pushed meanwhile, from a stale view of the
/// groups.
const REMOVED_CLEANUP: Duration = Duration::from_millis(1500);

/// A broker over Redis pub/sub, with queue groups emulated by lists.
///
/// # Naming
///
/// For topic `<topic>` and queue group `<group>`:
///
/// | what | Redis name | type |
/// | --- | --- | --- |
/// | broadcast channel | `micro:broker:<topic>` | pub/sub channel |
/// | the topic's queue groups | `micro:broker:<topic>:queues` | set of group names |
/// | a group's pending messages | `micro:broker:<topic>:queue:<group>` | list |
///
/// # Encoding
///
/// Every message, on the channel and in the lists, is one MessagePack map
/// `{"metadata": {<key>: <value>, ...}, "payload": <bin>}`: the metadata as a
/// map of strings, the payload as raw bytes (itself MessagePack by default,
/// whatever the `Content-Type` metadata says). A foreign message that is not
/// such a map (say `PUBLISH micro:broker:user.created '{"id":7}'` from
/// `redis-cli`) is taken whole as the payload, without metadata: it gets a
/// fresh id and the time of reception, and decodes as MessagePack.
///
/// # Queue groups
///
/// Redis pub/sub has no queue groups, so they are emulated. A group member
/// registers the group's name in the topic's set of groups (`SADD`), and pops
/// the group's list with `BRPOP` on a connection of its own: the members
/// compete, and each message goes to exactly one of them. [`Broker::send`]
/// pushes the message onto the list of every group of the topic (`LPUSH`,
/// then `LTRIM`), then publishes it on the channel for the broadcast
/// subscribers (`PUBLISH`), in one transaction (`MULTI`/`EXEC`); a topic
/// without groups gets a plain `PUBLISH`.
///
/// A broker reads a topic's set of groups (`SMEMBERS`) when it first sends to
/// the topic, then again when what it read is over 1 s old (at its next
/// send); a group that a member joins through this very broker (or a clone
/// of it) counts at once. So a brand-new group whose members are in another
/// process (or use another `RedisBroker`) gets the messages of a publisher
/// only up to 1 s after its first member subscribed: what the publisher
/// sends in that window does not reach it (as a broadcast subscriber misses
/// what was sent before it subscribed). Once a group is registered, a member
/// restarting misses nothing (see below).
///
/// A group's list holds its messages while no member is up, so a group
/// restarting quickly misses nothing: a bonus, bounded to the newest
/// 100 000 messages of each group, and lost when Redis restarts without
/// persistence. A group that is gone for good keeps receiving messages it
/// will never pop: remove it with [`RedisBroker::remove_queue`]. Publishers
/// elsewhere may push to it for up to 1 s more (their view of the groups),
/// so `remove_queue` deletes the group's list again after 1.5 s.
///
/// # Guarantees
///
/// At most once. Broadcast subscribers get what Redis pub/sub gives: nothing
/// while they are disconnected. A queue group gets each message once: a
/// member that dies while handling a message it popped loses it. `send`
/// returns once Redis has queued the message for every subscriber and group.
///
/// # While the server is down
///
/// - [`RedisBroker::connect`], `send` and `subscribe` fail with a 503 naming
///   the server, within a few seconds.
/// - Subscriptions stay: each one reconnects with a backoff (100 ms doubling
///   up to 2 s), logging a warning for every failed attempt, then subscribes
///   (or registers its group) again. Broadcast subscribers miss what was
///   published meanwhile.
/// - A `send` that finds its connection broken is tried once more on a fresh
///   one, so the first message after the server returns is not refused.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Server>,
    /// The broker's view of the queue groups of each topic it sends to.
    groups: Arc<Mutex<HashMap<String, TopicGroups>>>,
}

/// What a broker knows of the queue groups of one topic.
#[derive(Default)]
struct TopicGroups {
    /// The groups read from Redis, and when (`None`: to read).
    read: Option<(Instant, BTreeSet<String>)>,
    /// The groups joined through this broker (and not removed by it): they
    /// count even if the last read missed them.
    joined: BTreeSet<String>,
    /// Those of `read` and `joined`: where `send` pushes.
    all: Arc<[String]>,
}

impl TopicGroups {
    fn update(&mut self) {
        let read = self.read.iter().flat_map(|(_, groups)| groups);
        let all: BTreeSet<&String> = read.chain(&self.joined).collect();
        self.all = all.into_iter().cloned().collect();
    }
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the Redis server at `address` (`redis://host:port` or
    /// `host:port`). An unreachable server is a 503 naming it, within a few
    /// seconds; a malformed address is a 400.
    pub async fn connect(address: &str) -> Result<Self> {
        let inner = Arc::new(Server::connect(ERROR_ID, address).await?);
        Ok(Self {
            inner,
            groups: Arc::default(),
        })
    }

    /// The address the broker was connected with.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Removes queue group `group` of `topic`: publishers stop filling its
    /// list, and the messages it holds are dropped. For groups that are gone
    /// for good; a member still subscribed registers the group again when it
    /// reconnects. Takes 1.5 s: publishers in other processes may push to the
    /// group's list for up to 1 s more (see the type's docs), so the list is
    /// deleted again after that.
    pub async fn remove_queue(&self, topic: &str, group: &str) -> Result<()> {
        check_name("topic", topic)?;
        check_name("queue group", group)?;
        self.drop_queue(topic, group).await?;
        tokio::time::sleep(REMOVED_CLEANUP).await;
        let delete = redis::cmd("DEL").arg(queue_key(topic, group)).to_owned();
        self.inner.query::<()>(&delete).await
    }

    /// Unregisters `group` of `topic` and deletes its list.
    async fn drop_queue(&self, topic: &str, group: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SREM")
            .arg(groups_key(topic))
            .arg(group)
            .ignore()
            .cmd("DEL")
            .arg(queue_key(topic, group))
            .ignore();
        let mut conn = self.inner.commands.clone();
        let removing = pipe.query_async::<()>(&mut conn);
        self.inner.within(COMMAND_TIMEOUT, removing).await?;
        let mut topics = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(groups) = topics.get_mut(topic) {
            groups.joined.remove(group);
            groups.read = None;
            groups.update();
        }
        Ok(())
    }

    /// The queue groups of `topic`, as last read if that is recent enough,
    /// else read again (see the type's docs).
    async fn groups_of(&self, topic: &str) -> Result<Arc<[String]>> {
        {
            let topics = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = |groups: &&TopicGroups| {
                let read_at = groups.read.as_ref().map(|(at, _)| at);
                read_at.is_some_and(|at| at.elapsed() < GROUPS_REFRESH)
            };
            if let Some(groups) = topics.get(topic).filter(fresh) {
                return Ok(Arc::clone(&groups.all));
            }
        }
        let members = redis::cmd("SMEMBERS").arg(groups_key(topic)).to_owned();
        let read: BTreeSet<String> = self.inner.query(&members).await?;
        let mut topics = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let groups = topics.entry(topic.to_owned()).or_default();
        groups.read = Some((Instant::now(), read));
        groups.update();
        Ok(Arc::clone(&groups.all))
    }

    /// Counts `group` among the groups of `topic` from now on.
    fn joined(&self, topic: &str, group: &str) {
        let mut topics = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let groups = topics.entry(topic.to_owned()).or_default();
        if groups.joined.insert(group.to_owned()) {
            groups.update();
        }
    }

    /// Runs `pipe` on the shared connection; once more if the connection
    /// turned out to be broken (as [`Server::query`]).
    async fn query_pipe(&self, pipe: &redis::Pipeline) -> Result<()> {
        let attempt = || async {
            let mut conn = self.inner.commands.clone();
            pipe.query_async::<()>(&mut conn).await
        };
        self.inner
            .within(COMMAND_TIMEOUT, async {
                match attempt().await {
                    Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                        attempt().await
                    }
                    result => result,
                }
            })
            .await
    }

    /// A connection subscribed to the broadcast channel of `topic`.
    async fn subscribe_channel(&self, topic: &str) -> Result<PubSubStream> {
        let server = &self.inner;
        let mut pubsub = server
            .within(CONNECT_TIMEOUT, server.client.get_async_pubsub())
            .await?;
        server
            .within(COMMAND_TIMEOUT, pubsub.subscribe(channel(topic)))
            .await?;
        Ok(pubsub.into_on_message())
    }

    /// A connection of its own for a member of `group`, after (re)registering
    /// the group; also returns the connection's client id, to unblock it.
    async fn join_group(&self, topic: &str, group: &str) -> Result<(MultiplexedConnection, i64)> {
        let server = &self.inner;
        let pop_wait = Duration::from_secs(POP_WAIT_SECS);
        let mut conn = server.connection(COMMAND_TIMEOUT + pop_wait).await?;
        // A server that refuses `CLIENT ID` (0: unknown) only makes ending
        // the subscription slower; a lost connection fails the `SADD` below.
        let id = server.client_id(&mut conn).await.unwrap_or(0);
        let register = redis::cmd("SADD")
            .arg(groups_key(topic))
            .arg(group)
            .to_owned();
        server
            .within(COMMAND_TIMEOUT, register.query_async::<()>(&mut conn))
            .await?;
        self.joined(topic, group);
        Ok((conn, id))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn send(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<()> {
        check_name("topic", topic)?;
        let message = encode(&metadata, &payload)?;
        let groups = self.groups_of(topic).await?;
        if groups.is_empty() {
            let publish = redis::cmd("PUBLISH")
                .arg(channel(topic))
                .arg(message)
                .to_owned();
            return self.inner.query::<()>(&publish).await;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for group in groups.iter() {
            let list = queue_key(topic, group);
            pipe.cmd("LPUSH").arg(&list).arg(&message).ignore();
            pipe.cmd("LTRIM")
                .arg(&list)
                .arg(0)
                .arg(MAX_QUEUED - 1)
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(channel(topic))
            .arg(&message)
            .ignore();
        self.query_pipe(&pipe).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        opts: SubscribeOptions,
        handler: MessageHandler,
    ) -> Result<Subscription> {
        opts.validate(topic)?;
        let stop = CancellationToken::new();
        let queue = opts.queue.clone();
        let (topic, sender) = (topic.to_owned(), sender_of(self));
        match queue.clone() {
            None => {
                let first = self.subscribe_channel(&topic).await?;
                let messages = broadcast(self.clone(), topic.clone(), first, stop.clone())
                    .take_until(stop.clone().cancelled_owned());
                let task = tokio::spawn(run_subscription(
                    topic.clone(),
                    messages,
                    opts,
                    handler,
                    sender,
                ));
                Ok(Subscription::new(topic, queue, async move {
                    stop.cancel();
                    let _ = task.await;
                }))
            }
            Some(group) => {
                let first = self.join_group(&topic, &group).await?;
                let client_id = Arc::new(AtomicI64::new(first.1));
                let member = Member {
                    broker: self.clone(),
                    topic: topic.clone(),
                    group,
                    conn: Some(first.0),
                    client_id: Arc::clone(&client_id),
                    stop: stop.clone(),
                };
                let task = tokio::spawn(run_subscription(
                    topic.clone(),
                    member.messages(),
                    opts,
                    handler,
                    sender,
                ));
                let this = self.clone();
                Ok(Subscription::new(topic, queue, async move {
                    stop.cancel();
                    // Wake the member from its pop (as if it timed out), so
                    // that it sees it must stop; a pop that already took a
                    // message returns it, and it is handled.
                    let id = client_id.load(Ordering::Relaxed);
                    if id != 0 {
                        let unblock = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).to_owned();
                        let _ = this.inner.query::<i64>(&unblock).await;
                    }
                    let _ = task.await;
                }))
            }
        }
    }
}

/// The messages of the broadcast channel of `topic`, resubscribing after a
/// lost connection, until `stop`.
fn broadcast(
    broker: RedisBroker,
    topic: String,
    first: PubSubStream,
    stop: CancellationToken,
) -> impl Stream<Item = (Bytes, Metadata)> + Send {
    stream::unfold(Some(first), move |mut conn| {
        let (broker, topic, stop) = (broker.clone(), topic.clone(), stop.clone());
        async move {
            loop {
                let Some(messages) = conn.as_mut() else {
                    let what = format!("subscriber of `{topic}`");
                    conn = Some(
                        reconnect(&broker, &what, &stop, || broker.subscribe_channel(&topic))
                            .await?,
                    );
                    continue;
                };
                match messages.next().await {
                    Some(msg) => return Some((Envelope::decode(msg.get_payload_bytes()), conn)),
                    None => {
                        tracing::warn!(topic, redis = %broker.inner.address, "Redis subscriber lost its connection; resubscribing");
                        conn = None;
                    }
                }
            }
        }
    })
}

/// A member of a queue group, popping the group's list.
struct Member {
    broker: RedisBroker,
    topic: String,
    group: String,
    conn: Option<MultiplexedConnection>,
    /// The client id of `conn`, for `CLIENT UNBLOCK`.
    client_id: Arc<AtomicI64>,
    stop: CancellationToken,
}

impl Member {
    /// The messages the member pops, until `stop`. A pop is never abandoned
    /// half-way, so no message is taken from the list and then dropped.
    fn messages(self) -> impl Stream<Item = (Bytes, Metadata)> + Send {
        stream::unfold(self, |mut m| async move {
            let list = queue_key(&m.topic, &m.group);
            loop {
                if m.stop.is_cancelled() {
                    return None;
                }
                let Some(conn) = m.conn.as_mut() else {
                    let what = format!("member of queue group `{}` of `{}`", m.group, m.topic);
                    let (conn, id) = reconnect(&m.broker, &what, &m.stop, || {
                        m.broker.join_group(&m.topic, &m.group)
                    })
                    .await?;
                    m.client_id.store(id, Ordering::Relaxed);
                    m.conn = Some(conn);
                    continue;
                };
                let pop = redis::cmd("BRPOP").arg(&list).arg(POP_WAIT_SECS).to_owned();
                match pop.query_async::<Option<(String, Vec<u8>)>>(conn).await {
                    Ok(Some((_, message))) => return Some((Envelope::decode(&message), m)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = %m.topic, group = %m.group, redis = %m.broker.inner.address, error = %e, "Redis queue group member lost its connection; reconnecting");
                        m.conn = None;
                    }
                }
            }
        })
    }
}

/// Calls `connect` until it succeeds (backing off, with a warning for each
/// failure) or `stop` fires.
async fn reconnect<T, F, Fut>(
    broker: &RedisBroker,
    what: &str,
    stop: &CancellationToken,
    mut connect: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = RECONNECT_DELAYS.0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match connect().await {
            Ok(conn) => {
                tracing::info!(redis = %broker.inner.address, "{what} reconnected");
                return Some(conn);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} cannot reconnect");
                delay = (delay * 2).min(RECONNECT_DELAYS.1);
            }
        }
    }
}

/// A message as stored in Redis (see the module docs).
#[derive(Serialize, Deserialize)]
struct Envelope {
    metadata: Metadata,
    payload: serde_bytes::ByteBuf,
}

/// An [`Envelope`] to encode, borrowing its parts.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    metadata: &'a Metadata,
    payload: &'a serde_bytes::Bytes,
}

/// A message as stored in Redis: an [`Envelope`].
fn encode(metadata: &Metadata, payload: &[u8]) -> Result<Vec<u8>> {
    let payload = serde_bytes::Bytes::new(payload);
    rmp_serde::to_vec_named(&EnvelopeRef { metadata, payload })
        .map_err(|e| Error::internal(ERROR_ID, format!("cannot encode a message for Redis: {e}")))
}

impl Envelope {
    /// The payload and metadata of a stored message; a foreign one is all
    /// payload.
    fn decode(message: &[u8]) -> (Bytes, Metadata) {
        match rmp_serde::from_slice::<Envelope>(message) {
            Ok(e) => (e.payload.into_vec().into(), e.metadata),
            Err(_) => (Bytes::copy_from_slice(message), Metadata::new()),
        }
    }
}

fn channel(topic: &str) -> String {
    format!("micro:broker:{topic}")
}

fn groups_key(topic: &str) -> String {
    format!("micro:broker:{topic}:queues")
}

fn queue_key(topic: &str, group: &str) -> String {
    format!("micro:broker:{topic}:queue:{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_foreign_messages_are_all_payload() {
        let mut metadata = Metadata::new();
        metadata.insert("Micro-Id".into(), "abc".into());
        let bytes = encode(&metadata, b"\x81\xa1a\x01").unwrap();
        let (payload, back) = Envelope::decode(&bytes);
        assert_eq!(back, metadata);
        assert_eq!(&payload[..], b"\x81\xa1a\x01");

        let (payload, back) = Envelope::decode(br#"{"id":7}"#);
        assert!(back.is_empty());
        assert_eq!(&payload[..], br#"{"id":7}"#);
    }
}
