//! The native broker: no broker process. Subscribers register in the registry;
//! publishers deliver to them over micro's transport and wait for the ack.
//!
//! # Design
//!
//! - The broker serves one internal endpoint, [`DELIVER_ENDPOINT`], on a
//!   listener of its own (started with the first subscription), speaking the
//!   native protocol like any service.
//! - Each subscription is a node of the registry record named
//!   `micro.topic:<topic>` ([`topic_record`]): its address is the broker's
//!   listener, its metadata names the queue group (`queue`, empty for
//!   broadcast) and the subscription (`subscription`). It is refreshed like a
//!   service's registration and deregistered on unsubscribe.
//! - `publish` looks the topic's record up (through a watched cache), sends the
//!   message to every broadcast subscriber and to one member of each queue
//!   group, all at once, and returns when each has answered. A subscriber
//!   answers after its handler has succeeded or the message was
//!   dead-lettered, so an answered message is never lost.
//! - A queue-group member that cannot be reached, loses the connection, is
//!   leaving, or does not answer within the delivery timeout is replaced by
//!   another member; when every member failed, the publisher looks the group
//!   up again and retries with backoff until the delivery timeout. Only then
//!   does `publish` fail (503), naming what it tried. A broadcast subscriber
//!   that cannot be reached is skipped with a warning: it is gone, as if it
//!   had unsubscribed.

use super::{
    deliver, received, Broker, MessageHandler, Sender, SubscribeOptions, Subscription, ERROR_ID,
};
use crate::client::Client;
use crate::context::Metadata;
use crate::error::{Error, Result};
use crate::registry::{cache::Cache, Node, Registry, ServiceRecord};
use crate::server::{unary, EndpointDef, Server};
use crate::service::{advertise_address, refresh, DEFAULT_INTERVAL, DEFAULT_TTL};
use crate::transport::frame::DEFAULT_MAX_FRAME;
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, OnceCell};
use tokio::time::Instant;

/// The internal endpoint a subscriber serves deliveries on.
pub const DELIVER_ENDPOINT: &str = "Micro.Broker.Deliver";
/// The service name the broker's listener answers to.
const SERVICE: &str = "micro.broker";
/// How long a delivery may take, retries included, by default.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry record holding the subscribers of `topic`.
pub fn topic_record(topic: &str) -> String {
    format!("micro.topic:{topic}")
}

/// One message on its way to a subscription.
#[derive(Debug, Serialize, Deserialize)]
struct DeliverRequest {
    subscription: u64,
    topic: String,
    payload: serde_bytes::ByteBuf,
    metadata: Metadata,
}

/// A message being published, encoded for each subscription it goes to.
struct Message<'a> {
    topic: &'a str,
    payload: &'a Bytes,
    metadata: &'a Metadata,
}

impl Message<'_> {
    fn encode_for(&self, node: &Node) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Deliver<'a> {
            subscription: u64,
            topic: &'a str,
            #[serde(with = "serde_bytes")]
            payload: &'a [u8],
            metadata: &'a Metadata,
        }
        let subscription = node
            .metadata
            .get("subscription")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::internal(
                    ERROR_ID,
                    format!("subscriber node {} names no subscription", node.id),
                )
            })?;
        crate::codec::ContentType::MsgPack.encode(&Deliver {
            subscription,
            topic: self.topic,
            payload: self.payload,
            metadata: self.metadata,
        })
    }
}

/// The broker that needs no broker: see the module docs.
#[derive(Clone)]
pub struct NativeBroker {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    registry: Arc<dyn Registry>,
    cache: Cache,
    client: Client,
    bind: String,
    ttl: Duration,
    interval: Duration,
    delivery_timeout: Duration,
    listener: OnceCell<Listener>,
    subscriptions: DashMap<u64, Arc<Sub>>,
    next: AtomicU64,
}

struct Listener {
    server: Mutex<Option<Server>>,
    address: String,
}

struct Sub {
    options: SubscribeOptions,
    handler: MessageHandler,
    send: Sender,
}

impl fmt::Debug for NativeBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeBroker")
            .field("id", &self.inner.id)
            .field("registry", &self.inner.registry.name())
            .field("subscriptions", &self.inner.subscriptions.len())
            .finish()
    }
}

impl NativeBroker {
    /// A broker finding subscribers through `registry`. Its listener (started
    /// with the first subscription) binds `MICRO_BROKER_ADDRESS`, else any
    /// port on all interfaces (on loopback when the registry is local only).
    pub fn new(registry: Arc<dyn Registry>) -> Result<Self> {
        let bind = crate::env::var("MICRO_BROKER_ADDRESS").unwrap_or_else(|| {
            if registry.local_only() {
                "127.0.0.1:0"
            } else {
                "0.0.0.0:0"
            }
            .to_owned()
        });
        Self::with_bind(registry, bind)
    }

    /// Like [`NativeBroker::new`], binding `bind` (e.g. `127.0.0.1:0`).
    /// Subscriptions are registered like services: for `MICRO_REGISTER_TTL`
    /// (else 30 s), refreshed every `MICRO_REGISTER_INTERVAL` (else 10 s).
    pub fn with_bind(registry: Arc<dyn Registry>, bind: impl Into<String>) -> Result<Self> {
        let client = Client::with_registry(Arc::clone(&registry))?;
        let ttl = crate::env::duration("MICRO_REGISTER_TTL")?.unwrap_or(DEFAULT_TTL);
        let interval = crate::env::duration("MICRO_REGISTER_INTERVAL")?
            .unwrap_or_else(|| DEFAULT_INTERVAL.min(ttl / 3));
        Ok(Self {
            inner: Arc::new(Inner {
                id: format!("broker-{:016x}", rand::random::<u64>()),
                cache: Cache::new(Arc::clone(&registry)),
                registry,
                client,
                bind: bind.into(),
                ttl,
                interval,
                delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
                listener: OnceCell::new(),
                subscriptions: DashMap::new(),
                next: AtomicU64::new(1),
            }),
        })
    }

    /// Sets how long one delivery may take, retries included (default 30 s),
    /// before the publisher tries another member or gives up. Call before
    /// sharing the broker.
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.delivery_timeout = d;
        }
        self
    }

    /// The listener, started on first use.
    async fn listener(&self) -> Result<&Listener> {
        self.inner
            .listener
            .get_or_try_init(|| async {
                let listener = TcpListener::bind(&self.inner.bind).await.map_err(|e| {
                    Error::internal(ERROR_ID, format!("cannot bind {}: {e}", self.inner.bind))
                })?;
                let local = listener.local_addr()?;
                let address =
                    advertise_address(local, self.inner.registry.local_only()).to_string();
                let route = unary(
                    EndpointDef {
                        name: DELIVER_ENDPOINT,
                        request: "DeliverRequest",
                        response: "()",
                        doc: "Delivers a published message to a subscription.",
                    },
                    Arc::new(Arc::downgrade(&self.inner)),
                    |inner: Arc<Weak<Inner>>, req: DeliverRequest| async move {
                        match inner.upgrade() {
                            Some(inner) => inner.handle(req).await,
                            None => Err(unsubscribed()),
                        }
                    },
                );
                let server = Server::start(
                    SERVICE,
                    vec![route],
                    listener,
                    DEFAULT_MAX_FRAME,
                    crate::stream::DEFAULT_IDLE_TIMEOUT,
                );
                tracing::debug!(broker = %self.inner.id, %address, "native broker listening");
                Ok::<_, Error>(Listener {
                    server: Mutex::new(Some(server)),
                    address,
                })
            })
            .await
    }

    /// Sends dead letters (and anything else the delivery loop publishes)
    /// through this broker without keeping it alive.
    fn sender(&self) -> Sender {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |topic, payload, metadata| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => NativeBroker { inner }.send(&topic, payload, metadata).await,
                    None => Err(Error::unavailable(ERROR_ID, "the broker was dropped")),
                }
            })
        })
    }
}

fn unsubscribed() -> Error {
    Error::unavailable(ERROR_ID, "no such subscription here (unsubscribed)")
}

impl Inner {
    /// Serves one delivery: the handler, its retries, the dead letter.
    async fn handle(&self, req: DeliverRequest) -> Result<()> {
        let Some(sub) = self
            .subscriptions
            .get(&req.subscription)
            .map(|s| Arc::clone(&s))
        else {
            return Err(unsubscribed());
        };
        let event = received(
            &req.topic,
            Bytes::from(req.payload.into_vec()),
            req.metadata,
        );
        deliver(&sub.handler, &sub.options, &sub.send, event).await
    }

    /// Delivers to one of `members` (a queue group, or one broadcast
    /// subscriber), trying the others and looking the group up again when
    /// they fail, until `deadline`.
    async fn deliver_to(
        &self,
        record: &str,
        group: Option<&str>,
        members: Vec<&Node>,
        message: &Message<'_>,
        deadline: Instant,
    ) -> Result<()> {
        let mut failures: Vec<String> = Vec::new();
        if self
            .try_members(members, message, deadline, &mut failures)
            .await?
        {
            return Ok(());
        }
        // A broadcast subscriber that cannot be reached is gone.
        let Some(group) = group else {
            tracing::warn!(record, failures = %failures.join("; "), "skipped an unreachable subscriber");
            return Ok(());
        };
        let mut backoff = Duration::from_millis(50);
        while Instant::now() + backoff < deadline {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            let nodes = match self.cache.refresh(record).await {
                Ok(nodes) => nodes,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            let members = nodes
                .iter()
                .filter(|n| queue_of(n) == Some(group))
                .collect();
            if self
                .try_members(members, message, deadline, &mut failures)
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::unavailable(
            ERROR_ID,
            format!(
                "no member of queue group `{group}` of `{record}` took the message ({})",
                failures.join("; ")
            ),
        ))
    }

    /// Tries `members` in random order until one answers: `Ok(true)` if one
    /// took the message, `Ok(false)` (with `failures` grown) if none did, and
    /// the subscriber's error if it failed other than by being unavailable.
    async fn try_members(
        &self,
        mut members: Vec<&Node>,
        message: &Message<'_>,
        deadline: Instant,
        failures: &mut Vec<String>,
    ) -> Result<bool> {
        use rand::seq::SliceRandom;
        members.shuffle(&mut rand::rng());
        for node in members {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let body = message.encode_for(node)?;
            match self
                .client
                .call_node(node, SERVICE, DELIVER_ENDPOINT, &body, remaining)
                .await
            {
                Ok(Ok(_)) => return Ok(true),
                // The subscription is leaving, or the broker went away: try another.
                Ok(Err(e)) if e.code == 503 => failures.push(format!("{}: {e}", node.address)),
                Ok(Err(e)) => return Err(e),
                Err(why) => failures.push(format!("{}: {why}", node.address)),
            }
        }
        Ok(false)
    }
}

/// The queue group a subscription node belongs to (`None`: broadcast).
fn queue_of(node: &Node) -> Option<&str> {
    node.metadata
        .get("queue")
        .map(String::as_str)
        .filter(|q| !q.is_empty())
}

#[async_trait]
impl Broker for NativeBroker {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn send(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<()> {
        let record = topic_record(topic);
        let nodes = self.inner.cache.nodes(&record).await?;
        if nodes.is_empty() {
            tracing::debug!(topic, "published to no subscriber");
            return Ok(());
        }
        // One delivery per queue group, one per broadcast subscriber.
        let mut deliveries: Vec<(Option<&str>, Vec<&Node>)> = Vec::new();
        for node in nodes.iter() {
            match queue_of(node) {
                Some(q) => match deliveries.iter_mut().find(|(g, _)| *g == Some(q)) {
                    Some((_, members)) => members.push(node),
                    None => deliveries.push((Some(q), vec![node])),
                },
                None => deliveries.push((None, vec![node])),
            }
        }
        let message = Message {
            topic,
            payload: &payload,
            metadata: &metadata,
        };
        let deadline = Instant::now() + self.inner.delivery_timeout;
        let results = join_all(deliveries.into_iter().map(|(group, members)| {
            self.inner
                .deliver_to(&record, group, members, &message, deadline)
        }))
        .await;
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.detail))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::unavailable(
                ERROR_ID,
                format!("publish to `{topic}`: {}", failures.join("; ")),
            ))
        }
    }

    async fn shutdown(&self, grace: Duration) {
        if let Some(l) = self.inner.listener.get() {
            if let Some(server) = l.server.lock().await.take() {
                server.shutdown(grace).await;
            }
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        opts: SubscribeOptions,
        handler: MessageHandler,
    ) -> Result<Subscription> {
        opts.validate(topic)?;
        let address = self.listener().await?.address.clone();
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let queue = opts.queue.clone();
        self.inner.subscriptions.insert(
            n,
            Arc::new(Sub {
                options: opts,
                handler,
                send: self.sender(),
            }),
        );
        let record = ServiceRecord {
            name: topic_record(topic),
            version: "micro.broker/1".into(),
            metadata: BTreeMap::new(),
            endpoints: Vec::new(),
            nodes: vec![Node {
                id: format!("{}-{n}", self.inner.id),
                address,
                metadata: [
                    ("queue".to_owned(), queue.clone().unwrap_or_default()),
                    ("subscription".to_owned(), n.to_string()),
                ]
                .into(),
            }],
        };
        let registry = Arc::clone(&self.inner.registry);
        if let Err(e) = registry.register(&record, self.inner.ttl).await {
            self.inner.subscriptions.remove(&n);
            return Err(e.into());
        }
        let refresher = tokio::spawn(refresh(
            Arc::clone(&registry),
            record.clone(),
            self.inner.ttl,
            self.inner.interval,
        ));
        let weak = Arc::downgrade(&self.inner);
        Ok(Subscription::new(topic, queue, async move {
            refresher.abort();
            if let Err(e) = registry.deregister(&record).await {
                tracing::warn!(topic = %record.name, error = %e, "could not deregister a subscription");
            }
            if let Some(inner) = weak.upgrade() {
                inner.subscriptions.remove(&n);
            }
        }))
    }
}
