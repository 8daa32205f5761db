//! A service: a server plus its registration, with a graceful lifecycle.

use crate::broker::{self, Broker, Subscriber, Subscription, TopicHandler};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::registry::{Node, Registry, ServiceRecord};
use crate::server::{Handler, Route, Server, Stats};
use crate::transport::frame::DEFAULT_MAX_FRAME;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// Default registration TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default re-registration interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default grace period for in-flight calls on shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Declares a service: its name, handlers and options. Nothing happens until
/// [`Service::start`] or [`Service::run`].
///
/// Options set in code win over environment variables, which win over defaults
/// (see [`crate::env`]).
pub struct Service {
    name: String,
    version: String,
    metadata: BTreeMap<String, String>,
    address: Option<String>,
    advertise: Option<String>,
    registry: Option<Arc<dyn Registry>>,
    ttl: Option<Duration>,
    interval: Option<Duration>,
    grace: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_frame: usize,
    routes: Vec<Route>,
    broker: Option<Arc<dyn Broker>>,
    subscribers: Vec<TopicHandler>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.endpoint.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field(
                "subscribers",
                &self
                    .subscribers
                    .iter()
                    .map(|s| s.topic.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service registered under `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: "latest".into(),
            metadata: BTreeMap::new(),
            address: None,
            advertise: None,
            registry: None,
            ttl: None,
            interval: None,
            grace: None,
            idle_timeout: None,
            max_frame: DEFAULT_MAX_FRAME,
            routes: Vec::new(),
            broker: None,
            subscribers: Vec::new(),
        }
    }

    /// The version registered with each node.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }
    /// A metadata entry registered with the service.
    pub fn metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }
    /// The address to bind (default `MICRO_SERVER_ADDRESS`, else `0.0.0.0:0`).
    pub fn address(mut self, a: impl Into<String>) -> Self {
        self.address = Some(a.into());
        self
    }
    /// The address clients should dial (default `MICRO_SERVER_ADVERTISE`, else derived).
    pub fn advertise(mut self, a: impl Into<String>) -> Self {
        self.advertise = Some(a.into());
        self
    }
    /// The registry (default `MICRO_REGISTRY`, else mDNS).
    pub fn registry(mut self, r: Arc<dyn Registry>) -> Self {
        self.registry = Some(r);
        self
    }
    /// Registration TTL (default `MICRO_REGISTER_TTL`, else 30 s).
    pub fn register_ttl(mut self, d: Duration) -> Self {
        self.ttl = Some(d);
        self
    }
    /// Re-registration interval (default `MICRO_REGISTER_INTERVAL`, else 10 s).
    pub fn register_interval(mut self, d: Duration) -> Self {
        self.interval = Some(d);
        self
    }
    /// How long shutdown waits for in-flight calls (default `MICRO_GRACE_PERIOD`, else 10 s).
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace = Some(d);
        self
    }
    /// How long an open stream waits for the caller's next item (default
    /// `MICRO_STREAM_IDLE_TIMEOUT`, else 5 min); a handler reading past it
    /// gets a 408 item error.
    pub fn stream_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }
    /// The bound on a frame's payload (default 16 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
    /// Serves the endpoints of `handler`.
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.routes.extend(Arc::new(handler).routes());
        self
    }

    /// Subscribes the subscriptions of `subscriber` (a `#[micro::subscriber]`
    /// function or impl) when the service starts.
    pub fn subscriber<S: Subscriber>(mut self, subscriber: S) -> Self {
        self.subscribers
            .extend(Arc::new(subscriber).subscriptions());
        self
    }
    /// Subscribes a hand-built handler, with every option of
    /// [`broker::SubscribeOptions`].
    pub fn subscribe(mut self, subscription: TopicHandler) -> Self {
        self.subscribers.push(subscription);
        self
    }
    /// The broker to subscribe and publish with (default `MICRO_BROKER`, else
    /// the native broker on this service's registry).
    pub fn broker(mut self, b: Arc<dyn Broker>) -> Self {
        self.broker = Some(b);
        self
    }

    /// Binds, starts serving and registers; returns at once with a handle.
    pub async fn start(self) -> Result<RunningService> {
        let registry = match self.registry {
            Some(r) => r,
            None => crate::registry::from_env()?,
        };
        let ttl = self
            .ttl
            .or(crate::env::duration("MICRO_REGISTER_TTL")?)
            .unwrap_or(DEFAULT_TTL);
        let interval = self
            .interval
            .or(crate::env::duration("MICRO_REGISTER_INTERVAL")?)
            .unwrap_or_else(|| DEFAULT_INTERVAL.min(ttl / 3));
        let grace = self
            .grace
            .or(crate::env::duration("MICRO_GRACE_PERIOD")?)
            .unwrap_or(DEFAULT_GRACE);
        let idle_timeout = self
            .idle_timeout
            .or(crate::env::duration("MICRO_STREAM_IDLE_TIMEOUT")?)
            .unwrap_or(crate::stream::DEFAULT_IDLE_TIMEOUT);
        let bind = self
            .address
            .or_else(|| crate::env::var("MICRO_SERVER_ADDRESS"))
            .unwrap_or_else(|| "0.0.0.0:0".into());
        let bind = normalize_bind(&bind);
        let listener = TcpListener::bind(&bind)
            .await
            .map_err(|e| Error::internal(self.name.as_str(), format!("cannot bind {bind}: {e}")))?;
        let local = listener.local_addr()?;
        let advertise = match self
            .advertise
            .or_else(|| crate::env::var("MICRO_SERVER_ADVERTISE"))
        {
            Some(a) => a,
            None => advertise_address(local, registry.local_only()).to_string(),
        };

        let server = Server::start(
            &self.name,
            self.routes,
            listener,
            self.max_frame,
            idle_timeout,
        );
        let node = Node {
            id: format!("{}-{:016x}", self.name, rand::random::<u64>()),
            address: advertise,
            metadata: [
                ("transport".to_string(), "tcp".to_string()),
                ("protocol".to_string(), "micro/1".to_string()),
                ("registry".to_string(), registry.name().to_string()),
            ]
            .into(),
        };
        let record = ServiceRecord {
            name: self.name.clone(),
            version: self.version,
            metadata: self.metadata,
            endpoints: server.endpoints().to_vec(),
            nodes: vec![node],
        };
        if let Err(e) = registry.register(&record, ttl).await {
            server.shutdown(Duration::ZERO).await;
            return Err(e.into());
        }
        let refresher = tokio::spawn(refresh(
            Arc::clone(&registry),
            record.clone(),
            ttl,
            interval,
        ));
        let client = Client::with_registry(Arc::clone(&registry))?;
        let broker = Brokerage {
            cell: OnceCell::new_with(self.broker.clone()),
            owned: self.broker.is_none(),
            registry: Arc::clone(&registry),
        };
        let subscriptions = match broker.subscribe_all(self.subscribers).await {
            Ok(subs) => subs,
            Err(e) => {
                let _ = registry.deregister(&record).await;
                refresher.abort();
                server.shutdown(Duration::ZERO).await;
                return Err(e);
            }
        };
        tracing::info!(service = %record.name, node = %record.nodes[0].id, address = %record.nodes[0].address, registry = registry.name(), "serving");
        Ok(RunningService {
            record,
            local,
            registry,
            server,
            refresher,
            client,
            grace,
            broker,
            subscriptions,
        })
    }

    /// Starts, serves until SIGINT or SIGTERM, then shuts down gracefully:
    /// deregisters, stops accepting, drains in-flight calls within the grace
    /// period, and returns.
    pub async fn run(self) -> Result<()> {
        let running = self.start().await?;
        shutdown_signal().await;
        tracing::info!(service = %running.record.name, "shutting down");
        running.stop().await
    }
}

/// Accepts `:8080` (all interfaces) as Go programs do.
fn normalize_bind(bind: &str) -> String {
    match bind.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => bind.to_owned(),
    }
}

/// The address to register for a listener bound to `local`.
pub(crate) fn advertise_address(local: SocketAddr, local_only: bool) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let ip = if local_only {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        first_non_loopback_ipv4().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    };
    SocketAddr::new(ip, local.port())
}

fn first_non_loopback_ipv4() -> Option<IpAddr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

pub(crate) async fn refresh(
    registry: Arc<dyn Registry>,
    record: ServiceRecord,
    ttl: Duration,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = registry.register(&record, ttl).await {
            tracing::warn!(service = %record.name, error = %e, "re-registration failed; will retry");
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A started service.
pub struct RunningService {
    record: ServiceRecord,
    local: SocketAddr,
    registry: Arc<dyn Registry>,
    server: Server,
    refresher: JoinHandle<()>,
    client: Client,
    grace: Duration,
    broker: Brokerage,
    subscriptions: Vec<Subscription>,
}

/// A service's broker: given in code, or made from the environment on first use.
struct Brokerage {
    cell: OnceCell<Arc<dyn Broker>>,
    /// Whether the service made it (and so shuts it down).
    owned: bool,
    registry: Arc<dyn Registry>,
}

impl Brokerage {
    async fn get(&self) -> Result<&Arc<dyn Broker>> {
        self.cell
            .get_or_try_init(|| broker::from_env(Arc::clone(&self.registry)))
            .await
    }

    /// Subscribes every handler, or none: on an error the ones made are ended.
    async fn subscribe_all(&self, handlers: Vec<TopicHandler>) -> Result<Vec<Subscription>> {
        let mut subs = Vec::with_capacity(handlers.len());
        for h in handlers {
            let subscribed = match self.get().await {
                Ok(b) => b.subscribe(&h.topic, h.options, h.handler).await,
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(sub) => subs.push(sub),
                Err(e) => {
                    for sub in subs {
                        sub.unsubscribe().await;
                    }
                    return Err(Error::new(
                        e.id,
                        e.code,
                        format!("cannot subscribe to `{}`: {}", h.topic, e.detail),
                    ));
                }
            }
        }
        Ok(subs)
    }
}

impl std::fmt::Debug for RunningService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningService")
            .field("name", &self.record.name)
            .field("node", &self.record.nodes[0].id)
            .field("address", &self.record.nodes[0].address)
            .finish_non_exhaustive()
    }
}

impl RunningService {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// The registered node (id and advertised address).
    pub fn node(&self) -> &Node {
        &self.record.nodes[0]
    }
    /// The registered record.
    pub fn record(&self) -> &ServiceRecord {
        &self.record
    }
    /// A client sharing this service's registry.
    pub fn client(&self) -> Client {
        self.client.clone()
    }
    /// The registry the service is registered in.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }
    /// The broker this service subscribes and publishes with (made from the
    /// environment on first use unless one was given).
    pub async fn broker(&self) -> Result<&Arc<dyn Broker>> {
        self.broker.get().await
    }
    /// Publishes `value` (MessagePack) to `topic`; returns the message id. The
    /// current [`crate::Context`]'s trace id and metadata travel with it.
    pub async fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<String> {
        broker::publish(&**self.broker().await?, topic, value).await
    }
    /// Current request counters.
    pub fn stats(&self) -> Stats {
        self.server.stats()
    }

    /// Unsubscribes, deregisters, stops accepting, waits for in-flight calls
    /// and deliveries (up to the grace period), and closes every connection.
    pub async fn stop(self) -> Result<()> {
        // Subscriptions first: publishers turn to other members at once.
        for sub in self.subscriptions {
            sub.unsubscribe().await;
        }
        self.refresher.abort();
        if let Err(e) = self.registry.deregister(&self.record).await {
            tracing::warn!(service = %self.record.name, error = %e, "deregistration failed");
        }
        if !self.server.shutdown(self.grace).await {
            tracing::warn!(service = %self.record.name, grace = ?self.grace, "grace period over; cancelled the calls still running");
        }
        if self.broker.owned {
            if let Some(b) = self.broker.cell.get() {
                b.shutdown(self.grace).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_bind_addresses() {
        assert_eq!(normalize_bind(":8080"), "0.0.0.0:8080");
        assert_eq!(normalize_bind("127.0.0.1:0"), "127.0.0.1:0");
    }

    #[test]
    fn advertises_something_dialable() {
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(
            advertise_address(any, true),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert!(!advertise_address(any, false).ip().is_unspecified());
        let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert_eq!(advertise_address(lo, false), lo);
    }
}
