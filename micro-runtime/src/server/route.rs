//! What a handler hands the server: a table of routes, one per endpoint.
//!
//! The `#[service]` and `#[handler]` macros generate an implementation of
//! [`Handler`]; hand-written ones work the same way.

use crate::codec::ContentType;
use crate::error::Result;
use crate::registry::Endpoint;
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

/// One endpoint and the function that serves it.
#[derive(Clone)]
pub struct Route {
    /// Its wire name, shared with every call's [`crate::Context`].
    pub name: Arc<str>,
    /// Its description, as registered.
    pub endpoint: Endpoint,
    /// What serves it.
    pub call: UnaryFn,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("endpoint", &self.endpoint.name)
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
        call,
    }
}
