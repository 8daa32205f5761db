//! The client: calls services by name.
//!
//! A call resolves the service through the registry cache, picks a node with
//! the selector, takes a pooled multiplexed connection, and waits for the reply
//! until the deadline. Connection failures are retried on another node;
//! application errors never are.

mod conn;
mod pool;

use crate::codec::ContentType;
use crate::context::{Context, Metadata, TraceId, TRACE_ID_KEY};
use crate::error::{Error, Result};
use crate::registry::{cache::Cache, Node, Registry};
use crate::selector::{Selector, Strategy};
use crate::stream::{self, Inbound, Outbound, Streaming};
use crate::transport::frame::{self, flags, RequestHead, DEFAULT_MAX_FRAME};
use bytes::Bytes;
use conn::CallError;
use pool::Pool;
use serde::{de::DeserializeOwned, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The per-call timeout when nothing else says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries on connection failures when nothing else says.
pub const DEFAULT_RETRIES: usize = 2;

/// Options of one call (or of every call of a [`ServiceClient`]).
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// How long to wait for the reply (bounded further by the caller's own deadline).
    pub timeout: Option<Duration>,
    /// Metadata sent with the call (merged over the caller's context metadata).
    pub metadata: Metadata,
    /// The body encoding; MessagePack if `None`.
    pub content_type: Option<ContentType>,
    /// Retries on connection failures.
    pub retries: Option<usize>,
    /// How long a stream may wait for its next item (streams ignore `timeout`
    /// once open). Default: `MICRO_STREAM_IDLE_TIMEOUT`, else 5 minutes.
    pub idle_timeout: Option<Duration>,
}

impl CallOptions {
    /// Empty options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Sets the content type.
    pub fn content_type(mut self, ct: ContentType) -> Self {
        self.content_type = Some(ct);
        self
    }
    /// Sets the retry count.
    pub fn retries(mut self, n: usize) -> Self {
        self.retries = Some(n);
        self
    }
    /// Sets the idle timeout of streams.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = Some(t);
        self
    }
    fn merge(&self, over: &CallOptions) -> CallOptions {
        let mut metadata = self.metadata.clone();
        metadata.extend(over.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        CallOptions {
            timeout: over.timeout.or(self.timeout),
            metadata,
            content_type: over.content_type.or(self.content_type),
            retries: over.retries.or(self.retries),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
        }
    }
}

/// Calls services by name. Cheap to clone; clones share the cache and connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache,
    selector: Selector,
    pool: Pool,
    defaults: CallOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.inner.cache.registry().name())
            .field("selector", &self.inner.selector.strategy())
            .finish()
    }
}

/// Builds a [`Client`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    registry: Option<Arc<dyn Registry>>,
    strategy: Option<Strategy>,
    timeout: Option<Duration>,
    retries: Option<usize>,
    pool_size: Option<usize>,
    content_type: Option<ContentType>,
}

impl ClientBuilder {
    /// Uses this registry (default: from `MICRO_REGISTRY`).
    pub fn registry(mut self, r: Arc<dyn Registry>) -> Self {
        self.registry = Some(r);
        self
    }
    /// Uses this selection strategy (default: `MICRO_SELECTOR`, else random).
    pub fn selector(mut self, s: Strategy) -> Self {
        self.strategy = Some(s);
        self
    }
    /// Default per-call timeout (default: `MICRO_CLIENT_TIMEOUT`, else 5 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Retries on connection failures (default: `MICRO_CLIENT_RETRIES`, else 2).
    pub fn retries(mut self, n: usize) -> Self {
        self.retries = Some(n);
        self
    }
    /// Connections kept per node (default: `MICRO_CLIENT_POOL_SIZE`, else 1; calls are multiplexed).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = Some(n.max(1));
        self
    }
    /// Default body encoding (MessagePack unless set).
    pub fn content_type(mut self, ct: ContentType) -> Self {
        self.content_type = Some(ct);
        self
    }
    /// Builds the client; environment variables fill what was not set in code.
    pub fn build(self) -> Result<Client> {
        let registry = match self.registry {
            Some(r) => r,
            None => crate::registry::from_env()?,
        };
        let strategy = match self.strategy {
            Some(s) => s,
            None => crate::env::parsed("MICRO_SELECTOR")?.unwrap_or_default(),
        };
        let timeout = self
            .timeout
            .or(crate::env::duration("MICRO_CLIENT_TIMEOUT")?)
            .unwrap_or(DEFAULT_TIMEOUT);
        let retries = self
            .retries
            .or(crate::env::parsed("MICRO_CLIENT_RETRIES")?)
            .unwrap_or(DEFAULT_RETRIES);
        let pool_size = self
            .pool_size
            .or(crate::env::parsed("MICRO_CLIENT_POOL_SIZE")?)
            .unwrap_or(1);
        Ok(Client {
            inner: Arc::new(Inner {
                cache: Cache::new(registry),
                selector: Selector::new(strategy),
                pool: Pool::new(pool_size, DEFAULT_MAX_FRAME),
                defaults: CallOptions {
                    timeout: Some(timeout),
                    metadata: Metadata::new(),
                    content_type: self.content_type,
                    retries: Some(retries),
                    idle_timeout: Some(
                        crate::env::duration("MICRO_STREAM_IDLE_TIMEOUT")?
                            .unwrap_or(crate::stream::DEFAULT_IDLE_TIMEOUT),
                    ),
                },
            }),
        })
    }
}

impl Client {
    /// A client configured from the environment (registry, selector, timeout, retries).
    pub fn new() -> Result<Client> {
        Self::builder().build()
    }

    /// A builder for a client configured in code.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client using `registry` and the environment for the rest.
    pub fn with_registry(registry: Arc<dyn Registry>) -> Result<Client> {
        Self::builder().registry(registry).build()
    }

    /// The registry this client resolves services in.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        self.inner.cache.registry()
    }

    /// Calls `service`'s `endpoint` with a typed request and decodes the typed reply.
    pub async fn call<Req, Resp>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned,
    {
        let opts = self.inner.defaults.merge(opts);
        let ct = opts.content_type.unwrap_or_default();
        let reply = self
            .call_merged(service, endpoint, ct, &|out| ct.encode_into(out, req), opts)
            .await?;
        decode_reply(ct, endpoint, &reply)
    }

    /// Opens a server-streaming call: one request, a stream of replies. The
    /// call's timeout bounds the opening; after that the stream's idle
    /// timeout applies between items. Dropping the stream cancels the call.
    pub async fn server_stream<Req, Resp>(
        &self,
        service: &str,
        endpoint: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Streaming<Resp>>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        let opts = self.inner.defaults.merge(opts);
        let ct = opts.content_type.unwrap_or_default();
        let write_body = |out: &mut Vec<u8>| ct.encode_into(out, req);
        match self
            .open(service, endpoint, ct, &write_body, opts, None, true)
            .await?
        {
            Opened::Stream(inbound) => Ok(Streaming::decode(inbound, ct)),
            Opened::Reply(_) => unreachable!("a stream was asked for"),
        }
    }

    /// Makes a client-streaming call: sends every item of `items` (as fast as
    /// the server's credit allows), then waits for the one reply.
    pub async fn client_stream<Req, Resp>(
        &self,
        service: &str,
        endpoint: &str,
        items: Streaming<Req>,
        opts: &CallOptions,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
    {
        let opts = self.inner.defaults.merge(opts);
        let ct = opts.content_type.unwrap_or_default();
        let items = Some(stream::encode(items, ct));
        match self
            .open(service, endpoint, ct, &|_| Ok(()), opts, items, false)
            .await?
        {
            Opened::Reply(body) => decode_reply(ct, endpoint, &body),
            Opened::Stream(_) => unreachable!("a reply was asked for"),
        }
    }

    /// Opens a bidirectional call: `items` go out while the returned stream
    /// brings the replies in. Dropping the returned stream cancels the call.
    pub async fn bidi_stream<Req, Resp>(
        &self,
        service: &str,
        endpoint: &str,
        items: Streaming<Req>,
        opts: &CallOptions,
    ) -> Result<Streaming<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let opts = self.inner.defaults.merge(opts);
        let ct = opts.content_type.unwrap_or_default();
        let items = Some(stream::encode(items, ct));
        match self
            .open(service, endpoint, ct, &|_| Ok(()), opts, items, true)
            .await?
        {
            Opened::Stream(inbound) => Ok(Streaming::decode(inbound, ct)),
            Opened::Reply(_) => unreachable!("a stream was asked for"),
        }
    }

    /// Calls with an already encoded body; returns the encoded reply.
    pub async fn call_raw(
        &self,
        service: &str,
        endpoint: &str,
        content_type: ContentType,
        body: &[u8],
        opts: &CallOptions,
    ) -> Result<Bytes> {
        let write_body = |out: &mut Vec<u8>| {
            out.extend_from_slice(body);
            Ok(())
        };
        let opts = self.inner.defaults.merge(opts);
        self.call_merged(service, endpoint, content_type, &write_body, opts)
            .await
    }

    async fn call_merged(
        &self,
        service: &str,
        endpoint: &str,
        content_type: ContentType,
        write_body: &(dyn Fn(&mut Vec<u8>) -> Result<()> + Sync),
        opts: CallOptions,
    ) -> Result<Bytes> {
        let (deadline, metadata, trace_id) = self.prepare(&opts)?;
        let mut head = RequestHead {
            service,
            endpoint,
            content_type: content_type.as_str(),
            timeout_us: 0,
            trace_id: trace_id.0,
            metadata: Cow::Borrowed(&metadata),
        };
        let mut attempts = Attempts::default();
        for _attempt in 0..=opts.retries.unwrap_or(DEFAULT_RETRIES) {
            let node = self.pick(service, &attempts.tried).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            head.timeout_us = remaining.as_micros().min(u64::MAX as u128) as u64;
            let request = frame::request_with(0, flags::END_STREAM, &head, write_body)?;
            let pool = &self.inner.pool;
            let outcome = match pool.get(&node.address, remaining).await {
                Ok(conn) => conn.call(request, deadline).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(reply) => return reply,
                Err(CallError::Timeout) => break,
                Err(e) => attempts.failed(pool, &node, e),
            }
        }
        Err(attempts.give_up(service, endpoint, deadline, &opts))
    }

    /// Opens a stream: `items` are the client's (client and bidirectional
    /// streaming); `expect_stream` says whether the server answers with a
    /// stream or one reply. A stream is retried on another node only while
    /// nothing of it can have been consumed: when the connection fails, or
    /// (server streaming) when the server refuses or loses it before opening.
    #[allow(clippy::too_many_arguments)]
    async fn open(
        &self,
        service: &str,
        endpoint: &str,
        content_type: ContentType,
        write_body: &(dyn Fn(&mut Vec<u8>) -> Result<()> + Sync),
        opts: CallOptions,
        mut items: Option<Outbound>,
        expect_stream: bool,
    ) -> Result<Opened> {
        let (deadline, metadata, trace_id) = self.prepare(&opts)?;
        // A stream has no deadline on the server; the idle timeout bounds its waits.
        let head = RequestHead {
            service,
            endpoint,
            content_type: content_type.as_str(),
            timeout_us: 0,
            trace_id: trace_id.0,
            metadata: Cow::Borrowed(&metadata),
        };
        let idle = opts
            .idle_timeout
            .unwrap_or(crate::stream::DEFAULT_IDLE_TIMEOUT);
        let client_sends = items.is_some();
        let mut attempts = Attempts::default();
        for _attempt in 0..=opts.retries.unwrap_or(DEFAULT_RETRIES) {
            let node = self.pick(service, &attempts.tried).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let request = frame::request_with(0, 0, &head, write_body)?;
            let pool = &self.inner.pool;
            let opening = match pool.get(&node.address, remaining).await {
                Ok(conn) => conn.open_stream(request, client_sends, idle),
                Err(e) => Err(e),
            };
            let open = match opening {
                Ok(Ok(open)) => open,
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    attempts.failed(pool, &node, e);
                    continue;
                }
            };
            let mut opened = open.opened;
            let outcome = match items.take() {
                // The reply of client streaming comes once the items are in:
                // no deadline while they go out, the idle timeout after.
                Some(out) if !expect_stream => {
                    let (credit, frames, id) = (Arc::clone(&open.credit), open.frames, open.id);
                    let mut pump = tokio::spawn(async move {
                        stream::pump(out, &credit, &frames, id, "micro.client").await
                    });
                    let _abort = AbortOnDrop(pump.abort_handle());
                    tokio::select! {
                        r = &mut opened => Ok(r),
                        _ = &mut pump => tokio::time::timeout(idle, opened).await,
                    }
                }
                items => {
                    if let Some(out) = items {
                        // Ends by itself with the stream: the credit closes then.
                        let (credit, frames, id) =
                            (Arc::clone(&open.credit), open.frames.clone(), open.id);
                        tokio::spawn(async move {
                            stream::pump(out, &credit, &frames, id, "micro.client").await
                        });
                    }
                    tokio::time::timeout_at(deadline, opened).await
                }
            };
            let failure = match outcome {
                Ok(Ok(Ok(Ok(body)))) if !expect_stream => return Ok(Opened::Reply(body)),
                Ok(Ok(Ok(Ok(_)))) => return Ok(Opened::Stream(open.inbound)),
                Ok(Ok(Ok(Err(e)))) => return Err(e),
                Ok(Ok(Err(e))) => e,
                Ok(Err(_)) => CallError::Lost("connection closed".into()),
                Err(_) => break,
            };
            if client_sends {
                return Err(failure.into_error());
            }
            attempts.failed(pool, &node, failure);
        }
        Err(attempts.give_up(service, endpoint, deadline, &opts))
    }

    /// Calls `endpoint` of `service` on `node` once: no selection, no retry
    /// (the native broker picks its nodes itself). `Err` says why the node did
    /// not answer (unreachable, connection lost, draining, timed out); `Ok`
    /// holds its reply.
    pub(crate) async fn call_node(
        &self,
        node: &Node,
        service: &str,
        endpoint: &str,
        body: &[u8],
        timeout: Duration,
    ) -> std::result::Result<Result<Bytes>, String> {
        let opts = self
            .inner
            .defaults
            .merge(&CallOptions::new().timeout(timeout));
        let (deadline, metadata, trace_id) = self.prepare(&opts).map_err(|e| e.to_string())?;
        let head = RequestHead {
            service,
            endpoint,
            content_type: ContentType::MsgPack.as_str(),
            timeout_us: timeout.as_micros().min(u64::MAX as u128) as u64,
            trace_id: trace_id.0,
            metadata: Cow::Borrowed(&metadata),
        };
        let write_body = |out: &mut Vec<u8>| {
            out.extend_from_slice(body);
            Ok(())
        };
        let request = frame::request_with(0, flags::END_STREAM, &head, write_body)
            .map_err(|e| e.to_string())?;
        let pool = &self.inner.pool;
        let outcome = match pool.get(&node.address, timeout).await {
            Ok(conn) => conn.call(request, deadline).await,
            Err(e) => Err(e),
        };
        outcome.map_err(|e| match e {
            CallError::Lost(why) => {
                pool.mark_failed(&node.address);
                why
            }
            CallError::Refused(e) => e.to_string(),
            CallError::Timeout => format!("no reply within {timeout:?}"),
        })
    }

    /// The deadline, metadata and trace id of a call made now: a call made
    /// while serving another carries its deadline, metadata and trace id on.
    fn prepare(&self, opts: &CallOptions) -> Result<(Instant, Metadata, TraceId)> {
        let mut deadline = Instant::now() + opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut metadata = Metadata::new();
        let mut trace_id = TraceId::default();
        if let Some(ctx) = Context::try_current() {
            if let Some(d) = ctx.deadline() {
                deadline = deadline.min(d.into());
            }
            metadata.extend(ctx.metadata().iter().map(|(k, v)| (k.clone(), v.clone())));
            trace_id = ctx.trace_id();
        }
        metadata.extend(opts.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(explicit) = metadata.remove(TRACE_ID_KEY) {
            trace_id = explicit
                .parse()
                .map_err(|e: String| Error::bad_request("micro.client", e))?;
        }
        if trace_id.is_none() {
            trace_id = TraceId::random();
        }
        Ok((deadline, metadata, trace_id))
    }

    /// A node of `service`, preferring nodes not yet tried in this call and
    /// not recently unreachable.
    async fn pick(&self, service: &str, tried: &[String]) -> Result<Node> {
        let nodes = self.inner.cache.nodes(service).await?;
        if nodes.is_empty() {
            return Err(Error::not_found(
                "micro.client",
                format!(
                    "service `{service}` not found in the {} registry",
                    self.registry().name()
                ),
            ));
        }
        let (selector, pool) = (&self.inner.selector, &self.inner.pool);
        let node = selector
            .select(&nodes, |n| {
                !tried.contains(&n.id) && !pool.is_backing_off(&n.address)
            })
            .or_else(|| selector.select(&nodes, |n| !tried.contains(&n.id)))
            .or_else(|| selector.select(&nodes, |_| true))
            .expect("nodes is not empty");
        Ok(node.clone())
    }
}

/// What opening a stream gave.
enum Opened {
    /// The server's stream of items.
    Stream(Inbound),
    /// The one reply of client streaming.
    Reply(Bytes),
}

/// The nodes a call tried, and why each failed.
#[derive(Default)]
struct Attempts {
    tried: Vec<String>,
    failures: Vec<String>,
}

impl Attempts {
    fn failed(&mut self, pool: &Pool, node: &Node, e: CallError) {
        let why = match e {
            CallError::Lost(why) => {
                pool.mark_failed(&node.address);
                why
            }
            CallError::Refused(e) => e.to_string(),
            CallError::Timeout => "timed out".into(),
        };
        tracing::debug!(node = %node.id, failure = %why, "retrying on another node");
        self.failures.push(format!("{}: {why}", node.address));
        self.tried.push(node.id.clone());
    }

    fn give_up(
        self,
        service: &str,
        endpoint: &str,
        deadline: Instant,
        opts: &CallOptions,
    ) -> Error {
        if Instant::now() >= deadline {
            return Error::timeout(
                "micro.client",
                format!(
                    "{service} {endpoint}: no reply within {:?}",
                    opts.timeout.unwrap_or(DEFAULT_TIMEOUT)
                ),
            );
        }
        Error::unavailable(
            "micro.client",
            format!(
                "{service} {endpoint}: no node answered after {} attempts ({})",
                self.tried.len(),
                self.failures.join("; ")
            ),
        )
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn decode_reply<T: DeserializeOwned>(ct: ContentType, endpoint: &str, body: &[u8]) -> Result<T> {
    ct.decode(body).map_err(|e| {
        Error::internal(
            "micro.client",
            format!("undecodable reply from {endpoint}: {}", e.detail),
        )
    })
}

/// A client bound to one service; the generated typed clients wrap it.
#[derive(Clone, Debug)]
pub struct ServiceClient {
    client: Client,
    service: Arc<str>,
    options: CallOptions,
}

impl ServiceClient {
    /// Calls to `service` through `client`.
    pub fn new(client: &Client, service: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            service: service.into().into(),
            options: CallOptions::default(),
        }
    }
    /// The same, aimed at another service name.
    pub fn with_service(&self, service: impl Into<String>) -> Self {
        Self {
            service: service.into().into(),
            ..self.clone()
        }
    }
    /// The same, with another per-call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        self.with_options(CallOptions::new().timeout(timeout))
    }
    /// The same, with `options` laid over the current ones.
    pub fn with_options(&self, options: CallOptions) -> Self {
        Self {
            options: self.options.merge(&options),
            ..self.clone()
        }
    }
    /// The service name calls go to.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// Calls `endpoint` with `req`.
    pub async fn call<Req, Resp>(&self, endpoint: &str, req: &Req) -> Result<Resp>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned,
    {
        self.client
            .call(&self.service, endpoint, req, &self.options)
            .await
    }
    /// Opens the server-streaming `endpoint` with `req`.
    pub async fn server_stream<Req, Resp>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Result<Streaming<Resp>>
    where
        Req: Serialize + Sync + ?Sized,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.client
            .server_stream(&self.service, endpoint, req, &self.options)
            .await
    }
    /// Streams `items` to the client-streaming `endpoint`; returns its reply.
    pub async fn client_stream<Req, Resp>(
        &self,
        endpoint: &str,
        items: Streaming<Req>,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
    {
        self.client
            .client_stream(&self.service, endpoint, items, &self.options)
            .await
    }
    /// Opens the bidirectional `endpoint`, sending `items`.
    pub async fn bidi_stream<Req, Resp>(
        &self,
        endpoint: &str,
        items: Streaming<Req>,
    ) -> Result<Streaming<Resp>>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        self.client
            .bidi_stream(&self.service, endpoint, items, &self.options)
            .await
    }
}
