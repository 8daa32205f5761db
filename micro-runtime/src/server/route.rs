//! What a handler hands the server: a table of routes, one per endpoint.
//!
//! The `#[service]` and `#[handler]` macros generate an implementation of
//! [`Handler`]; hand-written ones work the same way.

use crate::codec::ContentType;
use crate::error::Result;
use crate::registry::Endpoint;
use crate::stream::{self, Inbound, Outbound, Streaming};
use crate::transport::frame::{self, Kind, HEADER_LEN};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The body of one request, still encoded.
#[derive(Debug, Clone)]
pub struct Request {
    /// How `body` is encoded; the reply is encoded the same way.
    pub content_type: ContentType,
    /// The encoded arguments.
    pub body: Bytes,
}

/// An encoded reply, with room in front for the frame header so the server
/// sends it without copying.
#[derive(Debug, Clone)]
pub struct Reply {
    buf: Vec<u8>,
}

impl Reply {
    /// Encodes `value` in `content_type`.
    pub fn encode<T: Serialize + ?Sized>(content_type: ContentType, value: &T) -> Result<Self> {
        let mut buf = Vec::with_capacity(128);
        buf.resize(HEADER_LEN, 0);
        content_type.encode_into(&mut buf, value)?;
        Ok(Self { buf })
    }

    /// The encoded body.
    pub fn body(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }

    /// The reply as one frame, its header written in place.
    pub(crate) fn into_frame(mut self, kind: Kind, flags: u8, stream: u32) -> Vec<u8> {
        frame::write_header(&mut self.buf, kind, flags, stream);
        self.buf
    }
}

/// The function behind a unary endpoint: encoded request in, encoded reply out.
pub type UnaryFn = Arc<dyn Fn(Request) -> BoxFuture<'static, Result<Reply>> + Send + Sync>;

/// Which sides of an endpoint stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One request, one reply.
    Unary,
    /// One request, a stream of replies.
    ServerStream,
    /// A stream of requests, one reply.
    ClientStream,
    /// Streams both ways.
    Bidi,
}

impl Shape {
    /// Whether the caller sends a stream.
    pub fn streams_in(self) -> bool {
        matches!(self, Shape::ClientStream | Shape::Bidi)
    }
    /// Whether the endpoint answers with a stream.
    pub fn streams_out(self) -> bool {
        matches!(self, Shape::ServerStream | Shape::Bidi)
    }
    /// The name registered in the endpoint's metadata under `stream` (none for unary).
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Unary => "unary",
            Shape::ServerStream => "server",
            Shape::ClientStream => "client",
            Shape::Bidi => "bidi",
        }
    }
}

/// What a streaming endpoint is given: the request body (server streaming)
/// and the caller's stream of encoded items (client and bidirectional
/// streaming; already ended otherwise).
#[derive(Debug)]
pub struct StreamRequest {
    /// How `body` and the items are encoded; replies are encoded the same way.
    pub content_type: ContentType,
    /// The encoded argument of a server-streaming endpoint (empty otherwise).
    pub body: Bytes,
    /// The caller's items.
    pub inbound: Inbound,
}

/// What a streaming endpoint answers with.
pub enum StreamReply {
    /// One reply (client streaming).
    Unary(Reply),
    /// A stream of replies (server and bidirectional streaming).
    Stream(Outbound),
}

impl fmt::Debug for StreamReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamReply::Unary(r) => f.debug_tuple("Unary").field(r).finish(),
            StreamReply::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// The function behind a streaming endpoint.
pub type StreamFn =
    Arc<dyn Fn(StreamRequest) -> BoxFuture<'static, Result<StreamReply>> + Send + Sync>;

/// How an endpoint is served.
#[derive(Clone)]
pub enum Call {
    /// One request, one reply.
    Unary(UnaryFn),
    /// At least one side streams.
    Stream(Shape, StreamFn),
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Unary(_) => f.write_str("Unary(..)"),
            Call::Stream(shape, _) => f.debug_tuple("Stream").field(shape).finish(),
        }
    }
}

/// One endpoint and the function that serves it.
#[derive(Clone)]
pub struct Route {
    /// Its wire name, shared with every call's [`crate::Context`].
    pub name: Arc<str>,
    /// Its description, as registered.
    pub endpoint: Endpoint,
    /// What serves it.
    pub call: Call,
}

impl Route {
    /// Which sides of this endpoint stream.
    pub fn shape(&self) -> Shape {
        match &self.call {
            Call::Unary(_) => Shape::Unary,
            Call::Stream(shape, _) => *shape,
        }
    }

    fn streaming(def: EndpointDef, shape: Shape, f: StreamFn) -> Route {
        let mut endpoint = def.endpoint();
        endpoint
            .metadata
            .insert("stream".into(), shape.as_str().into());
        Route {
            name: def.name.into(),
            endpoint,
            call: Call::Stream(shape, f),
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("endpoint", &self.endpoint.name)
            .field("shape", &self.shape())
            .finish()
    }
}

/// Something a service can serve: it lists its routes once, at start-up.
pub trait Handler: Send + Sync + 'static {
    /// The routes of this handler.
    fn routes(self: Arc<Self>) -> Vec<Route>;
}

/// The static description of an endpoint, as the macros write it.
#[derive(Debug, Clone, Copy)]
pub struct EndpointDef {
    /// The wire name, e.g. `Greeter.Hello`.
    pub name: &'static str,
    /// The request type as written (or the argument list for several arguments).
    pub request: &'static str,
    /// The response type as written.
    pub response: &'static str,
    /// The method's doc comment.
    pub doc: &'static str,
}

impl EndpointDef {
    /// The registry description of this endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            name: self.name.to_owned(),
            request: self.request.to_owned(),
            response: self.response.to_owned(),
            doc: self.doc.to_owned(),
            metadata: Default::default(),
        }
    }
}

/// Builds the route of a unary endpoint: decode `A`, call `f`, encode `R`.
pub fn unary<T, A, R, F, Fut>(def: EndpointDef, this: Arc<T>, f: F) -> Route
where
    T: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Arc<T>, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
{
    let f = Arc::new(f);
    let call: UnaryFn = Arc::new(move |req: Request| {
        let this = Arc::clone(&this);
        let f = Arc::clone(&f);
        Box::pin(async move {
            let args: A = req.content_type.decode(&req.body)?;
            let reply = f(this, args).await?;
            Reply::encode(req.content_type, &reply)
        })
    });
    Route {
        name: def.name.into(),
        endpoint: def.endpoint(),
        call: Call::Unary(call),
    }
}

/// Builds the route of a server-streaming endpoint: decode `A`, call `f`,
/// encode each item of the stream it returns.
pub fn server_streaming<T, A, R, F, Fut>(def: EndpointDef, this: Arc<T>, f: F) -> Route
where
    T: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Arc<T>, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Streaming<R>>> + Send + 'static,
{
    let f = Arc::new(f);
    let call: StreamFn = Arc::new(move |req: StreamRequest| {
        let this = Arc::clone(&this);
        let f = Arc::clone(&f);
        Box::pin(async move {
            let args: A = req.content_type.decode(&req.body)?;
            let items = f(this, args).await?;
            Ok(StreamReply::Stream(stream::encode(items, req.content_type)))
        })
    });
    Route::streaming(def, Shape::ServerStream, call)
}

/// Builds the route of a client-streaming endpoint: decode each item into
/// `A` as the handler reads it, encode the one reply `R`.
pub fn client_streaming<T, A, R, F, Fut>(def: EndpointDef, this: Arc<T>, f: F) -> Route
where
    T: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Arc<T>, Streaming<A>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
{
    let f = Arc::new(f);
    let call: StreamFn = Arc::new(move |req: StreamRequest| {
        let this = Arc::clone(&this);
        let f = Arc::clone(&f);
        Box::pin(async move {
            let ct = req.content_type;
            let reply = f(this, Streaming::decode(req.inbound, ct)).await?;
            Ok(StreamReply::Unary(Reply::encode(ct, &reply)?))
        })
    });
    Route::streaming(def, Shape::ClientStream, call)
}

/// Builds the route of a bidirectional endpoint: items in decoded into `A`,
/// items out encoded from `R`.
pub fn bidi_streaming<T, A, R, F, Fut>(def: EndpointDef, this: Arc<T>, f: F) -> Route
where
    T: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Arc<T>, Streaming<A>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Streaming<R>>> + Send + 'static,
{
    let f = Arc::new(f);
    let call: StreamFn = Arc::new(move |req: StreamRequest| {
        let this = Arc::clone(&this);
        let f = Arc::clone(&f);
        Box::pin(async move {
            let ct = req.content_type;
            let items = f(this, Streaming::decode(req.inbound, ct)).await?;
            Ok(StreamReply::Stream(stream::encode(items, ct)))
        })
    });
    Route::streaming(def, Shape::Bidi, call)
}
