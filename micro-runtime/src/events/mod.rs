//! Durable event streams: publish events to a topic, consume them in groups,
//! acknowledge each one.
//!
//! [`Events`] is the interface, with three backends:
//!
//! - [`FileEvents`], an embedded append-only log in a local directory: the
//!   default, nothing to run;
//! - `JetStreamEvents` (feature `nats`), a stream per topic and a durable
//!   consumer per group in NATS JetStream (nats-server 2.9 or later);
//! - `RedisEvents` (feature `redis`), a stream per topic and a consumer group
//!   per group in Redis Streams (Redis 6.2 or later).
//!
//! All honour the semantics below; each backend's docs say how it maps
//! topics, groups and events onto its server, and where it differs in detail
//! (with a remote backend, for instance, what a stopped process held comes
//! back after `ack_wait` rather than at once).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> micro_runtime::Result<()> {
//! use micro_runtime::events::{self, ConsumeOptions, Events, FileEvents, StartAt};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct UserCreated {
//!     id: u64,
//! }
//!
//! # let dir = std::env::temp_dir().join(format!("micro-events-doc-{}", std::process::id()));
//! // Or `events::from_env()?`, which reads MICRO_EVENTS and MICRO_EVENTS_DIR.
//! let events = FileEvents::open(&dir)?;
//! events::publish_typed(&events, "users", &UserCreated { id: 7 }).await?;
//!
//! let opts = ConsumeOptions::new("mailer").start(StartAt::Earliest);
//! let mut consumer = events.consume("users", opts).await?;
//! while let Some(delivery) = consumer.next_delivery().await? {
//!     let user: UserCreated = delivery.event().decode()?;
//!     // ... handle it; on failure, `delivery.nack_with(error)` retries it later.
//!     assert_eq!(user.id, 7);
//!     delivery.ack().await?;
//!     # break;
//! }
//! # drop((consumer, events));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//!
//! - **Durability.** [`Events::publish`] returns the event's id once the event
//!   is durable (with [`FileEvents`]: written and `fsync`ed).
//! - **Groups.** Consumers name a group. Every group gets every event of the
//!   topic; the consumers of one group share them (each event goes to one of
//!   them). A group's position is durable: it resumes where it left off.
//! - **At least once.** An event is delivered until it is acked. A
//!   [`Delivery::nack`] redelivers it after a short backoff; a delivery neither
//!   acked nor nacked within [`ConsumeOptions::ack_wait`] is redelivered too, as
//!   is everything delivered but unacked when the process stopped.
//! - **Dropping a delivery** without ack or nack counts as a nack without an
//!   error (with the file log at once; a remote backend may only see it when
//!   `ack_wait` expires).
//! - **Dead letters.** An event that has been delivered
//!   [`max_attempts`](ConsumeOptions::max_attempts) times without an ack is
//!   appended to the dead-letter topic (`<topic>.dead` by default) with the
//!   `Micro-Dead-*` metadata ([`DEAD_TOPIC_KEY`] and the others), then acked,
//!   and the group goes on.
//! - **Order.** New events are delivered in publish order; redeliveries come
//!   before new events once due, so a retried event may overtake later ones.
//! - **Ids** are strings chosen by the backend, increasing within a topic in
//!   publish order:
//!   - file log and NATS JetStream: the decimal sequence number of the event
//!     in its topic (`1`, `2`, ...), to be compared as numbers;
//!   - Redis Streams: the stream entry id `<ms>-<n>` (`1700000000000-0`), the
//!     server's clock in milliseconds and a counter within that millisecond,
//!     to be compared as a pair of numbers (not as text).
//!
//!   [`StartAt::Id`] takes an id in the backend's form.
//!
//! # Environment
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `MICRO_EVENTS` | the backend: `file`, `nats` or `redis` (the last two need the crate features of the same name) | `file` |
//! | `MICRO_EVENTS_ADDRESS` | the server of the `nats` or `redis` backend | `nats://127.0.0.1:4222`, `redis://127.0.0.1:6379` |
//! | `MICRO_EVENTS_DIR` | the directory of the `file` log | `./.micro/events` |

mod file;
mod group;
mod log;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

pub use file::FileEvents;
#[cfg(feature = "nats")]
pub use nats::JetStreamEvents;
#[cfg(feature = "redis")]
pub use redis::RedisEvents;

use crate::codec::ContentType;
use crate::context::Metadata;
#[cfg(feature = "nats")]
use crate::env::DEFAULT_NATS_ADDRESS;
#[cfg(feature = "redis")]
use crate::env::DEFAULT_REDIS_ADDRESS;
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

/// The `id` of the errors this module raises.
const ERROR_ID: &str = "micro.events";

/// The metadata key naming the content type of an event's payload (MessagePack
/// when absent).
pub const CONTENT_TYPE_KEY: &str = "Content-Type";
/// Dead letters: the topic the event was first published to.
pub const DEAD_TOPIC_KEY: &str = "Micro-Dead-Topic";
/// Dead letters: the event's id in that topic.
pub const DEAD_ID_KEY: &str = "Micro-Dead-Id";
/// Dead letters: the consumer group that gave up on it.
pub const DEAD_GROUP_KEY: &str = "Micro-Dead-Group";
/// Dead letters: how many times it was delivered.
pub const DEAD_ATTEMPTS_KEY: &str = "Micro-Dead-Attempts";
/// Dead letters: the last error, when one was given.
pub const DEAD_ERROR_KEY: &str = "Micro-Dead-Error";

/// One event of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its id in the topic (see the module docs for the format).
    pub id: String,
    /// The topic it was published to.
    pub topic: String,
    /// The payload, as published.
    pub payload: Bytes,
    /// The metadata, as published.
    pub metadata: Metadata,
    /// When it was published (millisecond precision).
    pub timestamp: SystemTime,
    /// Which delivery this is: 1 the first time, 2 on the first redelivery, ...
    pub attempt: u32,
}

impl Event {
    /// The content type of the payload: the [`CONTENT_TYPE_KEY`] metadata, or
    /// MessagePack when it is absent; an unknown one is a `415`.
    pub fn content_type(&self) -> Result<ContentType> {
        self.metadata
            .get(CONTENT_TYPE_KEY)
            .map_or(Ok(ContentType::MsgPack), |ct| ct.parse())
    }

    /// Decodes the payload with its content type; a payload that does not fit
    /// `T` is a `400`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.content_type()?.decode(&self.payload)
    }
}

/// Where a new consumer group starts reading. An existing group resumes where
/// it left off whatever this says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At the first event the topic holds.
    Earliest,
    /// With the events published after the group is created (the default).
    #[default]
    Latest,
    /// At the first event published at or after this time.
    Time(SystemTime),
    /// At the event with this id (or the next one there is), inclusive.
    Id(String),
}

/// How a consumer reads a topic: its group and the delivery rules.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// The consumer group: its consumers share the events; every group gets
    /// all of them.
    pub group: String,
    /// Where the group starts if it is new.
    pub start: StartAt,
    /// How many times an event is delivered before it goes to the dead-letter
    /// topic (at least 1; default 5).
    pub max_attempts: u32,
    /// How long a delivery may go without ack or nack before it is redelivered
    /// (default 30 s).
    pub ack_wait: Duration,
    /// The delay before the first redelivery of a nacked event; it doubles with
    /// each further attempt, up to 64 times itself (default 100 ms).
    pub retry_backoff: Duration,
    /// The dead-letter topic (default `<topic>.dead`).
    pub dead_letter: Option<String>,
    /// The most deliveries one consumer holds at once, not yet acked or
    /// nacked (fetched ahead or handed out); past it, the consumer waits for an
    /// ack (default 64).
    pub prefetch: usize,
}

impl ConsumeOptions {
    /// The defaults for a group.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            start: StartAt::Latest,
            max_attempts: 5,
            ack_wait: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            dead_letter: None,
            prefetch: 64,
        }
    }

    /// Sets where a new group starts.
    pub fn start(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Sets how many deliveries an event gets before it is dead-lettered.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets how long a delivery may stay unacknowledged.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Sets the first redelivery delay after a nack.
    pub fn retry_backoff(mut self, d: Duration) -> Self {
        self.retry_backoff = d;
        self
    }

    /// Sets the dead-letter topic.
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// Sets how many deliveries a consumer may hold at once.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// The dead-letter topic for events of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        dead_letter_topic(self.dead_letter.as_deref(), topic)
    }

    /// The delay before redelivering an event that failed its `attempt`-th delivery.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_backoff, attempt)
    }

    /// Checks the options for `topic`: names, and limits of at least 1.
    pub fn validate(&self, topic: &str) -> Result<()> {
        check_name("topic", topic)?;
        check_name("consumer group", &self.group)?;
        check_name("dead-letter topic", &self.dead_letter_topic(topic))?;
        let positive = [
            ("max_attempts", self.max_attempts > 0),
            ("prefetch", self.prefetch > 0),
            ("ack_wait", !self.ack_wait.is_zero()),
        ];
        match positive.iter().find(|(_, ok)| !ok) {
            Some((name, _)) => Err(Error::bad_request(
                ERROR_ID,
                format!("consume options: {name} must be above zero"),
            )),
            None => Ok(()),
        }
    }
}

/// The dead-letter topic of `topic`: the one chosen, else `<topic>.dead`
/// (shared with the broker's subscriptions).
pub(crate) fn dead_letter_topic(chosen: Option<&str>, topic: &str) -> String {
    chosen.map_or_else(|| format!("{topic}.dead"), str::to_owned)
}

/// The delay after the `attempt`-th failed delivery: `base`, doubling with
/// each attempt, up to 64 times `base` (shared with the broker's retries).
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(6))
}

/// Checks a topic or group name: 1 to 200 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot (names become file names, NATS subjects and Redis keys).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            ERROR_ID,
            format!(
                "invalid {what} name `{name}`: use 1 to 200 of A-Z a-z 0-9 . _ - \
                 (no path separators), not starting with a dot"
            ),
        ))
    }
}

/// The metadata of the dead letter of `event`: its own metadata, plus the
/// `Micro-Dead-*` keys saying that `group` gave up on it after `attempts`
/// deliveries, the last one failing with `error` (for the remote backends).
#[cfg(any(feature = "nats", feature = "redis"))]
fn dead_letter_metadata(
    event: &Event,
    group: &str,
    attempts: u32,
    error: Option<&str>,
) -> Metadata {
    let mut metadata = event.metadata.clone();
    metadata.insert(DEAD_TOPIC_KEY.into(), event.topic.clone());
    metadata.insert(DEAD_ID_KEY.into(), event.id.clone());
    metadata.insert(DEAD_GROUP_KEY.into(), group.to_owned());
    metadata.insert(DEAD_ATTEMPTS_KEY.into(), attempts.to_string());
    if let Some(e) = error {
        metadata.insert(DEAD_ERROR_KEY.into(), e.to_owned());
    }
    metadata
}

/// A durable event stream backend.
#[async_trait]
pub trait Events: Send + Sync + fmt::Debug {
    /// The backend's name, e.g. `file`.
    fn name(&self) -> &'static str;

    /// Appends an event to `topic` and returns its id once it is durable.
    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<String>;

    /// Starts consuming `topic` in `opts.group` (creating the group if new).
    async fn consume(&self, topic: &str, opts: ConsumeOptions) -> Result<Consumer>;
}

/// Publishes a value encoded as MessagePack, with its [`CONTENT_TYPE_KEY`] set.
pub async fn publish_typed<E, T>(events: &E, topic: &str, value: &T) -> Result<String>
where
    E: Events + ?Sized,
    T: Serialize + ?Sized,
{
    let ct = ContentType::MsgPack;
    let payload = ct.encode(value)?;
    let mut metadata = Metadata::new();
    metadata.insert(CONTENT_TYPE_KEY.to_owned(), ct.as_str().to_owned());
    events.publish(topic, payload.into(), metadata).await
}

/// The backend the environment asks for (see the module docs); a remote
/// backend is connected to before this returns.
pub async fn from_env() -> Result<Arc<dyn Events>> {
    select(
        crate::env::var("MICRO_EVENTS").as_deref(),
        crate::env::var("MICRO_EVENTS_ADDRESS").as_deref(),
    )
    .await
}

async fn select(backend: Option<&str>, address: Option<&str>) -> Result<Arc<dyn Events>> {
    match backend.unwrap_or("file").trim().to_ascii_lowercase().as_str() {
        "file" => {
            if address.is_some() {
                tracing::warn!("MICRO_EVENTS_ADDRESS is ignored by the file backend (it uses MICRO_EVENTS_DIR)");
            }
            Ok(Arc::new(FileEvents::from_env()?))
        }
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(
            JetStreamEvents::connect(address.unwrap_or(DEFAULT_NATS_ADDRESS)).await?,
        )),
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(
            RedisEvents::connect(address.unwrap_or(DEFAULT_REDIS_ADDRESS)).await?,
        )),
        #[allow(unreachable_patterns)]
        other @ ("nats" | "redis") => Err(Error::new(
            ERROR_ID,
            501,
            format!(
                "MICRO_EVENTS={other}: this build has no {other} events backend; \
                 enable the `{other}` feature of `micro`, or unset MICRO_EVENTS to use the embedded file log"
            ),
        )),
        other => Err(Error::bad_request(
            ERROR_ID,
            format!("MICRO_EVENTS={other}: unknown events backend, expected file, nats or redis"),
        )),
    }
}

/// What a backend does when a [`Delivery`] is settled: the backend side of a
/// delivery, implemented by each backend.
#[async_trait]
pub trait Acknowledge: Send + Sync + fmt::Debug {
    /// The event was handled: never deliver it to this group again.
    async fn ack(self: Box<Self>) -> Result<()>;

    /// The event failed: deliver it again after the backoff, or dead-letter it
    /// when its attempts are used up. `error` is the reason, if given.
    async fn nack(self: Box<Self>, event: Event, error: Option<String>) -> Result<()>;

    /// The delivery was dropped unsettled: treat it as a nack without error,
    /// without waiting (this runs in `Drop`).
    fn abandon(self: Box<Self>);
}

/// One delivery of an event to a consumer: read it, then ack or nack it.
///
/// Dropping it without either counts as a nack (see the module docs).
#[derive(Debug)]
pub struct Delivery {
    event: Event,
    settle: Option<Box<dyn Acknowledge>>,
}

impl Delivery {
    /// A delivery of `event` that `settle` acks or nacks (for backends).
    pub fn new(event: Event, settle: Box<dyn Acknowledge>) -> Self {
        Self {
            event,
            settle: Some(settle),
        }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Acknowledges the event: it is done for this group.
    pub async fn ack(mut self) -> Result<()> {
        match self.settle.take() {
            Some(s) => s.ack().await,
            None => Ok(()),
        }
    }

    /// Rejects the event: it is redelivered after a backoff, or dead-lettered
    /// when it has had `max_attempts` deliveries.
    pub async fn nack(self) -> Result<()> {
        self.settle(None).await
    }

    /// Like [`Delivery::nack`], recording why (in the dead letter's
    /// [`DEAD_ERROR_KEY`] should it come to that).
    pub async fn nack_with(self, error: impl fmt::Display) -> Result<()> {
        self.settle(Some(error.to_string())).await
    }

    async fn settle(mut self, error: Option<String>) -> Result<()> {
        let event = self.event.clone();
        match self.settle.take() {
            Some(s) => s.nack(event, error).await,
            None => Ok(()),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(s) = self.settle.take() {
            s.abandon();
        }
    }
}

/// The deliveries of one consumer: a [`Stream`] that does not end on its own
/// (drop it to stop consuming). Errors are passed on and the stream goes on.
pub struct Consumer {
    topic: String,
    group: String,
    deliveries: BoxStream<'static, Result<Delivery>>,
}

impl Consumer {
    /// A consumer of `topic` in `group` yielding `deliveries` (for backends).
    pub fn new(
        topic: impl Into<String>,
        group: impl Into<String>,
        deliveries: impl Stream<Item = Result<Delivery>> + Send + 'static,
    ) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            deliveries: deliveries.boxed(),
        }
    }

    /// The topic consumed.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next delivery, waiting for one; `None` if the stream ended.
    pub async fn next_delivery(&mut self) -> Result<Option<Delivery>> {
        self.deliveries.next().await.transpose()
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_next_unpin(cx)
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["orders", "orders.dead", "a-b_c.9", "X"] {
            check_name("topic", good).unwrap();
        }
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            ".hidden",
            "a b",
            "ü",
            &"x".repeat(201),
        ] {
            let e = check_name("topic", bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
        }
    }

    #[test]
    fn options_and_backoff() {
        let o = ConsumeOptions::new("g").retry_backoff(Duration::from_millis(10));
        assert_eq!(o.backoff(1), Duration::from_millis(10));
        assert_eq!(o.backoff(3), Duration::from_millis(40));
        assert_eq!(o.backoff(50), Duration::from_millis(640));
        assert_eq!(o.dead_letter_topic("t"), "t.dead");
        o.validate("t").unwrap();
        assert_eq!(o.clone().prefetch(0).validate("t").unwrap_err().code, 400);
        assert_eq!(
            o.clone().max_attempts(0).validate("t").unwrap_err().code,
            400
        );
        assert_eq!(o.validate("a/b").unwrap_err().code, 400);
    }

    #[test]
    fn events_decode_by_content_type() {
        let mut event = Event {
            id: "1".into(),
            topic: "t".into(),
            payload: ContentType::MsgPack.encode(&(1u8, "a")).unwrap().into(),
            metadata: Metadata::new(),
            timestamp: SystemTime::now(),
            attempt: 1,
        };
        assert_eq!(event.decode::<(u8, String)>().unwrap(), (1, "a".into()));
        event
            .metadata
            .insert(CONTENT_TYPE_KEY.into(), "application/json".into());
        assert_eq!(event.decode::<(u8, String)>().unwrap_err().code, 400);
        event.payload = Bytes::from_static(b"[2,\"b\"]");
        assert_eq!(event.decode::<(u8, String)>().unwrap(), (2, "b".into()));
        event
            .metadata
            .insert(CONTENT_TYPE_KEY.into(), "text/csv".into());
        assert_eq!(event.decode::<(u8, String)>().unwrap_err().code, 415);
    }

    #[tokio::test]
    async fn unknown_backends_are_refused() {
        let e = select(Some("kafka"), None).await.unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.detail.contains("expected file, nats or redis"), "{e}");
    }
}
