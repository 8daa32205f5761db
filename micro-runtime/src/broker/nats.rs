//! The NATS broker: see [`NatsBroker`].

use super::{
    run_subscription, sender_of, Broker, MessageHandler, SubscribeOptions, Subscription,
    CONTENT_TYPE_KEY, ERROR_ID, ID_KEY, TIMESTAMP_KEY,
};
use crate::codec::ContentType;
use crate::context::{Metadata, TRACE_ID_KEY};
use crate::error::Result;
use crate::events::check_name;
use crate::nats;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a sent message may take to be taken by the client (or a
/// subscription to be confirmed by the server).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The metadata keys every message carries: valid header names, not checked
/// again for each message.
const KNOWN_KEYS: &[&str] = &[ID_KEY, TIMESTAMP_KEY, CONTENT_TYPE_KEY, TRACE_ID_KEY];

/// A broker over NATS core: subjects, headers and queue groups.
///
/// # Naming
///
/// A topic is the NATS subject of the same name: `user.created` is published
/// to and subscribed from the subject `user.created`, so foreign NATS clients
/// publish and subscribe to the very same subject. (Topic names, `A-Za-z0-9._-`,
/// hold no wildcard; the dots are NATS token separators, so a foreign client
/// may listen to `user.*`.) A queue group is the NATS queue group of the same
/// name: its members are NATS queue subscribers, and the server hands each
/// message to one of them.
///
/// # Encoding
///
/// The NATS payload is the message payload, byte for byte: MessagePack by
/// default, whatever the `Content-Type` header says. Each metadata entry is one
/// NATS header of the same name (`Micro-Id`, `Micro-Timestamp`,
/// `Micro-Trace-Id`, ...), except `Content-Type` when it is
/// `application/msgpack`, the default: it is left out, to spare every message
/// a header, and a receiver takes a message without `Content-Type` as
/// MessagePack (its metadata then says `Content-Type: application/msgpack`).
/// Any other content type (`application/json`, ...) is sent as a header. NATS
/// headers are single lines: a line break in a value is sent as a space, and
/// the server trims the whitespace around values. A metadata key that cannot
/// be a header name (empty, or with spaces, colons or non-ASCII characters)
/// makes `send` fail with a 400.
///
/// A message from a foreign publisher gets what it lacks when received: a
/// fresh id and the time of reception. Its payload decodes as MessagePack
/// unless it carries `Content-Type: application/json` (the header name is
/// matched regardless of case).
///
/// # Guarantees
///
/// Those of NATS core: at most once. [`Broker::send`] returns once the client
/// has taken the message, which it writes to the server's connection at once,
/// in the background (it is not flushed for each message: that would cost
/// about a sixth of the CPU per message); so not once subscribers have it. A
/// subscriber that is down or disconnected when the message passes misses it. A payload larger than the server's
/// `max_payload` is refused with a 413 before it is sent.
///
/// # While the server is down
///
/// - [`NatsBroker::connect`] fails with a 503 naming the server within a few
///   seconds; it does not retry.
/// - Once connected, the client reconnects on its own, forever, backing off up
///   to 4 s between attempts, and re-subscribes every live subscription: they
///   resume when the server is back, missing what was published meanwhile.
/// - Meanwhile `send` and `subscribe` fail at once with a 503 naming the
///   server: each checks first that the client is connected. (The NATS client
///   would otherwise buffer publications until it reconnects, hiding the
///   outage from the publisher.) Messages sent just as the connection breaks,
///   before the client notices, may be lost without an error; a message the
///   client does not take within 5 s (its buffer full), or a subscription the
///   server does not confirm within 5 s, is reported as a 503.
#[derive(Debug, Clone)]
pub struct NatsBroker {
    server: nats::Server,
}

impl NatsBroker {
    /// Connects to the NATS server at `address` (`nats://host:port` or
    /// `host:port`), without retrying: an unreachable server is a 503 naming
    /// it, within a few seconds; a malformed address is a 400.
    pub async fn connect(address: &str) -> Result<Self> {
        let server = nats::Server::connect(ERROR_ID, "micro", address).await?;
        Ok(Self { server })
    }

    /// The address the broker was connected with.
    pub fn address(&self) -> &str {
        &self.server.address
    }

    /// Runs `op`, then flushes what the client buffered to the server, all
    /// within [`SEND_TIMEOUT`]; a failure is a 503, saying `late()` (plus the
    /// limit) when it took too long.
    async fn flushed<T, E: Display>(
        &self,
        op: impl Future<Output = std::result::Result<T, E>>,
        late: impl FnOnce() -> String,
    ) -> Result<T> {
        let flushing = async {
            let value = op.await.map_err(|e| self.server.unavailable(e))?;
            let flush = self.server.client.flush().await;
            flush.map_err(|e| self.server.unavailable(e))?;
            Ok(value)
        };
        tokio::time::timeout(SEND_TIMEOUT, flushing)
            .await
            .unwrap_or_else(|_| {
                let late = late();
                Err(self
                    .server
                    .unavailable(format_args!("{late} within {SEND_TIMEOUT:?}")))
            })
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn send(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<()> {
        check_name("topic", topic)?;
        let len = payload.len();
        // MessagePack, the default, goes without saying (see the docs).
        let msgpack = ContentType::MsgPack.as_str();
        let skip: &[&str] = match metadata.get(CONTENT_TYPE_KEY) {
            Some(ct) if ct == msgpack => &[CONTENT_TYPE_KEY],
            _ => &[],
        };
        let headers = nats::into_headers(ERROR_ID, metadata, KNOWN_KEYS, skip)?;
        self.server
            .check_payload(len, || format!("message of {len} bytes to `{topic}`"))?;
        self.server.check_connected()?;
        // Not flushed: the client writes what it takes at once; a broken
        // connection shows in its state, checked above.
        let client = &self.server.client;
        let publishing = client.publish_with_headers(topic.to_owned(), headers, payload);
        match tokio::time::timeout(SEND_TIMEOUT, publishing).await {
            Ok(published) => published.map_err(|e| self.server.unavailable(e)),
            Err(_) => Err(self.server.unavailable(format_args!(
                "message to `{topic}` not taken by the client within {SEND_TIMEOUT:?}"
            ))),
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        opts: SubscribeOptions,
        handler: MessageHandler,
    ) -> Result<Subscription> {
        opts.validate(topic)?;
        self.server.check_connected()?;
        let client = &self.server.client;
        let subscribing = async {
            match &opts.queue {
                None => client.subscribe(topic.to_owned()).await,
                Some(q) => client.queue_subscribe(topic.to_owned(), q.clone()).await,
            }
        };
        // Flushed: the server knows of the subscription before this returns,
        // so that what is published next reaches it.
        let subscriber = self
            .flushed(subscribing, || {
                format!("subscription to `{topic}` not confirmed")
            })
            .await?;
        let (stop, stopped) = oneshot::channel();
        let queue = opts.queue.clone();
        let task = tokio::spawn(run_subscription(
            topic.to_owned(),
            messages(subscriber, stopped),
            opts,
            handler,
            sender_of(self),
        ));
        Ok(Subscription::new(topic, queue, async move {
            let _ = stop.send(());
            // The loop ends once the messages already received are handled.
            let _ = task.await;
        }))
    }
}

/// The messages of `subscriber`, until `stop` fires (or is dropped): it then
/// unsubscribes, and yields what the client had already received, so that a
/// queue group loses nothing it was handed.
fn messages(
    subscriber: async_nats::Subscriber,
    stop: oneshot::Receiver<()>,
) -> impl Stream<Item = (Bytes, Metadata)> + Send {
    stream::unfold(
        (subscriber, Some(stop)),
        |(mut subscriber, mut stop)| async move {
            let message = match stop.as_mut() {
                Some(signal) => tokio::select! {
                    message = subscriber.next() => message,
                    _ = signal => {
                        stop = None;
                        // Also closes the client's inbox: what it holds is
                        // still yielded, then the stream ends.
                        let _ = subscriber.unsubscribe().await;
                        subscriber.next().await
                    }
                },
                None => subscriber.next().await,
            }?;
            let mut metadata = message
                .headers
                .as_ref()
                .map(|headers| nats::to_metadata(headers, &[CONTENT_TYPE_KEY]))
                .unwrap_or_default();
            // Left out when sent: MessagePack (see the docs).
            if !metadata.contains_key(CONTENT_TYPE_KEY) {
                let msgpack = ContentType::MsgPack.as_str();
                metadata.insert(CONTENT_TYPE_KEY.to_owned(), msgpack.to_owned());
            }
            Some(((message.payload, metadata), (subscriber, stop)))
        },
    )
}
