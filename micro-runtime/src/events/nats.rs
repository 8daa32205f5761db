//! The NATS JetStream backend: see [`JetStreamEvents`].

use super::log::millis;
use super::{
    check_name, dead_letter_metadata, Acknowledge, ConsumeOptions, Consumer, Delivery, Event,
    Events, StartAt, ERROR_ID,
};
use crate::context::Metadata;
use crate::error::{Error, Result};
use crate::nats;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{self, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{HeaderMap, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a JetStream request (stream and consumer management, a publish's
/// acknowledgement, the confirmation of a dead letter's `+TERM`) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pull request waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How many times `prefetch` messages one pull request asks for.
const PULL_BATCH_FACTOR: usize = 4;
/// The longest pause before a consumer tries again after a failure.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// The prefix of the stream of a topic.
const STREAM_PREFIX: &str = "MICRO_EVENTS_";
/// The prefix of the subject of a topic.
const SUBJECT_PREFIX: &str = "micro.events.";

/// Durable events in NATS JetStream: one stream per topic, one durable pull
/// consumer per group.
///
/// # Naming
///
/// | what | JetStream name |
/// | --- | --- |
/// | topic `<topic>` | stream `MICRO_EVENTS_<escaped topic>`, holding the one subject `micro.events.<topic>` |
/// | group `<group>` of a topic | durable pull consumer `<escaped group>` of the topic's stream |
///
/// Stream and consumer names cannot hold dots, so names are escaped: `_` is
/// written `_5F` and `.` is written `_2E` (their ASCII codes), everything else
/// is kept. The escape is reversible, so distinct topics never share a
/// stream: `orders.created` is the stream `MICRO_EVENTS_orders_2Ecreated`,
/// `orders_created` the stream `MICRO_EVENTS_orders_5Fcreated`. Subjects keep
/// the topic as it is (its dots separate subject tokens), so a topic with an
/// empty token (`a..b`, `a.`) is refused with a 400. A stream is created, on
/// the first publish or consume of its topic, with file storage and no limits:
/// like the file log, it keeps every event; [`JetStreamEvents::delete_topic`]
/// removes one.
///
/// # Encoding
///
/// An event is a JetStream message on its topic's subject: the payload byte
/// for byte, and each metadata entry as one NATS header of the same name.
/// NATS headers are single lines whose values lose surrounding whitespace: a
/// line break in a value is stored as a space, and a key that cannot be a
/// header name (empty, non-ASCII, spaces or colons) makes `publish` fail with
/// a 400. The event's id is its stream sequence number in decimal (`1`, `2`,
/// ... as with the file log), its timestamp the time the server stored it
/// (to the millisecond), and its attempt the delivery count the server keeps
/// for the group. Any NATS client may publish events with
/// `nats pub micro.events.<topic> ...` once the stream exists (and a NATS
/// broker topic under `micro.events.` would land in the stream: keep broker
/// topics out of it).
///
/// # Semantics
///
/// Those of the module docs, with these differences from the file log:
///
/// - **Durability** is the server's: `publish` returns once the server has
///   acknowledged storing the event (the JetStream `PubAck`); the server
///   flushes its files to disk on its own schedule (`sync_interval`).
/// - **Groups** are durable pull consumers: their position and pending
///   events live on the server, so the consumers of a group may be spread
///   over processes and machines. The group's `AckWait` is
///   [`ConsumeOptions::ack_wait`] and its `MaxAckPending`
///   [`ConsumeOptions::prefetch`], so the server holds back new events while
///   the *group* has `prefetch` of them unacked (each consumer also holds at
///   most `prefetch`). An existing group keeps where it started; a consumer
///   with other `ack_wait` or `prefetch` updates them for the whole group
///   (or, should the server refuse, uses the group as it is).
/// - **Acks and nacks** are sent as plain messages (`+ACK`, `-NAK`), as
///   `async_nats`' own `ack` sends them: a returned ack or nack has been
///   handed to the connection, not confirmed by the server. One lost on the
///   way (the connection breaking just then) means that the event comes back
///   after `ack_wait`: still at least once. The `+TERM` that ends a dead
///   letter waits for the server's confirmation.
/// - **Retries**: a nack is a `-NAK` with the backoff as its delay; the
///   server redelivers, to any consumer of the group.
/// - **Dead letters** are written by the consumer, not the server (the
///   group's `MaxDeliver` is unlimited, so the server never drops an event
///   silently): when the last attempt is nacked or dropped, or when an event
///   comes back after its last attempt was not settled within `ack_wait`
///   (its `Micro-Dead-Error` then says so). The event is then terminated
///   (`+TERM`) in its group.
/// - **Stopping**: deliveries a process held when it stopped, and events a
///   dropped [`Consumer`] had fetched but not handed out, come back after
///   `ack_wait` (the file log redelivers them at once on restart), their
///   attempt counting the delivery that never reached the application. A
///   dropped [`Delivery`] is nacked from a spawned task.
///
/// # Server version
///
/// Built for nats-server 2.9 and later, with JetStream enabled (`-js`): one
/// subject per stream and no consumer filter, consumers created with `$JS.API.CONSUMER.CREATE.<stream>.<consumer>`
/// (2.9+), `-NAK` delays (2.7+), JetStream checked at connect with a plain
/// `$JS.API.INFO` request; no 2.10 feature (consumer actions, metadata,
/// multiple filters, subject transforms) is relied upon.
///
/// # While the server is down
///
/// - [`JetStreamEvents::connect`] fails within a few seconds with a 503
///   naming the server (also when JetStream is not enabled on it).
/// - Once connected, the client reconnects on its own; meanwhile `publish`,
///   ack and nack fail at once with a 503 (nothing is buffered to be sent
///   later), and a request that gets no answer within 5 s is a 503 too.
///   Consumers wait, and resume when the server is back.
#[derive(Debug, Clone)]
pub struct JetStreamEvents {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server: nats::Server,
    js: jetstream::Context,
    /// Topics whose stream is known to exist.
    streams: Mutex<HashSet<String>>,
    /// The largest payload the server took when connected.
    max_payload: usize,
}

impl JetStreamEvents {
    /// Connects to the NATS server at `address` (`nats://host:port` or
    /// `host:port`) and checks that it has JetStream. An unreachable server,
    /// or one without JetStream, is a 503 naming it, within a few seconds; a
    /// malformed address is a 400.
    pub async fn connect(address: &str) -> Result<Self> {
        let server = nats::Server::connect(ERROR_ID, "micro-events", address).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(server.client.clone());
        check_jetstream(&server).await?;
        let max_payload = server.client.server_info().max_payload;
        Ok(Self {
            inner: Arc::new(Inner {
                server,
                js,
                max_payload,
                streams: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The address the backend was connected with.
    pub fn address(&self) -> &str {
        &self.inner.server.address
    }

    /// Deletes a topic: its stream, with every event and every group. A topic
    /// that does not exist is no error.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        check_topic(topic)?;
        let inner = &self.inner;
        inner.server.check_connected()?;
        inner.streams.lock().expect("streams lock").remove(topic);
        match within(&inner.server, inner.js.delete_stream(stream_name(topic))).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Inner {
    /// Creates the stream of `topic` unless it is known to exist.
    async fn ensure_stream(&self, topic: &str) -> Result<()> {
        if self.streams.lock().expect("streams lock").contains(topic) {
            return Ok(());
        }
        // Boxed: the future of a rare path, kept out of those of publish and
        // consume (futures are moved, and copied, whole).
        Box::pin(self.create_stream(topic)).await
    }

    /// Creates the stream of `topic` (or finds it).
    async fn create_stream(&self, topic: &str) -> Result<()> {
        self.server.check_connected()?;
        let config = stream::Config {
            name: stream_name(topic),
            subjects: vec![subject(topic)],
            description: Some(format!("micro events of topic `{topic}`")),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: 1,
            ..Default::default()
        };
        within(&self.server, self.js.get_or_create_stream(config)).await?;
        self.streams
            .lock()
            .expect("streams lock")
            .insert(topic.to_owned());
        Ok(())
    }

    /// Appends an event to `topic` (creating its stream if needed); its
    /// sequence number once the server has stored it.
    async fn publish(&self, topic: &str, payload: Bytes, metadata: &Metadata) -> Result<u64> {
        check_topic(topic)?;
        let headers = self.headers(topic, &payload, metadata)?;
        self.ensure_stream(topic).await?;
        match self.publish_once(topic, headers, payload.clone()).await {
            // The stream was deleted behind our back: create it again.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                Box::pin(self.publish_again(topic, payload, metadata)).await
            }
            result => result.map_err(|e| self.publish_error(topic, &e)),
        }
    }

    /// Publishes after the stream was found missing: creates it again first.
    async fn publish_again(&self, topic: &str, payload: Bytes, metadata: &Metadata) -> Result<u64> {
        self.streams.lock().expect("streams lock").remove(topic);
        self.ensure_stream(topic).await?;
        let headers = self.headers(topic, &payload, metadata)?;
        self.publish_once(topic, headers, payload)
            .await
            .map_err(|e| self.publish_error(topic, &e))
    }

    /// The headers of an event, checking that its payload is not larger
    /// than the server takes (as it said on connecting: the client's
    /// `server_info` is a copy of all of it, too dear for every event; the
    /// client checks again with what the current server said).
    fn headers(&self, topic: &str, payload: &Bytes, metadata: &Metadata) -> Result<HeaderMap> {
        let len = payload.len();
        if self.max_payload > 0 && len > self.max_payload {
            return self.server.headers(metadata, len, || {
                format!("an event of {len} bytes for topic `{topic}`")
            });
        }
        nats::to_headers(ERROR_ID, metadata)
    }

    async fn publish_once(
        &self,
        topic: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> std::result::Result<u64, PublishError> {
        if self.server.client.connection_state() != State::Connected {
            return Err(PublishErrorKind::BrokenPipe.into());
        }
        let publishing = async {
            let ack = self
                .js
                .publish_with_headers(subject(topic), headers, payload)
                .await?;
            ack.await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, publishing).await {
            Ok(result) => result.map(|ack| ack.sequence),
            Err(_) => Err(PublishErrorKind::TimedOut.into()),
        }
    }

    fn publish_error(&self, topic: &str, e: &PublishError) -> Error {
        let server = &self.server;
        match e.kind() {
            PublishErrorKind::TimedOut => server.unavailable(format_args!(
                "the event for topic `{topic}` was not acknowledged within {REQUEST_TIMEOUT:?}"
            )),
            PublishErrorKind::BrokenPipe => server.unavailable("disconnected; reconnecting"),
            PublishErrorKind::StreamNotFound => {
                server.unavailable(format_args!("no stream stores topic `{topic}`"))
            }
            _ => Error::internal(
                ERROR_ID,
                format!(
                    "NATS server at {}: the event for topic `{topic}` was refused: {e}",
                    server.address
                ),
            ),
        }
    }

    /// The durable pull consumer of `opts.group` on the stream of `topic`,
    /// created if new, its `ack_wait` and `prefetch` brought up to date if not.
    async fn durable(&self, topic: &str, opts: &ConsumeOptions) -> Result<PullConsumer> {
        self.server.check_connected()?;
        let stream = stream_name(topic);
        let name = consumer_name(&opts.group);
        let existing = within(
            &self.server,
            self.js
                .get_consumer_from_stream::<pull::Config, _, _>(&name, &stream),
        )
        .await;
        let deliver_policy = match &existing {
            Ok(c) => c.cached_info().config.deliver_policy,
            Err(e) if e.code == 404 => deliver_policy(&opts.start)?,
            Err(e) => return Err(e.clone()),
        };
        let prefetch = i64::try_from(opts.prefetch).unwrap_or(i64::MAX);
        if let Ok(c) = existing {
            let current = &c.cached_info().config;
            if current.ack_wait == opts.ack_wait && current.max_ack_pending == prefetch {
                return Ok(c);
            }
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("micro events group `{}`", opts.group)),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: opts.ack_wait,
            max_ack_pending: prefetch,
            ..Default::default()
        };
        match within(
            &self.server,
            self.js.create_consumer_on_stream(config, &stream),
        )
        .await
        {
            Ok(created) => Ok(created),
            // Refused: made meanwhile with another start by another consumer of
            // the group, or a change the server does not take. Use it as it is.
            Err(e) => {
                let existing = self
                    .js
                    .get_consumer_from_stream::<pull::Config, _, _>(&name, &stream);
                let existing = within(&self.server, existing)
                    .await
                    .map_err(|_| e.clone())?;
                tracing::warn!(
                    topic, group = %opts.group, error = %e,
                    "events: cannot create or update the group's JetStream consumer; using it as it is"
                );
                Ok(existing)
            }
        }
    }

    /// Settles a delivery (`+TERM`) and waits for the server to confirm it.
    async fn settle(&self, reply: &Subject, kind: AckKind) -> Result<()> {
        self.server.check_connected()?;
        let request = self.server.client.request(reply.clone(), Bytes::from(kind));
        within(&self.server, request).await.map(drop)
    }

    /// Settles a delivery (`+ACK`, `-NAK`) without waiting for the server to
    /// confirm it, as `async_nats`' own `ack` does: the message is handed to
    /// the connection, which sends it with whatever else it has to send. Should
    /// it be lost, the server delivers the event again after `ack_wait`.
    async fn send(&self, reply: &Subject, kind: AckKind) -> Result<()> {
        self.server.check_connected()?;
        let sending = self.server.client.publish(reply.clone(), Bytes::from(kind));
        match tokio::time::timeout(REQUEST_TIMEOUT, sending).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.server.unavailable(e)),
            Err(_) => Err(self
                .server
                .unavailable(format_args!("cannot send within {REQUEST_TIMEOUT:?}"))),
        }
    }

    /// Appends `event` to the dead-letter topic with the `Micro-Dead-*`
    /// metadata, then terminates it in its group.
    async fn dead_letter(
        &self,
        reply: &Subject,
        event: Event,
        group: &str,
        attempts: u32,
        error: Option<String>,
        opts: &ConsumeOptions,
    ) -> Result<()> {
        let topic = opts.dead_letter_topic(&event.topic);
        let metadata = dead_letter_metadata(&event, group, attempts, error.as_deref());
        match self.publish(&topic, event.payload.clone(), &metadata).await {
            Ok(dead_id) => {
                tracing::warn!(
                    topic = %event.topic, group, id = %event.id, attempts,
                    error = error.as_deref().unwrap_or(""), dead_letter = %topic, dead_id,
                    "events: gave up on an event; moved it to the dead-letter topic"
                );
                self.settle(reply, AckKind::Term).await
            }
            Err(e) => {
                // Have it back later, to try again.
                let retry = AckKind::Nak(Some(opts.backoff(attempts)));
                if let Err(nak) = self.send(reply, retry).await {
                    tracing::debug!(error = %nak, "events: cannot nack an event that failed to dead-letter");
                }
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Events for JetStreamEvents {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<String> {
        let seq = self.inner.publish(topic, payload, &metadata).await?;
        Ok(seq.to_string())
    }

    async fn consume(&self, topic: &str, opts: ConsumeOptions) -> Result<Consumer> {
        opts.validate(topic)?;
        check_topic(topic)?;
        check_topic(&opts.dead_letter_topic(topic))?;
        deliver_policy(&opts.start)?;
        self.inner.ensure_stream(topic).await?;
        let durable = self.inner.durable(topic, &opts).await?;
        let mut reader = Reader {
            inner: Arc::clone(&self.inner),
            topic: topic.to_owned(),
            permits: Arc::new(Semaphore::new(opts.prefetch)),
            opts: Arc::new(opts),
            durable: Some(durable),
            messages: None,
            failures: 0,
        };
        reader.open().await?;
        let group = reader.opts.group.clone();
        let deliveries = futures_util::stream::unfold(reader, |mut reader| async move {
            let next = reader.next().await;
            Some((next, reader))
        });
        Ok(Consumer::new(topic, group, deliveries))
    }
}

/// What one consumer keeps between deliveries.
struct Reader {
    inner: Arc<Inner>,
    topic: String,
    opts: Arc<ConsumeOptions>,
    /// One permit per delivery held: the prefetch bound.
    permits: Arc<Semaphore>,
    /// The group's consumer on the server; `None` after it was found gone.
    durable: Option<PullConsumer>,
    /// The messages pulled from it; `None` when they are to be pulled anew.
    messages: Option<pull::Stream>,
    /// Failures in a row, for the pause before trying again.
    failures: u32,
}

impl Reader {
    /// Starts pulling messages, creating the group's consumer again if it is gone.
    async fn open(&mut self) -> Result<()> {
        let durable = match self.durable.take() {
            Some(durable) => durable,
            None => {
                self.inner.ensure_stream(&self.topic).await?;
                self.inner.durable(&self.topic, &self.opts).await?
            }
        };
        // Pull requests ask for more than `prefetch`: the group's
        // `MaxAckPending` still bounds what the server sends, and the
        // requests (which cost the server more than the messages) are fewer.
        let batch = self.opts.prefetch.saturating_mul(PULL_BATCH_FACTOR);
        let pulling = durable
            .stream()
            .max_messages_per_batch(batch)
            .expires(PULL_EXPIRES)
            .messages();
        let messages = within(&self.inner.server, pulling).await?;
        self.durable = Some(durable);
        self.messages = Some(messages);
        Ok(())
    }

    async fn next(&mut self) -> Result<Delivery> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            let message = match self.next_message().await {
                Ok(message) => {
                    self.failures = 0;
                    message
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    return Err(e);
                }
            };
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let info = match message.info() {
                Ok(info) => (info.stream_sequence, info.delivered, info.published),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "events: skipping a message that is no JetStream delivery");
                    continue;
                }
            };
            let (seq, delivered, published) = info;
            let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
            let event = Event {
                id: seq.to_string(),
                topic: self.topic.clone(),
                payload: message.payload.clone(),
                metadata: message
                    .headers
                    .as_ref()
                    .map(|headers| nats::to_metadata(headers, &[]))
                    .unwrap_or_default(),
                timestamp: UNIX_EPOCH + Duration::from_millis(millis(SystemTime::from(published))),
                attempt,
            };
            if attempt > self.opts.max_attempts {
                // Its last attempt was not settled in time: give up on it.
                let error = format!("not acked within {:?}", self.opts.ack_wait);
                let attempts = attempt - 1;
                let group = &self.opts.group;
                let dead_letter =
                    self.inner
                        .dead_letter(&reply, event, group, attempts, Some(error), &self.opts);
                Box::pin(dead_letter).await?;
                continue;
            }
            let settle = NatsDelivery {
                inner: Arc::clone(&self.inner),
                reply,
                event: event.clone(),
                opts: Arc::clone(&self.opts),
                _permit: permit,
            };
            return Ok(Delivery::new(event, Box::new(settle)));
        }
    }

    /// The next message pulled; errors end the current pull, which the next
    /// call starts again after a pause.
    async fn next_message(&mut self) -> Result<jetstream::Message> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                if self.failures > 0 {
                    let pause = Duration::from_millis(100)
                        .saturating_mul(1 << self.failures.min(5))
                        .min(MAX_RETRY_DELAY);
                    tokio::time::sleep(pause).await;
                }
                Box::pin(self.open()).await?;
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => return Ok(message),
                Some(Err(e)) => {
                    use pull::MessagesErrorKind as Kind;
                    let kind = e.kind();
                    self.messages = None;
                    if kind == Kind::ConsumerDeleted {
                        self.durable = None;
                    }
                    return Err(self.inner.server.unavailable(format_args!(
                        "pulling events of topic `{}` for group `{}`: {e}",
                        self.topic, self.opts.group
                    )));
                }
                None => {
                    self.messages = None;
                    self.durable = None;
                    return Err(self.inner.server.unavailable(format_args!(
                        "the consumer of group `{}` of topic `{}` went away",
                        self.opts.group, self.topic
                    )));
                }
            }
        }
    }
}

/// JetStream's side of a [`Delivery`].
#[derive(Debug)]
struct NatsDelivery {
    inner: Arc<Inner>,
    /// The subject that settles the delivery.
    reply: Subject,
    /// The event, to dead-letter it should it come to that.
    event: Event,
    opts: Arc<ConsumeOptions>,
    /// Released when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acknowledge for NatsDelivery {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.inner.send(&self.reply, AckKind::Ack).await
    }

    async fn nack(self: Box<Self>, event: Event, error: Option<String>) -> Result<()> {
        let attempt = self.event.attempt;
        if attempt >= self.opts.max_attempts {
            let group = &self.opts.group;
            self.inner
                .dead_letter(&self.reply, event, group, attempt, error, &self.opts)
                .await
        } else {
            let retry = AckKind::Nak(Some(self.opts.backoff(attempt)));
            self.inner.send(&self.reply, retry).await
        }
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

/// Checks that the server answers JetStream requests: a 503 if it does not.
/// (A raw request: the client's account info does not parse from a 2.9 server.)
async fn check_jetstream(server: &nats::Server) -> Result<()> {
    let fail = |why: &dyn Display| {
        server.unavailable(format_args!(
            "JetStream is not available ({why}); start nats-server with `-js`"
        ))
    };
    let answer = within(server, server.client.request("$JS.API.INFO", Bytes::new()))
        .await
        .map_err(|e| fail(&e.detail))?;
    let info: serde_json::Value = serde_json::from_slice(&answer.payload)
        .map_err(|e| fail(&format_args!("unreadable answer: {e}")))?;
    match info.get("error") {
        Some(error) => Err(fail(&error)),
        None => Ok(()),
    }
}

/// Checks a topic name, and that it makes a valid subject (no empty token).
fn check_topic(topic: &str) -> Result<()> {
    check_name("topic", topic)?;
    if topic.split('.').any(str::is_empty) {
        return Err(Error::bad_request(
            ERROR_ID,
            format!(
                "invalid topic name `{topic}` for NATS: its dots separate subject tokens, \
                 so it cannot end with a dot nor hold two in a row"
            ),
        ));
    }
    Ok(())
}

/// A topic or group name as a stream or consumer name: `_` as `_5F` and `.`
/// as `_2E`, everything else kept (reversibly: distinct names stay distinct).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '_' => out.push_str("_5F"),
            '.' => out.push_str("_2E"),
            c => out.push(c),
        }
    }
    out
}

/// The stream of a topic.
fn stream_name(topic: &str) -> String {
    format!("{STREAM_PREFIX}{}", escape(topic))
}

/// The durable consumer of a group.
fn consumer_name(group: &str) -> String {
    escape(group)
}

/// The subject of a topic's events.
fn subject(topic: &str) -> String {
    format!("{SUBJECT_PREFIX}{topic}")
}

/// Where a new group starts.
fn deliver_policy(start: &StartAt) -> Result<DeliverPolicy> {
    Ok(match start {
        StartAt::Earliest => DeliverPolicy::All,
        StartAt::Latest => DeliverPolicy::New,
        StartAt::Time(t) => DeliverPolicy::ByStartTime {
            start_time: (*t).into(),
        },
        StartAt::Id(id) => {
            let seq: u64 = id.trim().parse().map_err(|_| {
                Error::bad_request(
                    ERROR_ID,
                    format!(
                        "StartAt::Id(`{id}`): JetStream event ids are decimal sequence numbers"
                    ),
                )
            })?;
            DeliverPolicy::ByStartSequence {
                start_sequence: seq.max(1),
            }
        }
    })
}

/// Awaits a request to the server for at most [`REQUEST_TIMEOUT`]: a failure
/// to reach the server is a 503 naming it; an error answered by JetStream
/// keeps its code (404 for a missing stream or consumer, ...).
async fn within<T, E: ServerError>(
    server: &nats::Server,
    op: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(match e.jetstream() {
            Some(js) => {
                let code = u16::try_from(js.code())
                    .ok()
                    .filter(|c| (400..600).contains(c))
                    .unwrap_or(500);
                let address = &server.address;
                Error::new(ERROR_ID, code, format!("NATS server at {address}: {js}"))
            }
            None => server.unavailable(e),
        }),
        Err(_) => Err(server.unavailable(format_args!("no answer within {REQUEST_TIMEOUT:?}"))),
    }
}

/// A client error that may hold an error answered by JetStream.
trait ServerError: Display {
    fn jetstream(&self) -> Option<jetstream::Error>;
}

macro_rules! server_errors {
    ($($error:ty => $($kind:ident)::+;)*) => {$(
        impl ServerError for $error {
            fn jetstream(&self) -> Option<jetstream::Error> {
                match self.kind() {
                    $($kind)::+::JetStream(e) => Some(e),
                    _ => None,
                }
            }
        }
    )*};
}

server_errors! {
    context::CreateStreamError => context::CreateStreamErrorKind;
    context::GetStreamError => context::GetStreamErrorKind;
    stream::ConsumerError => stream::ConsumerErrorKind;
}

impl ServerError for async_nats::RequestError {
    fn jetstream(&self) -> Option<jetstream::Error> {
        None
    }
}

impl ServerError for jetstream::consumer::StreamError {
    fn jetstream(&self) -> Option<jetstream::Error> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_reversibly() {
        assert_eq!(
            stream_name("orders.created"),
            "MICRO_EVENTS_orders_2Ecreated"
        );
        assert_eq!(
            stream_name("orders_created"),
            "MICRO_EVENTS_orders_5Fcreated"
        );
        assert_eq!(stream_name("a-B9"), "MICRO_EVENTS_a-B9");
        // Names that a naive `.` → `_` would merge.
        let names = ["a.b", "a_b", "a._", "a_.", "a__", "a..", "a_2Eb", "a_5F"];
        let escaped: HashSet<String> = names.iter().map(|n| escape(n)).collect();
        assert_eq!(escaped.len(), names.len());
        assert!(escaped.iter().all(|e| !e.contains('.')));
        assert_eq!(subject("orders.created"), "micro.events.orders.created");
    }

    #[test]
    fn topics_must_make_subjects() {
        check_topic("a.b-c_d").unwrap();
        for bad in ["a..b", "a.", "a/b", ""] {
            assert_eq!(check_topic(bad).unwrap_err().code, 400, "{bad}");
        }
    }

    #[test]
    fn start_positions() {
        assert_eq!(
            deliver_policy(&StartAt::Earliest).unwrap(),
            DeliverPolicy::All
        );
        assert_eq!(
            deliver_policy(&StartAt::Latest).unwrap(),
            DeliverPolicy::New
        );
        assert_eq!(
            deliver_policy(&StartAt::Id("7".into())).unwrap(),
            DeliverPolicy::ByStartSequence { start_sequence: 7 }
        );
        let e = deliver_policy(&StartAt::Id("1-0".into())).unwrap_err();
        assert_eq!(e.code, 400);
    }
}
