//! Publish/subscribe: typed messages to every subscriber of a topic, or to one
//! member of each queue group.
//!
//! [`Broker`] is the interface. [`NativeBroker`], the default, needs nothing
//! but the registry: subscribers register under their topic, and a publisher
//! delivers to them directly over micro's own transport and waits for their
//! acknowledgement. [`MemoryBroker`] serves one process (tests). The NATS and
//! Redis pub/sub brokers come with the `nats` and `redis` features:
//!
//! - `NatsBroker` (`nats`): topics are NATS subjects, metadata NATS headers,
//!   queue groups NATS queue groups.
//! - `RedisBroker` (`redis`): Redis pub/sub channels `micro:broker:<topic>`,
//!   queue groups emulated with lists.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> micro_runtime::Result<()> {
//! use micro_runtime::broker::{self, Broker, MemoryBroker, SubscribeOptions};
//! use std::sync::Arc;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct UserCreated { id: u64 }
//!
//! let broker = MemoryBroker::new();
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let handler = broker::typed(move |user: UserCreated| {
//!     let tx = tx.clone();
//!     async move { tx.send(user.id).map_err(|_| micro_runtime::Error::internal("test", "gone")) }
//! });
//! let _sub = broker.subscribe("user.created", SubscribeOptions::new(), handler).await?;
//! broker::publish(&broker, "user.created", &UserCreated { id: 7 }).await?;
//! assert_eq!(rx.recv().await, Some(7));
//! # Ok(())
//! # }
//! ```
//!
//! With a service, declare subscribers with `#[micro::subscriber]`, register
//! them with `Service::subscriber`, and publish with
//! `RunningService::publish`.
//!
//! # Semantics
//!
//! - **Queue groups.** Subscribers that name the same
//!   [`queue`](SubscribeOptions::queue) share the messages of a topic: each
//!   message goes to one of them. Subscribers without a queue each get every
//!   message (broadcast).
//! - **Retries and dead letters.** A handler that returns an error gets the
//!   message again after [`retry_backoff`](SubscribeOptions::retry_backoff)
//!   (doubling on each attempt), up to
//!   [`max_attempts`](SubscribeOptions::max_attempts) deliveries. Then the
//!   message is published to the dead-letter topic (`<topic>.dead` by default)
//!   with the `Micro-Dead-*` metadata of [`crate::events`]
//!   ([`DEAD_TOPIC_KEY`] and the others). A
//!   payload that does not decode into the subscriber's type is dead-lettered
//!   at once: retrying cannot help. A panic counts as an error.
//! - **Delivery guarantee.** With the native broker, `publish` returns once
//!   every subscriber it delivered to has acknowledged the message (handled
//!   it, or dead-lettered it); a queue-group member that cannot be reached,
//!   is killed while handling, or is leaving, is replaced by another member, so
//!   nothing `publish` returned `Ok` for is lost. NATS core and Redis pub/sub
//!   are fire-and-forget by nature: a subscriber that is down when the message
//!   passes misses it. Use [`crate::events`] for messages that must survive
//!   any subscriber being down.
//! - **No subscribers** is not an error: the message goes nowhere, as with
//!   every pub/sub system.
//! - **Metadata.** Every message carries its id ([`ID_KEY`]), publication
//!   time ([`TIMESTAMP_KEY`], milliseconds since the Unix epoch), content type
//!   ([`CONTENT_TYPE_KEY`]) and trace id ([`TRACE_ID_KEY`]), taken from the
//!   publisher's current [`Context`] when there is one. A handler reads them
//!   from the [`Event`] it is given, or from [`Context::current`].
//!
//! # Environment
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `MICRO_BROKER` | `native`, `memory`, `nats` or `redis` | `native` |
//! | `MICRO_BROKER_ADDRESS` | the server of the `nats` or `redis` broker; for `native`, the address its delivery listener binds | `nats://127.0.0.1:4222`, `redis://127.0.0.1:6379`; native: any free port |

mod memory;
mod native;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryBroker;
pub use native::NativeBroker;
#[cfg(feature = "nats")]
pub use nats::NatsBroker;
#[cfg(feature = "redis")]
pub use redis::RedisBroker;

use crate::codec::ContentType;
use crate::context::{Context, Metadata, TraceId, TRACE_ID_KEY};
use crate::error::{Error, Result};
use crate::events::{
    check_name, Event, DEAD_ATTEMPTS_KEY, DEAD_ERROR_KEY, DEAD_GROUP_KEY, DEAD_ID_KEY,
    DEAD_TOPIC_KEY,
};
use crate::registry::Registry;
use crate::server::BoxFuture;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use futures_util::FutureExt;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::events::CONTENT_TYPE_KEY;

/// The `id` of the errors this module raises.
pub(crate) const ERROR_ID: &str = "micro.broker";
/// The `id` of the error a payload that does not decode into the subscriber's
/// type turns into; such a message is dead-lettered without retries.
pub const UNDECODABLE_ID: &str = "micro.broker.undecodable";

/// The metadata key of a message's id (32 hex digits, unique per message).
pub const ID_KEY: &str = "Micro-Id";
/// The metadata key of a message's publication time, in milliseconds since the
/// Unix epoch.
pub const TIMESTAMP_KEY: &str = "Micro-Timestamp";

/// What runs for each message of a subscription. Build one from a typed
/// closure with [`typed`], or take the raw [`Event`].
pub type MessageHandler = Arc<dyn Fn(Event) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// How a subscriber receives a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The queue group: its members share the messages. `None` (the default)
    /// receives every message.
    pub queue: Option<String>,
    /// How many times a message is handed to the handler before it is
    /// dead-lettered (at least 1; default 5).
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles with each further attempt,
    /// up to 64 times itself (default 100 ms).
    pub retry_backoff: Duration,
    /// The dead-letter topic (default `<topic>.dead`).
    pub dead_letter: Option<String>,
    /// How many messages one subscription handles at once (default 64; 1
    /// handles them one by one, in order). The native broker runs every
    /// delivery as it arrives: the publishers bound it.
    pub concurrency: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SubscribeOptions {
    /// Broadcast, 5 attempts, 100 ms first backoff, `<topic>.dead`.
    pub fn new() -> Self {
        Self {
            queue: None,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            dead_letter: None,
            concurrency: 64,
        }
    }

    /// Joins a queue group.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets how many deliveries a message gets before it is dead-lettered.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the first retry delay.
    pub fn retry_backoff(mut self, d: Duration) -> Self {
        self.retry_backoff = d;
        self
    }

    /// Sets the dead-letter topic.
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter = Some(topic.into());
        self
    }

    /// Sets how many messages are handled at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The dead-letter topic for messages of `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        crate::events::dead_letter_topic(self.dead_letter.as_deref(), topic)
    }

    /// The delay before retrying a message that failed its `attempt`-th delivery.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::events::backoff(self.retry_backoff, attempt)
    }

    /// Checks the options for `topic`: names, and limits of at least 1.
    pub fn validate(&self, topic: &str) -> Result<()> {
        check_name("topic", topic)?;
        if let Some(q) = &self.queue {
            check_name("queue group", q)?;
        }
        check_name("dead-letter topic", &self.dead_letter_topic(topic))?;
        if self.max_attempts == 0 || self.concurrency == 0 {
            return Err(Error::bad_request(
                ERROR_ID,
                "subscribe options: max_attempts and concurrency must be above zero",
            ));
        }
        Ok(())
    }
}

/// A live subscription: dropping it (or [`Subscription::unsubscribe`]) stops
/// the deliveries.
pub struct Subscription {
    topic: String,
    queue: Option<String>,
    close: Option<BoxFuture<'static, ()>>,
}

impl Subscription {
    /// A subscription that runs `close` when it ends (for brokers).
    pub fn new(
        topic: impl Into<String>,
        queue: Option<String>,
        close: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            topic: topic.into(),
            queue,
            close: Some(Box::pin(close)),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The queue group, if any.
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// Ends the subscription and waits until the broker has let go of it
    /// (deliveries already running finish on their own).
    pub async fn unsubscribe(mut self) {
        if let Some(close) = self.close.take() {
            close.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(close);
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("queue", &self.queue)
            .finish()
    }
}

/// A message broker.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// The broker's name, e.g. `native`.
    fn name(&self) -> &'static str;

    /// Sends a message whose metadata is complete (see [`stamp`]) to the
    /// subscribers of `topic`. Most code calls [`Broker::publish`] or
    /// [`publish`] instead.
    async fn send(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<()>;

    /// Subscribes `handler` to `topic`.
    async fn subscribe(
        &self,
        topic: &str,
        opts: SubscribeOptions,
        handler: MessageHandler,
    ) -> Result<Subscription>;

    /// Stops serving deliveries: those in flight get up to `grace` to finish.
    /// Brokers without a listener of their own do nothing. End the
    /// subscriptions first.
    async fn shutdown(&self, _grace: Duration) {}

    /// Publishes an encoded payload: stamps the metadata with an id, the time
    /// and the trace id, sends it, and returns the id.
    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<String> {
        check_name("topic", topic)?;
        let metadata = stamp(metadata);
        let id = metadata[ID_KEY].clone();
        self.send(topic, payload, metadata).await?;
        Ok(id)
    }
}

/// Publishes `value` encoded as MessagePack; returns the message id.
pub async fn publish<B, T>(broker: &B, topic: &str, value: &T) -> Result<String>
where
    B: Broker + ?Sized,
    T: Serialize + ?Sized,
{
    let ct = ContentType::MsgPack;
    let payload = ct.encode(value)?;
    let mut metadata = Metadata::new();
    metadata.insert(CONTENT_TYPE_KEY.to_owned(), ct.as_str().to_owned());
    broker.publish(topic, payload.into(), metadata).await
}

/// Completes a message's metadata: a fresh id, the time, MessagePack as the
/// content type unless one is set, and the trace id of the current
/// [`Context`] (or a fresh one) unless one is set. The current context's
/// other metadata is carried on, as calls carry it.
pub fn stamp(mut metadata: Metadata) -> Metadata {
    let ctx = Context::try_current();
    if let Some(ctx) = &ctx {
        // The caller's metadata travels on, but not what described the
        // message being handled (when a subscriber publishes).
        let own = |k: &str| {
            [ID_KEY, TIMESTAMP_KEY, CONTENT_TYPE_KEY, TRACE_ID_KEY].contains(&k)
                || k.starts_with("Micro-Dead-")
        };
        for (k, v) in ctx.metadata().iter().filter(|(k, _)| !own(k)) {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    metadata.insert(
        ID_KEY.to_owned(),
        format!("{:032x}", rand::random::<u128>()),
    );
    metadata.insert(
        TIMESTAMP_KEY.to_owned(),
        millis(SystemTime::now()).to_string(),
    );
    metadata
        .entry(CONTENT_TYPE_KEY.to_owned())
        .or_insert_with(|| ContentType::MsgPack.as_str().to_owned());
    metadata.entry(TRACE_ID_KEY.to_owned()).or_insert_with(|| {
        let trace = ctx.map(|c| c.trace_id()).filter(|t| !t.is_none());
        trace.unwrap_or_else(TraceId::random).to_string()
    });
    metadata
}

/// The event a subscriber sees for a received message: id and time from its
/// metadata (a fresh id and now when a foreign publisher left them out).
pub fn received(topic: &str, payload: Bytes, metadata: Metadata) -> Event {
    let id = metadata
        .get(ID_KEY)
        .cloned()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let timestamp = metadata
        .get(TIMESTAMP_KEY)
        .and_then(|t| t.parse::<u64>().ok())
        .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    Event {
        id,
        topic: topic.to_owned(),
        payload,
        metadata,
        timestamp,
        attempt: 1,
    }
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// A handler from an async function of a decoded message. A payload that
/// does not decode into `T` fails with [`UNDECODABLE_ID`] and is dead-lettered
/// without retries.
pub fn typed<T, F, Fut>(f: F) -> MessageHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |event: Event| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let value: T = event.decode().map_err(|e| {
                Error::new(
                    UNDECODABLE_ID,
                    e.code,
                    format!(
                        "message {} of `{}` does not decode into {}: {}",
                        event.id,
                        event.topic,
                        std::any::type_name::<T>(),
                        e.detail
                    ),
                )
            })?;
            f(value).await
        })
    })
}

/// Sends messages on behalf of the delivery loop: the dead letters.
pub type Sender =
    Arc<dyn Fn(String, Bytes, Metadata) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A [`Sender`] sending through a clone of `broker`.
pub(crate) fn sender_of<B: Broker + Clone + 'static>(broker: &B) -> Sender {
    let broker = broker.clone();
    Arc::new(move |topic, payload, metadata| {
        let broker = broker.clone();
        Box::pin(async move { broker.send(&topic, payload, metadata).await })
    })
}

/// Hands `event` to `handler` until it succeeds, retrying with backoff up to
/// `opts.max_attempts` times; then (or at once for an undecodable payload)
/// dead-letters it through `send`. Returns `Err` only when the dead letter
/// could not be sent: the message is then neither handled nor parked.
pub async fn deliver(
    handler: &MessageHandler,
    opts: &SubscribeOptions,
    send: &Sender,
    mut event: Event,
) -> Result<()> {
    let trace_id = event
        .metadata
        .get(TRACE_ID_KEY)
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    let ctx = Context::new(
        None,
        event.metadata.clone(),
        event.topic.as_str().into(),
        trace_id,
    );
    let mut attempt = 1;
    let error = loop {
        event.attempt = attempt;
        let outcome = AssertUnwindSafe(ctx.clone().scope(handler(event.clone())))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::internal(
                    ERROR_ID,
                    format!("subscriber panicked: {msg}"),
                ))
            });
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if e.id == UNDECODABLE_ID || attempt >= opts.max_attempts => break e,
            Err(e) => {
                tracing::debug!(topic = %event.topic, id = %event.id, attempt, error = %e, "subscriber failed; retrying");
                tokio::time::sleep(opts.backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    let dead = opts.dead_letter_topic(&event.topic);
    tracing::warn!(topic = %event.topic, id = %event.id, attempts = attempt, dead_letter = %dead, error = %error, "message dead-lettered");
    let mut metadata = event.metadata;
    metadata.insert(DEAD_TOPIC_KEY.into(), event.topic.clone());
    metadata.insert(DEAD_ID_KEY.into(), event.id.clone());
    metadata.insert(
        DEAD_GROUP_KEY.into(),
        opts.queue.clone().unwrap_or_default(),
    );
    metadata.insert(DEAD_ATTEMPTS_KEY.into(), attempt.to_string());
    metadata.insert(DEAD_ERROR_KEY.into(), error.to_string());
    send(dead, event.payload, metadata).await
}

/// Runs a subscription's receive loop: hands each message of `messages` to
/// [`deliver`], up to `opts.concurrency` at once, until the stream ends. For
/// brokers that receive messages as a stream (memory, NATS, Redis).
pub async fn run_subscription<S>(
    topic: String,
    messages: S,
    opts: SubscribeOptions,
    handler: MessageHandler,
    send: Sender,
) where
    S: Stream<Item = (Bytes, Metadata)> + Send,
{
    let opts = &opts;
    let (handler, send, topic) = (&handler, &send, topic.as_str());
    messages
        .for_each_concurrent(opts.concurrency, |(payload, metadata)| async move {
            let event = received(topic, payload, metadata);
            if let Err(e) = deliver(handler, opts, send, event).await {
                tracing::error!(topic, error = %e, "could not dead-letter a message; it is lost");
            }
        })
        .await;
}

/// A set of subscriptions a value brings to a service: what
/// `#[micro::subscriber]` generates. Hand-written ones work the same way.
pub trait Subscriber: Send + Sync + 'static {
    /// The topics and their handlers.
    fn subscriptions(self: Arc<Self>) -> Vec<TopicHandler>;
}

/// One subscription of a [`Subscriber`]: a topic, its options and its handler.
#[derive(Clone)]
pub struct TopicHandler {
    /// The topic.
    pub topic: String,
    /// The options (queue group, retries, ...).
    pub options: SubscribeOptions,
    /// The handler.
    pub handler: MessageHandler,
}

impl fmt::Debug for TopicHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicHandler")
            .field("topic", &self.topic)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The [`TopicHandler`] of a typed subscriber function (what
/// `#[micro::subscriber]` generates), with default options and `queue`.
pub fn topic_handler<T, F, Fut>(topic: &str, queue: Option<&str>, f: F) -> TopicHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut options = SubscribeOptions::new();
    options.queue = queue.map(str::to_owned);
    TopicHandler {
        topic: topic.to_owned(),
        options,
        handler: typed(f),
    }
}

/// The broker the environment asks for (see the module docs). The native
/// broker finds subscribers through `registry`; a remote broker is connected
/// to before this returns.
pub async fn from_env(registry: Arc<dyn Registry>) -> Result<Arc<dyn Broker>> {
    select(
        crate::env::var("MICRO_BROKER").as_deref(),
        crate::env::var("MICRO_BROKER_ADDRESS").as_deref(),
        registry,
    )
    .await
}

async fn select(
    backend: Option<&str>,
    address: Option<&str>,
    registry: Arc<dyn Registry>,
) -> Result<Arc<dyn Broker>> {
    let backend = backend.unwrap_or("native").trim().to_ascii_lowercase();
    if address.is_some() && backend == "memory" {
        tracing::warn!("MICRO_BROKER_ADDRESS is ignored by the memory broker");
    }
    match backend.as_str() {
        "native" => Ok(Arc::new(NativeBroker::new(registry)?)),
        "memory" => Ok(Arc::new(MemoryBroker::new())),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(
            NatsBroker::connect(address.unwrap_or(crate::env::DEFAULT_NATS_ADDRESS)).await?,
        )),
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(
            RedisBroker::connect(address.unwrap_or(crate::env::DEFAULT_REDIS_ADDRESS)).await?,
        )),
        #[allow(unreachable_patterns)]
        other @ ("nats" | "redis") => Err(Error::new(
            ERROR_ID,
            501,
            format!(
                "MICRO_BROKER={other}: this build has no {other} broker; \
                 enable the `{other}` feature of `micro`, or unset MICRO_BROKER for the native broker"
            ),
        )),
        other => Err(Error::bad_request(
            ERROR_ID,
            format!("MICRO_BROKER={other}: unknown broker, expected native, memory, nats or redis"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_fills_what_is_missing() {
        let mut md = Metadata::new();
        md.insert(CONTENT_TYPE_KEY.into(), "application/json".into());
        let md = stamp(md);
        assert_eq!(md[ID_KEY].len(), 32);
        assert_eq!(md[CONTENT_TYPE_KEY], "application/json");
        assert!(md[TRACE_ID_KEY].parse::<TraceId>().is_ok());
        let event = received("t", Bytes::new(), md.clone());
        assert_eq!(event.id, md[ID_KEY]);
        let age = SystemTime::now().duration_since(event.timestamp).unwrap();
        assert!(age < Duration::from_secs(60), "{age:?}");
        // A foreign message without metadata still gets an id.
        assert_eq!(received("t", Bytes::new(), Metadata::new()).id.len(), 32);
    }

    #[tokio::test]
    async fn a_subscriber_publishing_carries_the_trace_not_the_message() {
        let incoming = stamp(
            [
                (CONTENT_TYPE_KEY.to_owned(), "application/json".to_owned()),
                ("tenant".to_owned(), "t1".to_owned()),
                (DEAD_ERROR_KEY.to_owned(), "boom".to_owned()),
            ]
            .into(),
        );
        let ctx = Context::new(None, incoming.clone(), "t".into(), TraceId(7));
        let out = ctx.scope(async { stamp(Metadata::new()) }).await;
        assert_eq!(out["tenant"], "t1");
        assert_eq!(out[TRACE_ID_KEY], TraceId(7).to_string());
        assert_ne!(out[ID_KEY], incoming[ID_KEY]);
        assert_eq!(out[CONTENT_TYPE_KEY], ContentType::MsgPack.as_str());
        assert!(!out.contains_key(DEAD_ERROR_KEY));
    }

    #[test]
    fn options_are_checked() {
        let o = SubscribeOptions::new().queue("mailer");
        o.validate("user.created").unwrap();
        assert_eq!(o.dead_letter_topic("t"), "t.dead");
        assert_eq!(o.clone().queue("a b").validate("t").unwrap_err().code, 400);
        assert_eq!(
            o.clone().max_attempts(0).validate("t").unwrap_err().code,
            400
        );
        assert_eq!(o.validate("../x").unwrap_err().code, 400);
    }

    #[tokio::test]
    async fn unknown_brokers_are_refused() {
        let registry = Arc::new(crate::MemoryRegistry::new());
        let e = select(Some("kafka"), None, registry).await.unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.detail.contains("native, memory, nats or redis"), "{e}");
    }
}
