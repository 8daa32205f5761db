//! The Redis Streams backend: see [`RedisEvents`].

use super::log::millis;
use super::{
    check_name, dead_letter_metadata, Acknowledge, ConsumeOptions, Consumer, Delivery, Event,
    Events, StartAt, ERROR_ID,
};
use crate::context::Metadata;
use crate::error::{Error, Result};
use crate::redis::{Server, COMMAND_TIMEOUT, RECONNECT_DELAYS};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{Cmd, FromRedisValue, Value};
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// The longest a consumer blocks reading new events before it looks for
/// events to redeliver.
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// The prefix of the stream key of a topic.
const KEY_PREFIX: &str = "micro:events:";
/// The field holding an event's payload.
const PAYLOAD_FIELD: &str = "payload";
/// The prefix of the fields holding an event's metadata.
const METADATA_PREFIX: &str = "meta:";
/// The most ids one `XACK` carries.
const MAX_ACK_BATCH: usize = 1024;

/// Moves an event to the dead-letter stream and acks it, if the consumer
/// still holds that delivery. KEYS: the stream, the dead-letter stream.
/// ARGV: the group, the consumer, the id, the delivery count, then the
/// dead letter's fields. Returns the dead letter's id, or nil.
const DEAD_LETTER_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or p[1][4] ~= tonumber(ARGV[4]) then
  return false
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return id
";

/// Makes an event due for redelivery after a delay, if the consumer still
/// holds that delivery: sets its idle time so that it reaches `ack_wait`
/// then, and its delivery count. KEYS: the stream. ARGV: the group, the
/// consumer, the id, the delivery count, the idle time to set (ms), the
/// delivery count to set. Returns 1 if done, else 0.
const RETRY_SCRIPT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or p[1][4] ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3],
  'IDLE', ARGV[5], 'RETRYCOUNT', ARGV[6], 'JUSTID')
return 1
";

/// Removes a consumer from its group if it holds no event. KEYS: the
/// stream. ARGV: the group, the consumer.
const FORGET_CONSUMER_SCRIPT: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
";

/// Durable events in Redis Streams: one stream per topic, one Redis consumer
/// group per group.
///
/// # Naming
///
/// | what | Redis name |
/// | --- | --- |
/// | topic `<topic>` | stream `micro:events:<topic>` |
/// | group `<group>` of a topic | consumer group `<group>` of that stream |
/// | a [`Consumer`] | a consumer of that group, named `<pid>-<random>` uniquely |
///
/// A stream is created by the first publish or consume of its topic and
/// never trimmed: like the file log, it keeps every event;
/// [`RedisEvents::delete_topic`] removes one.
///
/// # Encoding
///
/// An event is a stream entry with the field `payload` (the payload, byte for
/// byte) and one field `meta:<key>` per metadata entry (`meta:Content-Type`,
/// ...). Its id is the entry id Redis gives it, `<ms>-<n>` (such as
/// `1700000000000-0`): increasing within a topic when compared as a pair of
/// numbers (not as text); its timestamp is the `<ms>` part, the server's
/// clock when it stored the event. Any Redis client may publish events, as
/// `XADD micro:events:<topic> * payload <bytes> meta:<key> <value>`; other
/// fields are ignored (and a missing `payload` is an empty one).
///
/// # Semantics
///
/// Those of the module docs, with these differences from the file log:
///
/// - **Durability** is the server's: `publish` returns once Redis has the
///   event in memory; whether it survives a restart of Redis depends on its
///   persistence settings (AOF, snapshots). A Redis that restarts without
///   persistence comes back empty: consumers then create their group anew at
///   the start of the new, empty stream.
/// - **Groups** live on the server, so the consumers of a group may be
///   spread over processes and machines. Each [`Consumer`] is a consumer of
///   the Redis group under a name of its own; it reads new events with
///   `XREADGROUP` on a connection of its own (it blocks), at most `prefetch`
///   at a time, and acks them with `XACK`.
/// - **Acks** are queued, and sent by a task of the consumer's own as soon as
///   it can: one `XACK` with every id queued since the previous one went out
///   (while one is on its way, the next acks gather). While the consumer has
///   more events at hand (read, not handed out yet), `ack` returns once the
///   ack is queued; otherwise it waits for the `XACK` carrying it (and those
///   queued before it) and returns its error, if any. An ack still queued
///   when the process dies, or whose `XACK` fails, means that the event is
///   delivered again after `ack_wait`: still at least once. A dropped
///   [`Consumer`] sends what is queued before it leaves its group, and the
///   acks of its deliveries still held go out as they come.
/// - **Redeliveries** go through the Redis pending entries: every consumer
///   claims (`XAUTOCLAIM`) the group's events that have been pending for
///   `ack_wait`, whoever held them (a consumer that died, or one too slow),
///   before reading new ones. It looks every `ack_wait / 4` (every second
///   if that is sooner), and when an event it nacked comes due: a nack keeps
///   the event pending and sets its idle time so that it comes due after the
///   backoff (capped at `ack_wait`). The attempt is the delivery count Redis
///   keeps.
/// - **Dead letters** are written when the last attempt is nacked or
///   dropped, or when an event is claimed after its last attempt was not
///   settled within `ack_wait`: the dead letter is added and the event acked
///   by one script, atomically.
/// - **Stopping**: deliveries a process held when it stopped come back after
///   `ack_wait` (the file log redelivers them at once on restart), as do the
///   events a dropped [`Consumer`] was reading as it went. From spawned
///   tasks, a dropped [`Delivery`] is nacked, and a dropped consumer gives
///   back at once the events it had read but not handed out (not counting
///   that delivery as an attempt), then leaves its Redis group unless it
///   still holds events.
///
/// Redis 6.2 or later is needed (`XAUTOCLAIM`).
///
/// # While the server is down
///
/// - [`RedisEvents::connect`] and `publish` fail with a 503 naming the
///   server, within a few seconds.
/// - Connections come back by themselves: the shared one reconnects with a
///   backoff (100 ms doubling up to 2 s), and a command that finds it broken
///   is tried once more (so a publish whose connection broke just after
///   Redis stored it may, rarely, be stored twice); a consumer returns a 503
///   per failed attempt and tries again on the next call, pausing a little
///   longer each time.
#[derive(Clone)]
pub struct RedisEvents {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server: Server,
}

impl fmt::Debug for RedisEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEvents")
            .field("address", &self.inner.server.address)
            .finish_non_exhaustive()
    }
}

impl RedisEvents {
    /// Connects to the Redis server at `address` (`redis://host:port` or
    /// `host:port`). An unreachable server is a 503 naming it, within a few
    /// seconds; a malformed address is a 400; a server older than 6.2 a 501.
    pub async fn connect(address: &str) -> Result<Self> {
        let server = Server::connect(ERROR_ID, address).await?;
        let events = Self {
            inner: Arc::new(Inner { server }),
        };
        let info: String = events.inner.query(redis::cmd("INFO").arg("server")).await?;
        if let Some(version) = server_version(&info).filter(|v| *v < (6, 2)) {
            return Err(Error::new(
                ERROR_ID,
                501,
                format!(
                    "Redis server at {address} is version {}.{}; the events backend needs 6.2 or later",
                    version.0, version.1
                ),
            ));
        }
        Ok(events)
    }

    /// The address the backend was connected with.
    pub fn address(&self) -> &str {
        &self.inner.server.address
    }

    /// Deletes a topic: its stream, with every event and every group. A topic
    /// that does not exist is no error.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        check_name("topic", topic)?;
        self.inner
            .query::<()>(redis::cmd("DEL").arg(stream_key(topic)))
            .await
    }
}

impl Inner {
    /// Runs a command on the shared connection (see [`Server::query`]).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.server.query(cmd).await
    }

    /// Creates the consumer group, and the stream if needed; an existing
    /// group is left as it is.
    async fn create_group(&self, key: &str, group: &str, start: &str) -> Result<()> {
        let create = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM")
            .to_owned();
        match self.query::<()>(&create).await {
            Err(e) if e.detail.contains("BUSYGROUP") => Ok(()),
            result => result,
        }
    }

    /// Makes the `attempt`-th delivery of event `id` to `consumer` come due
    /// for redelivery after `delay` (at most `ack_wait`); false if the
    /// consumer no longer holds that delivery. With `handed_out` false, the
    /// delivery is not counted (it never reached the application).
    async fn retry(
        &self,
        key: &str,
        opts: &ConsumeOptions,
        consumer: &str,
        (id, attempt, delay): (&str, u32, Duration),
        handed_out: bool,
    ) -> Result<bool> {
        let idle = opts.ack_wait.saturating_sub(delay);
        let count = if handed_out {
            attempt
        } else {
            attempt.saturating_sub(1)
        };
        let retry = eval(RETRY_SCRIPT, &[key])
            .arg(&opts.group)
            .arg(consumer)
            .arg(id)
            .arg(attempt)
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
            .arg(count)
            .to_owned();
        Ok(self.query::<i64>(&retry).await? == 1)
    }

    /// Appends `event` to the dead-letter topic with the `Micro-Dead-*`
    /// metadata (saying it was given up on after `attempts` deliveries) and
    /// acks it, in one script, if `consumer` still holds the delivery the
    /// event came with (`event.attempt`).
    async fn dead_letter(
        &self,
        event: &Event,
        group: &str,
        consumer: &str,
        attempts: u32,
        error: Option<String>,
        opts: &ConsumeOptions,
    ) -> Result<()> {
        let topic = opts.dead_letter_topic(&event.topic);
        let metadata = dead_letter_metadata(event, group, attempts, error.as_deref());
        let mut script = eval(
            DEAD_LETTER_SCRIPT,
            &[&stream_key(&event.topic), &stream_key(&topic)],
        );
        script
            .arg(group)
            .arg(consumer)
            .arg(&event.id)
            .arg(event.attempt);
        add_fields(&mut script, &event.payload, &metadata);
        let dead_id: Option<String> = self.query(&script).await?;
        if let Some(dead_id) = dead_id {
            tracing::warn!(
                topic = %event.topic, group, id = %event.id, attempts,
                error = error.as_deref().unwrap_or(""), dead_letter = %topic, dead_id,
                "events: gave up on an event; moved it to the dead-letter topic"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Events for RedisEvents {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<String> {
        check_name("topic", topic)?;
        let mut add = redis::cmd("XADD");
        add.arg(stream_key(topic)).arg("*");
        add_fields(&mut add, &payload, &metadata);
        self.inner.query(&add).await
    }

    async fn consume(&self, topic: &str, opts: ConsumeOptions) -> Result<Consumer> {
        opts.validate(topic)?;
        let start = group_start(&opts.start)?;
        let key = stream_key(topic);
        self.inner.create_group(&key, &opts.group, &start).await?;
        let acks = spawn_acker(Arc::clone(&self.inner), key.clone(), opts.group.clone());
        let reader = Reader {
            inner: Arc::clone(&self.inner),
            topic: topic.to_owned(),
            key: key.clone(),
            name: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            permits: Arc::new(Semaphore::new(opts.prefetch)),
            scan_every: (opts.ack_wait / 4).clamp(Duration::from_millis(1), MAX_BLOCK),
            opts: Arc::new(opts),
            buffer: VecDeque::new(),
            blocking: None,
            wake: Arc::new(Wake::default()),
            next_scan: Instant::now(),
            cursor: None,
            failures: 0,
            acks,
            buffered: Arc::new(AtomicUsize::new(0)),
        };
        let group = reader.opts.group.clone();
        let deliveries = futures_util::stream::unfold(reader, |mut reader| async move {
            let next = reader.next().await;
            Some((next, reader))
        });
        Ok(Consumer::new(topic, group, deliveries))
    }
}

/// When a consumer's nacked events come due, so that it wakes up for them.
#[derive(Debug, Default)]
struct Wake {
    due: Mutex<BTreeSet<Instant>>,
    /// Told when an event is nacked: a read blocked on the server is cut short.
    notify: Notify,
}

impl Wake {
    fn schedule(&self, when: Instant) {
        self.due.lock().expect("wake lock").insert(when);
        self.notify.notify_one();
    }

    /// Whether something came due by `now` (forgetting it), and when the
    /// next thing does.
    fn check(&self, now: Instant) -> (bool, Option<Instant>) {
        let mut due = self.due.lock().expect("wake lock");
        let later = due.split_off(&now);
        let passed = !due.is_empty();
        *due = later;
        (passed, due.first().copied())
    }
}

/// An entry read or claimed, with its delivery count.
#[derive(Debug)]
struct Fetched {
    entry: StreamId,
    attempt: u32,
}

/// What one consumer keeps between deliveries.
struct Reader {
    inner: Arc<Inner>,
    topic: String,
    key: String,
    /// This consumer's name in the group.
    name: String,
    opts: Arc<ConsumeOptions>,
    /// One permit per delivery held: the prefetch bound.
    permits: Arc<Semaphore>,
    /// Read or claimed, not handed out yet.
    buffer: VecDeque<Fetched>,
    /// The connection of the blocking reads, and its client id.
    blocking: Option<(MultiplexedConnection, i64)>,
    wake: Arc<Wake>,
    /// How often the group's pending events are looked at.
    scan_every: Duration,
    next_scan: Instant,
    /// Where the look at the pending events goes on, if it stopped half way.
    cursor: Option<String>,
    /// Failures in a row, for the pause before trying again.
    failures: u32,
    /// Where the acks of its deliveries are queued.
    acks: mpsc::UnboundedSender<AckOp>,
    /// `buffer.len()`, for the deliveries' acks.
    buffered: Arc<AtomicUsize>,
}

impl Reader {
    async fn next(&mut self) -> Result<Delivery> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            let fetched = self.buffer.pop_front();
            self.buffered.store(self.buffer.len(), Ordering::Relaxed);
            if let Some(Fetched { entry, attempt }) = fetched {
                let event = decode(&self.topic, entry, attempt);
                if attempt > self.opts.max_attempts {
                    // Its last attempt was not settled in time: give up on it.
                    let error = format!("not acked within {:?}", self.opts.ack_wait);
                    let (group, name) = (&self.opts.group, &self.name);
                    let dead_letter = self.inner.dead_letter(
                        &event,
                        group,
                        name,
                        attempt - 1,
                        Some(error),
                        &self.opts,
                    );
                    // Boxed, as are the other rare paths: futures are moved,
                    // and copied, whole.
                    Box::pin(dead_letter).await?;
                    continue;
                }
                let settle = RedisDelivery {
                    inner: Arc::clone(&self.inner),
                    key: self.key.clone(),
                    consumer: self.name.clone(),
                    event: event.clone(),
                    opts: Arc::clone(&self.opts),
                    wake: Arc::clone(&self.wake),
                    acks: self.acks.clone(),
                    buffered: Arc::clone(&self.buffered),
                    _permit: permit,
                };
                return Ok(Delivery::new(event, Box::new(settle)));
            }
            if self.failures > 0 {
                let pause = RECONNECT_DELAYS
                    .0
                    .saturating_mul(1 << self.failures.min(5))
                    .min(RECONNECT_DELAYS.1);
                tokio::time::sleep(pause).await;
            }
            match self.fill().await {
                Ok(()) => self.failures = 0,
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    return Err(e);
                }
            }
        }
    }

    /// Fetches events into the buffer: due redeliveries first, else new
    /// events (waiting for some a while).
    async fn fill(&mut self) -> Result<()> {
        let count = self.permits.available_permits() + 1;
        let now = Instant::now();
        let (woken, next_wake) = self.wake.check(now);
        if woken || now >= self.next_scan || self.cursor.is_some() {
            let claimed = Box::pin(self.claim(count)).await?;
            if self.cursor.is_none() {
                self.next_scan = now + self.scan_every;
            }
            if !claimed.is_empty() {
                self.buffer.extend(claimed);
                return Ok(());
            }
        }
        let until = next_wake.map_or(self.next_scan, |w| w.min(self.next_scan));
        let block = until
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_BLOCK);
        let read = self.read(count, block).await?;
        self.buffer.extend(read);
        Ok(())
    }

    /// Claims the group's events pending for `ack_wait` or more, up to
    /// `count`, with their delivery counts.
    async fn claim(&mut self, count: usize) -> Result<Vec<Fetched>> {
        let min_idle = u64::try_from(self.opts.ack_wait.as_millis()).unwrap_or(u64::MAX);
        loop {
            let cursor = self.cursor.take().unwrap_or_else(|| "0-0".to_owned());
            let autoclaim = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.opts.group)
                .arg(&self.name)
                .arg(min_idle)
                .arg(cursor)
                .arg("COUNT")
                .arg(count)
                .to_owned();
            let reply: StreamAutoClaimReply = self.query(&autoclaim).await?;
            if reply.next_stream_id != "0-0" {
                self.cursor = Some(reply.next_stream_id);
            }
            if !reply.claimed.is_empty() {
                return self.with_attempts(reply.claimed).await;
            }
            if self.cursor.is_none() {
                return Ok(Vec::new());
            }
        }
    }

    /// The delivery counts of entries this consumer just claimed; an entry
    /// it no longer holds (acked meanwhile) is left out.
    async fn with_attempts(&self, entries: Vec<StreamId>) -> Result<Vec<Fetched>> {
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(&self.key)
                .arg(&self.opts.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let server = &self.inner.server;
        let pending: Vec<StreamPendingCountReply> = server
            .within(COMMAND_TIMEOUT, {
                let mut conn = server.commands.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(entries
            .into_iter()
            .zip(pending)
            .filter_map(|(entry, pending)| {
                let p = pending.ids.into_iter().next()?;
                (p.consumer == self.name).then(|| Fetched {
                    entry,
                    attempt: u32::try_from(p.times_delivered).unwrap_or(u32::MAX),
                })
            })
            .collect())
    }

    /// Reads up to `count` new events, blocking up to `block` for them (less
    /// if an event is nacked meanwhile).
    async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Fetched>> {
        let (mut conn, client_id) = match self.blocking.clone() {
            Some(blocking) => blocking,
            None => {
                let blocking = Box::pin(self.connect_blocking()).await?;
                self.blocking = Some(blocking.clone());
                blocking
            }
        };
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.opts.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .to_owned();
        let reading = read.query_async::<Option<StreamReadReply>>(&mut conn);
        let limit = block + COMMAND_TIMEOUT;
        let result = self
            .inner
            .server
            .within(limit, async {
                tokio::pin!(reading);
                tokio::select! {
                    result = &mut reading => result,
                    () = self.wake.notify.notified() => {
                        // Cut the wait short: the read then returns what it has.
                        let unblock = redis::cmd("CLIENT").arg("UNBLOCK").arg(client_id).to_owned();
                        let mut commands = self.inner.server.commands.clone();
                        if let Err(e) = unblock.query_async::<i64>(&mut commands).await {
                            tracing::debug!(error = %e, "events: cannot unblock a consumer's read");
                        }
                        reading.await
                    }
                }
            })
            .await;
        match result {
            Ok(reply) => Ok(reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .map(|entry| Fetched { entry, attempt: 1 })
                .collect()),
            Err(e) if e.detail.contains("NOGROUP") => {
                Box::pin(self.recreate_group()).await?;
                Ok(Vec::new())
            }
            Err(e) => {
                self.blocking = None;
                Err(e)
            }
        }
    }

    /// A connection of this consumer's own for its blocking reads, and its
    /// client id (to unblock it).
    async fn connect_blocking(&self) -> Result<(MultiplexedConnection, i64)> {
        let server = &self.inner.server;
        let mut conn = server.connection(MAX_BLOCK + COMMAND_TIMEOUT).await?;
        let id = server.client_id(&mut conn).await?;
        Ok((conn, id))
    }

    /// The group is gone (the stream was deleted, or Redis restarted without
    /// persistence): create it again, from the start of the stream.
    async fn recreate_group(&self) -> Result<()> {
        tracing::warn!(
            topic = %self.topic, group = %self.opts.group,
            "events: the consumer group is gone from Redis; creating it again at the start of the stream"
        );
        self.inner
            .create_group(&self.key, &self.opts.group, "0")
            .await
    }

    /// A command on the shared connection, recreating the group if it is gone.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        match self.inner.query(cmd).await {
            Err(e) if e.detail.contains("NOGROUP") => {
                Box::pin(self.recreate_group()).await?;
                self.inner.query(cmd).await
            }
            result => result,
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Give back what was fetched and not handed out (due at once for the
        // other consumers), then leave the group unless holding events (which
        // the others claim in time). Without a runtime, `ack_wait` does it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fetched: Vec<(String, u32)> = self
            .buffer
            .drain(..)
            .map(|f| (f.entry.id, f.attempt))
            .collect();
        let forget = eval(FORGET_CONSUMER_SCRIPT, &[&self.key])
            .arg(&self.opts.group)
            .arg(&self.name)
            .to_owned();
        let (inner, opts) = (Arc::clone(&self.inner), Arc::clone(&self.opts));
        let (key, name) = (self.key.clone(), self.name.clone());
        let acks = self.acks.clone();
        runtime.spawn(async move {
            // The acks queued so far go out first: this consumer may then hold
            // no event any more, and leave its group.
            let (flushed, sent) = oneshot::channel();
            if acks.send(AckOp::Flush(flushed)).is_ok() {
                drop(acks);
                let _ = sent.await;
            }
            for (id, attempt) in fetched {
                let give_back = (id.as_str(), attempt, Duration::ZERO);
                if let Err(e) = inner.retry(&key, &opts, &name, give_back, false).await {
                    tracing::debug!(error = %e, "events: cannot give back an event; it comes back after ack_wait");
                }
            }
            if let Err(e) = inner.query::<i64>(&forget).await {
                tracing::debug!(error = %e, "events: cannot remove a dropped consumer from its group");
            }
        });
    }
}

/// Redis's side of a [`Delivery`].
#[derive(Debug)]
struct RedisDelivery {
    inner: Arc<Inner>,
    key: String,
    /// The consumer holding the delivery.
    consumer: String,
    /// The event, to dead-letter it should it come to that.
    event: Event,
    opts: Arc<ConsumeOptions>,
    wake: Arc<Wake>,
    /// Where its ack is queued.
    acks: mpsc::UnboundedSender<AckOp>,
    /// How many events the consumer has at hand, not handed out yet.
    buffered: Arc<AtomicUsize>,
    /// Released when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

/// What goes to a consumer's acker (see [`spawn_acker`]).
#[derive(Debug)]
enum AckOp {
    /// Ack this id.
    Ack(String),
    /// Say when the acks queued before this one have been sent, and how
    /// the last `XACK` went.
    Flush(oneshot::Sender<Result<()>>),
}

/// Starts the task sending the acks of a consumer's deliveries: one `XACK`
/// for all the ids queued since the previous one (up to [`MAX_ACK_BATCH`]),
/// sent as soon as the previous one is answered. It ends once the consumer
/// and all its deliveries are gone, and what they queued is sent.
fn spawn_acker(inner: Arc<Inner>, key: String, group: String) -> mpsc::UnboundedSender<AckOp> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ops = Vec::with_capacity(64);
        let mut ids = Vec::with_capacity(64);
        let mut flushed = Vec::new();
        while rx.recv_many(&mut ops, MAX_ACK_BATCH).await > 0 {
            for op in ops.drain(..) {
                match op {
                    AckOp::Ack(id) => ids.push(id),
                    AckOp::Flush(done) => flushed.push(done),
                }
            }
            let mut result = Ok(());
            if !ids.is_empty() {
                let mut ack = redis::cmd("XACK");
                ack.arg(&key).arg(&group).arg(&ids);
                if let Err(e) = inner.query::<i64>(&ack).await {
                    tracing::warn!(
                        key, group, acks = ids.len(), error = %e,
                        "events: cannot ack events; they come back after ack_wait"
                    );
                    result = Err(e);
                }
                ids.clear();
            }
            for done in flushed.drain(..) {
                let _ = done.send(result.clone());
            }
        }
    });
    tx
}

#[async_trait]
impl Acknowledge for RedisDelivery {
    async fn ack(self: Box<Self>) -> Result<()> {
        let Self {
            event,
            acks,
            buffered,
            ..
        } = *self;
        let closed = || Error::unavailable(ERROR_ID, "the consumer's acks are no longer sent");
        acks.send(AckOp::Ack(event.id)).map_err(|_| closed())?;
        if buffered.load(Ordering::Relaxed) > 0 {
            // More events at hand: the ack goes with the next `XACK`.
            return Ok(());
        }
        // Nothing more at hand: wait for the `XACK` carrying it.
        let (done, sent) = oneshot::channel();
        acks.send(AckOp::Flush(done)).map_err(|_| closed())?;
        sent.await.map_err(|_| closed())?
    }

    async fn nack(self: Box<Self>, event: Event, error: Option<String>) -> Result<()> {
        let (attempt, opts) = (self.event.attempt, &self.opts);
        if attempt >= opts.max_attempts {
            let group = &opts.group;
            return self
                .inner
                .dead_letter(&event, group, &self.consumer, attempt, error, opts)
                .await;
        }
        let backoff = opts.backoff(attempt).min(opts.ack_wait);
        let retry = (event.id.as_str(), attempt, backoff);
        let scheduled = self
            .inner
            .retry(&self.key, opts, &self.consumer, retry, true)
            .await?;
        if scheduled {
            // A little later than due, so that its idle time has surely reached
            // `ack_wait` on the server.
            self.wake
                .schedule(Instant::now() + backoff + Duration::from_millis(2));
        }
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        // Without a runtime (dropped on the way out), `ack_wait` brings it back.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let event = self.event.clone();
            runtime.spawn(async move {
                let error = Some("dropped without ack or nack".to_owned());
                if let Err(e) = self.nack(event, error).await {
                    tracing::debug!(error = %e, "events: cannot nack a dropped delivery; it comes back after ack_wait");
                }
            });
        }
    }
}

/// The stream of a topic.
fn stream_key(topic: &str) -> String {
    format!("{KEY_PREFIX}{topic}")
}

/// An `EVAL` of `script` on `keys`, to which the arguments are added.
fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

/// Adds the fields of an event to an `XADD` (or to the arguments of the
/// dead-letter script).
fn add_fields(cmd: &mut Cmd, payload: &[u8], metadata: &Metadata) {
    cmd.arg(PAYLOAD_FIELD).arg(payload);
    for (key, value) in metadata {
        cmd.arg(format!("{METADATA_PREFIX}{key}")).arg(value);
    }
}

/// The event of a stream entry.
fn decode(topic: &str, entry: StreamId, attempt: u32) -> Event {
    let mut payload = Bytes::new();
    let mut metadata = Metadata::new();
    for (field, value) in entry.map {
        if field == PAYLOAD_FIELD {
            payload = bytes_of(value).into();
        } else if let Some(key) = field.strip_prefix(METADATA_PREFIX) {
            let value = String::from_utf8_lossy(&bytes_of(value)).into_owned();
            metadata.insert(key.to_owned(), value);
        }
    }
    let ms = parse_id(&entry.id).map_or(0, |(ms, _)| ms);
    Event {
        id: entry.id,
        topic: topic.to_owned(),
        payload,
        metadata,
        timestamp: UNIX_EPOCH + Duration::from_millis(ms),
        attempt,
    }
}

fn bytes_of(value: Value) -> Vec<u8> {
    redis::from_redis_value(value).unwrap_or_default()
}

/// The parts of an entry id: `<ms>-<n>`, or `<ms>` for `<ms>-0`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let id = id.trim();
    match id.split_once('-') {
        Some((ms, n)) => Some((ms.parse().ok()?, n.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

/// The last id a new group counts as delivered: it then reads what follows.
fn group_start(start: &StartAt) -> Result<String> {
    // The id just before `(ms, n)`.
    let before = |ms: u64, n: u64| match (ms, n) {
        (0, 0) => "0".to_owned(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, n) => format!("{ms}-{}", n - 1),
    };
    Ok(match start {
        StartAt::Earliest => "0".to_owned(),
        StartAt::Latest => "$".to_owned(),
        StartAt::Time(t) => before(millis(*t), 0),
        StartAt::Id(id) => {
            let (ms, n) = parse_id(id).ok_or_else(|| {
                Error::bad_request(
                    ERROR_ID,
                    format!("StartAt::Id(`{id}`): Redis event ids look like `1700000000000-0`"),
                )
            })?;
            before(ms, n)
        }
    })
}

/// The `major.minor` of the `redis_version` line of `INFO server`.
fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_start_positions() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("17"), Some((17, 0)));
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(group_start(&StartAt::Earliest).unwrap(), "0");
        assert_eq!(group_start(&StartAt::Latest).unwrap(), "$");
        assert_eq!(group_start(&StartAt::Id("5-2".into())).unwrap(), "5-1");
        assert_eq!(
            group_start(&StartAt::Id("5-0".into())).unwrap(),
            "4-18446744073709551615"
        );
        assert_eq!(group_start(&StartAt::Id("0-0".into())).unwrap(), "0");
        let t = UNIX_EPOCH + Duration::from_millis(1000);
        assert_eq!(
            group_start(&StartAt::Time(t)).unwrap(),
            "999-18446744073709551615"
        );
        assert_eq!(
            group_start(&StartAt::Id("abc".into())).unwrap_err().code,
            400
        );
    }

    #[test]
    fn versions_are_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(server_version(info), Some((7, 0)));
        assert_eq!(server_version("nothing"), None);
    }

    #[test]
    fn entries_decode_to_events() {
        let mut map = std::collections::HashMap::new();
        map.insert(
            "payload".to_owned(),
            Value::BulkString(b"\x01\x02".to_vec()),
        );
        map.insert(
            "meta:Content-Type".to_owned(),
            Value::BulkString(b"application/json".to_vec()),
        );
        map.insert("other".to_owned(), Value::BulkString(b"x".to_vec()));
        let entry = StreamId {
            id: "1700000000123-4".into(),
            map,
            ..Default::default()
        };
        let event = decode("t", entry, 2);
        assert_eq!(&event.payload[..], b"\x01\x02");
        assert_eq!(event.metadata.len(), 1);
        assert_eq!(event.metadata["Content-Type"], "application/json");
        assert_eq!(
            event.timestamp,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        assert_eq!((event.id.as_str(), event.attempt), ("1700000000123-4", 2));
    }
}
