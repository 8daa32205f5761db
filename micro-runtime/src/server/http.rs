//! HTTP/JSON and WebSocket on the service's own port.
//!
//! The connection sniffer (`conn.rs`) hands over every connection whose first
//! byte is an ASCII uppercase letter (an HTTP method). It is served as
//! HTTP/1.1 by hyper, with keep-alive; every call goes through the same
//! dispatch path as a native call (`Shared::route`, `run_unary`,
//! `open_stream`), always in JSON, and counts in `Debug.Stats` like one.
//!
//! # HTTP
//!
//! - `GET /` (or `HEAD /`): `200`, the JSON listing
//!   `{"service": NAME, "endpoints": [{"name", "request", "response", "doc",
//!   "stream"}, ...]}` sorted by name, where `stream` is `unary`, `server`,
//!   `client` or `bidi`. Any other method on `/` is a `405` with
//!   `Allow: GET, HEAD`.
//! - `POST /{Endpoint}` (e.g. `/Greeter.Hello`), body = the JSON argument (an
//!   empty body is `null`, i.e. `()`):
//!   - unary endpoint: `200`, `content-type: application/json`, the JSON reply;
//!   - server-streaming endpoint: `200`, `content-type: application/x-ndjson`,
//!     chunked, one JSON item per line as the items come; an error after the
//!     stream started ends it with the line
//!     `{"error":{"id","code","detail","status"}}` (an error before it started
//!     is a plain HTTP error, below);
//!   - client-streaming and bidirectional endpoints: `400` (open them as a
//!     WebSocket).
//! - Every error is a JSON micro error `{"id","code","detail","status"}` with
//!   `content-type: application/json` and the HTTP status equal to its `code`
//!   (`500` when the code is outside `400..=599`):
//!   - `404`: unknown endpoint (the detail lists the endpoints);
//!   - `405` with `Allow: POST`: another method on an endpoint path (except a
//!     WebSocket `GET`, below);
//!   - `415`: a `content-type` that is not JSON. Accepted: none,
//!     `application/json`, `text/json`, `application/*+json`, and
//!     `application/x-www-form-urlencoded` (what `curl -d` sends unasked); the
//!     body is always parsed as JSON;
//!   - `413`: a body over the server's `max_frame` bytes (refused by its
//!     `Content-Length` before any of it is read; a chunked body is read up to
//!     the bound only; the connection is then closed, as the rest of the body
//!     is not read);
//!   - `400`: malformed JSON or wrong types (the codec's error), a bad
//!     `Micro-Timeout` or `Micro-Trace-Id`, a header value that is not UTF-8,
//!     `POST` on a client-streaming or bidirectional endpoint;
//!   - `408`: the `Micro-Timeout` deadline passed (the handler is dropped), or
//!     the body did not arrive within the stream idle timeout
//!     (`Service::stream_idle_timeout`, `MICRO_STREAM_IDLE_TIMEOUT`, 5 min by default);
//!   - `503`: the server is shutting down;
//!   - the handler's own errors with their codes.
//!
//!   The connection goes on serving after any of these (except `413`, see
//!   above, and a request head hyper cannot parse, which hyper answers itself
//!   with an empty `400` and closes).
//! - Headers in: `Micro-Timeout` (`250ms`, `2s`, `1m`, a bare number of
//!   seconds; `0` means none) bounds a unary call like the native timeout,
//!   counted from the request's arrival; `Micro-Trace-Id` (1 to 32 hex
//!   digits) sets the call's trace id (absent or zero: a random one). Every
//!   other header becomes a metadata entry of the call's [`Context`], keyed by
//!   the header name **in lower case** (HTTP names are case-insensitive and
//!   hyper lowercases them), except these standard and hop-by-hop ones:
//!   `host`, `content-type`, `content-length`, `accept`, `accept-encoding`,
//!   `user-agent`, `connection`, `upgrade`, `transfer-encoding`, `te`,
//!   `trailer`, `keep-alive`, `expect`, `origin`, `proxy-*`,
//!   `sec-websocket-*`. A header sent several times is joined with `, `.
//! - Headers out: every answer on an endpoint path (the WebSocket `101` too)
//!   carries `Micro-Trace-Id` (32 hex digits) unless the caller's was invalid.
//! - A client that goes away cancels its call (the handler is dropped).
//! - A connection idle for 30 s between requests, or slower than that to send
//!   a request head, is closed. On shutdown idle connections are closed, busy
//!   ones after their current answer, and new calls get `503`.
//!
//! # WebSocket
//!
//! `GET /{Endpoint}` with `Upgrade: websocket` opens the endpoint as a stream
//! (any shape). The handshake's headers give metadata and trace id as above;
//! `Micro-Timeout` bounds unary calls only, counted from the handshake
//! (streams have no deadline, as natively; idle timeouts apply instead). Every
//! item, each way, is one **text** message holding one JSON value.
//!
//! - Client and bidirectional streaming: the client's text messages are the
//!   inbound items. An **empty text message** ends the inbound stream (the
//!   WebSocket form of a half-close: a close frame cannot be used, since after
//!   one the server may send nothing more); later non-empty messages are a
//!   `400`. A client-streaming endpoint then answers with one text message.
//! - Unary and server streaming: the client's first text message is the
//!   request argument (empty = `null`); it may then send only empty messages
//!   (ignored), another one is a `400`. Unary answers with one text message.
//! - The server's items are text messages, sent one at a time; the end of its
//!   stream (or its one reply) is followed by a close frame with code `1000`.
//! - An error is a final text message holding the error object
//!   `{"id","code","detail","status"}`, then a close frame with code
//!   `4000 + code` (e.g. `4400`, `4404`, `4500`; `4500` when the code is
//!   outside `400..=599`) and the error's status text as its reason. Errors:
//!   any at open (unknown endpoint `404`, bad `Micro-Timeout` or
//!   `Micro-Trace-Id` `400`, shutting down `503`), the handler's (at open or
//!   mid-stream), an inbound item that is not valid JSON (`400`; an item of
//!   the wrong type is the handler's decode error, `400` too), a binary
//!   message (`415`), a message over `max_frame` bytes (`413`), invalid
//!   UTF-8 or a protocol violation (`400`), no request message within the
//!   idle timeout, or the handler taking no item for that long while the
//!   client waits to send one (`408`), the server closing (`503`).
//! - The client's close frame is answered with the same close frame and
//!   cancels the handler, as does a dropped connection (noticed when the
//!   server next reads or writes; reading pauses while the handler is behind,
//!   see below).
//! - Flow control: the socket is read at most [`WINDOW`](crate::stream::WINDOW)
//!   bytes ahead of what the handler consumed (plus the one message being
//!   read), so a slow handler slows the client through TCP; outgoing items are
//!   written one at a time, each once the previous one is written.
//! - A handshake the upgrade cannot accept (e.g. no `Sec-WebSocket-Key`) is
//!   answered with a plain HTTP JSON error (`400`).
//! - Idle timeout: the stream idle timeout bounds the wait for the
//!   request message (unary, server streaming) and, inside the handler, for
//!   the next inbound item (the handler sees a `408` item error).

mod ws;

use super::{Request, Shape, Shared, StreamReply, StreamRequest};
use crate::codec::ContentType;
use crate::context::{Context, Metadata, TraceId, TRACE_ID_KEY};
use crate::error::{Error, Result};
use crate::stream::{Inbound, Msg, Outbound, StreamExt};
use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{request::Parts, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::convert::Infallible;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a request head may take to arrive, including the wait between
/// requests on a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline header (also accepted in any case).
const TIMEOUT_HEADER: &str = "micro-timeout";
/// How NDJSON answers are labelled.
const NDJSON: &str = "application/x-ndjson";

/// Serves one HTTP/1 connection whose first bytes (`prefix`) were already read.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, prefix: Bytes) {
    // WebSocket sessions upgraded from this connection hold a clone of
    // `alive`, so the connection counts as open until the last one ends.
    let (alive, mut sessions_gone) = mpsc::channel::<()>(1);
    {
        let service = {
            let shared = Arc::clone(&shared);
            hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let alive = alive.clone();
                async move { Ok::<_, Infallible>(handle(shared, req, alive).await) }
            })
        };
        let io = TokioIo::new(Prefixed {
            prefix,
            inner: stream,
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                    break;
                }
                () = shared.draining.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = shared.closed.cancelled() => break,
            }
        }
    }
    // Every sender is gone once the sessions (which end on `closed`) are.
    let _ = sessions_gone.recv().await;
}

/// The socket, with the bytes the sniffer already read replayed first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Answers one request.
async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<Incoming>,
    alive: mpsc::Sender<()>,
) -> Response {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/" {
        return listing(&shared, &parts.method);
    }
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let trace = trace_id(&shared, &parts.headers);
    let mut response = match &trace {
        // Header errors of a WebSocket are answered in the session.
        _ if parts.method == Method::GET && is_websocket(&parts.headers) => {
            ws::upgrade(Arc::clone(&shared), parts, trace.clone(), alive).await
        }
        Err(e) => error_response(e),
        Ok(trace) => call(&shared, &parts, body, *trace)
            .await
            .unwrap_or_else(|e| error_response(&e)),
    };
    if response.status().is_client_error() || response.status().is_server_error() {
        shared.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(trace) = trace {
        if let Ok(v) = HeaderValue::from_str(&trace.to_string()) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("micro-trace-id"), v);
        }
    }
    response
}

/// One call by `POST /{Endpoint}`.
async fn call(
    shared: &Arc<Shared>,
    parts: &Parts,
    body: Incoming,
    trace: TraceId,
) -> Result<Response> {
    let service = shared.service.as_str();
    let route = shared.route("", endpoint_of(&parts.uri))?;
    if parts.method != Method::POST {
        let e = Error::method_not_allowed(
            service,
            format!(
                "{} takes POST (or GET with `Upgrade: websocket` to open it as a WebSocket), not {}",
                route.name, parts.method
            ),
        );
        let mut response = error_response(&e);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    check_content_type(&parts.headers)?;
    if shared.draining.is_cancelled() {
        return Err(Error::unavailable(service, "server shutting down"));
    }
    let call = CallInfo::from_headers(shared, &parts.headers, trace)?;
    let shape = route.shape();
    if shape.streams_in() {
        return Err(Error::bad_request(
            service,
            format!(
                "{} is a {} endpoint: open it as a WebSocket (GET with `Upgrade: websocket`), \
                 one JSON text message per item",
                route.name,
                if shape == Shape::Bidi {
                    "bidirectional streaming"
                } else {
                    "client-streaming"
                }
            ),
        ));
    }
    let body = read_body(shared, &parts.headers, body).await?;
    let mut running = spawn_handler(shared, &route.name, shape, call, body, None);
    match running.next().await {
        Some(Out::Item(reply)) if shape == Shape::Unary => Ok(json_response(StatusCode::OK, reply)),
        Some(Out::Fail(e)) => Err(e),
        Some(Out::Open) => Ok(ndjson_response(Arc::clone(shared), running, None)),
        Some(Out::Item(reply)) => Ok(ndjson_response(Arc::clone(shared), running, Some(reply))),
        Some(Out::End) | None => Err(ended_silently(service)),
    }
}

/// What the caller said about the call, besides its body.
#[derive(Debug)]
struct CallInfo {
    metadata: Metadata,
    deadline: Option<tokio::time::Instant>,
    trace: TraceId,
}

impl CallInfo {
    fn from_headers(shared: &Shared, headers: &HeaderMap, trace: TraceId) -> Result<Self> {
        Ok(Self {
            metadata: metadata(shared, headers)?,
            deadline: deadline(shared, headers)?,
            trace,
        })
    }
}

/// The endpoint named by a path: everything after the leading `/`.
fn endpoint_of(uri: &axum::http::Uri) -> &str {
    let path = uri.path();
    path.strip_prefix('/').unwrap_or(path)
}

/// Whether a request asks for a WebSocket.
fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// Refuses bodies that say they are not JSON.
fn check_content_type(headers: &HeaderMap) -> Result<()> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let unsupported = |got: &str| {
        Error::unsupported_media_type(
            "micro.codec",
            format!("unsupported content type `{got}`: HTTP bodies are JSON (application/json)"),
        )
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported(&String::from_utf8_lossy(value.as_bytes())))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence.is_empty()
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
        || matches!(essence.parse::<ContentType>(), Ok(ContentType::Json));
    if json {
        Ok(())
    } else {
        Err(unsupported(text))
    }
}

/// Whether a request header is the transport's, not the call's metadata.
fn is_transport_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-type"
            | "content-length"
            | "accept"
            | "accept-encoding"
            | "user-agent"
            | "connection"
            | "upgrade"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "keep-alive"
            | "expect"
            | "origin"
            | TIMEOUT_HEADER
            | "micro-trace-id"
    ) || name.starts_with("proxy-")
        || name.starts_with("sec-websocket-")
}

/// The call's metadata: every header that is not the transport's.
fn metadata(shared: &Shared, headers: &HeaderMap) -> Result<Metadata> {
    let mut metadata = Metadata::new();
    for (name, value) in headers {
        let name = name.as_str();
        if is_transport_header(name) {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
            Error::bad_request(
                shared.service.as_str(),
                format!("header `{name}` is not UTF-8"),
            )
        })?;
        metadata
            .entry(name.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    Ok(metadata)
}

/// The deadline `Micro-Timeout` sets, if any.
fn deadline(shared: &Shared, headers: &HeaderMap) -> Result<Option<tokio::time::Instant>> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let bad =
        |why: String| Error::bad_request(shared.service.as_str(), format!("Micro-Timeout: {why}"));
    let text = value
        .to_str()
        .map_err(|_| bad("not a duration".into()))?
        .trim();
    let timeout = crate::env::parse_duration(text).map_err(bad)?;
    if timeout.is_zero() {
        return Ok(None);
    }
    tokio::time::Instant::now()
        .checked_add(timeout)
        .map(Some)
        .ok_or_else(|| bad(format!("`{text}` is too long a duration")))
}

/// The trace id `Micro-Trace-Id` sets, or a fresh one.
fn trace_id(shared: &Shared, headers: &HeaderMap) -> Result<TraceId> {
    let Some(value) = headers.get(TRACE_ID_KEY) else {
        return Ok(TraceId::random());
    };
    let trace = value
        .to_str()
        .map_err(|_| "not ASCII".to_owned())
        .and_then(str::parse::<TraceId>)
        .map_err(|e| Error::bad_request(shared.service.as_str(), format!("{TRACE_ID_KEY}: {e}")))?;
    Ok(if trace.is_none() {
        TraceId::random()
    } else {
        trace
    })
}

/// The whole body, at most `max_frame` bytes of it.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Incoming) -> Result<Bytes> {
    let limit = shared.max_frame;
    let too_large = |len: Option<u64>| {
        Error::payload_too_large(
            shared.service.as_str(),
            match len {
                Some(len) => {
                    format!("request body of {len} bytes is over the limit of {limit} bytes")
                }
                None => format!("request body is over the limit of {limit} bytes"),
            },
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit as u64 {
            return Err(too_large(Some(len)));
        }
    }
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(shared.idle_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(None)),
        Ok(Err(e)) => Err(Error::bad_request(
            shared.service.as_str(),
            format!("could not read the request body: {e}"),
        )),
        Err(_) => Err(Error::timeout(
            shared.service.as_str(),
            format!(
                "the request body did not arrive within the idle timeout of {:?}",
                shared.idle_timeout
            ),
        )),
    }
}

/// `GET /`: what this service serves.
fn listing(shared: &Shared, method: &Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let e = Error::method_not_allowed(
            shared.service.as_str(),
            format!("`/` lists the endpoints with GET, not {method}; call an endpoint with POST /{{Endpoint}}"),
        );
        let mut response = error_response(&e);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }

    #[derive(Serialize)]
    struct Listing<'a> {
        service: &'a str,
        endpoints: Vec<EndpointInfo<'a>>,
    }
    #[derive(Serialize)]
    struct EndpointInfo<'a> {
        name: &'a str,
        request: &'a str,
        response: &'a str,
        doc: &'a str,
        stream: &'static str,
    }

    let mut endpoints: Vec<EndpointInfo<'_>> = shared
        .routes
        .values()
        .map(|r| EndpointInfo {
            name: &r.endpoint.name,
            request: &r.endpoint.request,
            response: &r.endpoint.response,
            doc: &r.endpoint.doc,
            stream: r.shape().as_str(),
        })
        .collect();
    endpoints.sort_by(|a, b| a.name.cmp(b.name));
    let listing = Listing {
        service: &shared.service,
        endpoints,
    };
    match serde_json::to_vec(&listing) {
        Ok(body) => json_response(StatusCode::OK, body.into()),
        Err(e) => error_response(&Error::internal(
            shared.service.as_str(),
            format!("json encode: {e}"),
        )),
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error as its JSON body, with the HTTP status of its code.
pub(super) fn error_response(e: &Error) -> Response {
    json_response(http_status(e.code), error_json(e))
}

/// The HTTP status of an error code: the code itself when it is an error status.
fn http_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `{"id","code","detail","status"}`.
fn error_json(e: &Error) -> Bytes {
    // Four plain fields: encoding cannot fail.
    serde_json::to_vec(e).unwrap_or_default().into()
}

fn ended_silently(service: &str) -> Error {
    Error::internal(service, "the handler ended without an answer")
}

/// A server-streaming answer: one JSON item per line as they come (after
/// `first`, if the handler already gave one), then, if the stream fails, an
/// `{"error":...}` line.
fn ndjson_response(shared: Arc<Shared>, running: Running, first: Option<Bytes>) -> Response {
    let state = (Some(running), first);
    let lines = futures_util::stream::unfold(state, move |(running, first)| {
        let shared = Arc::clone(&shared);
        async move {
            if let Some(item) = first {
                return Some((Ok::<_, Infallible>(line(&item)), (running, None)));
            }
            let mut running = running?;
            loop {
                match running.next().await? {
                    Out::Item(item) => return Some((Ok(line(&item)), (Some(running), None))),
                    Out::Open => continue,
                    Out::End => return None,
                    Out::Fail(e) => {
                        shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return Some((Ok(error_line(&e)), (None, None)));
                    }
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(lines));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

fn line(item: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(item.len() + 1);
    line.extend_from_slice(item);
    line.push(b'\n');
    line.into()
}

fn error_line(e: &Error) -> Bytes {
    #[derive(Serialize)]
    struct Failed<'a> {
        error: &'a Error,
    }
    line(&serde_json::to_vec(&Failed { error: e }).unwrap_or_default())
}

/// What a running handler hands to its transport, in order: `Open` (streams
/// only, once the handler accepted the call), then items, then `End` or
/// `Fail`.
#[derive(Debug)]
enum Out {
    Open,
    Item(Bytes),
    End,
    Fail(Error),
}

/// A handler running on the server's tracker; dropping this cancels it.
#[derive(Debug)]
struct Running {
    _task: AbortOnDrop,
    rx: mpsc::Receiver<Out>,
}

impl Running {
    /// The handler's next output; `None` once it is gone.
    async fn next(&mut self) -> Option<Out> {
        self.rx.recv().await
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs endpoint `name` on the server's tracker (so shutdown waits for it):
/// a unary call with `body`, or a stream with `body` as its argument and
/// `inbound` as the caller's items (already ended when `None`). Its output
/// comes one item at a time through the returned [`Running`]: the handler
/// waits while its last item is not taken.
fn spawn_handler(
    shared: &Arc<Shared>,
    name: &Arc<str>,
    shape: Shape,
    call: CallInfo,
    body: Bytes,
    inbound: Option<Inbound>,
) -> Running {
    let (tx, rx) = mpsc::channel(1);
    let task_shared = Arc::clone(shared);
    let name = Arc::clone(name);
    let task = shared.tracker.spawn(async move {
        let last = match produce(&task_shared, name, shape, call, body, inbound, &tx).await {
            Ok(()) => Out::End,
            Err(e) => Out::Fail(e),
        };
        let _ = tx.send(last).await;
    });
    Running {
        _task: AbortOnDrop(task),
        rx,
    }
}

async fn produce(
    shared: &Shared,
    name: Arc<str>,
    shape: Shape,
    call: CallInfo,
    body: Bytes,
    inbound: Option<Inbound>,
    tx: &mpsc::Sender<Out>,
) -> Result<()> {
    let route = shared.route("", &name)?;
    let send = |item: &[u8]| tx.send(Out::Item(Bytes::copy_from_slice(item)));
    if shape == Shape::Unary {
        let ctx = Context::new(
            call.deadline.map(|d| d.into_std()),
            call.metadata,
            name,
            call.trace,
        );
        let request = Request {
            content_type: ContentType::Json,
            body,
        };
        let reply = shared.run_unary(route, ctx, request, call.deadline).await?;
        let _ = send(reply.body()).await;
        return Ok(());
    }
    // Streams have no deadline; the idle timeout bounds them instead.
    let ctx = Context::new(None, call.metadata, name, call.trace);
    let request = StreamRequest {
        content_type: ContentType::Json,
        body,
        inbound: inbound.unwrap_or_else(|| ended(shared)),
    };
    let out: Outbound = match shared.open_stream(route, ctx.clone(), request).await? {
        StreamReply::Unary(reply) => {
            let _ = send(reply.body()).await;
            return Ok(());
        }
        StreamReply::Stream(out) => out,
    };
    if tx.send(Out::Open).await.is_err() {
        return Ok(());
    }
    ctx.scope(forward(shared, out, tx)).await
}

/// Hands the items of `out` over one at a time; stops when nobody takes them.
async fn forward(shared: &Shared, mut out: Outbound, tx: &mpsc::Sender<Out>) -> Result<()> {
    loop {
        let next = tokio::select! {
            next = AssertUnwindSafe(out.next()).catch_unwind() => next,
            () = tx.closed() => return Ok(()),
        };
        match next {
            Ok(Some(Ok(reply))) => {
                let item = Bytes::copy_from_slice(reply.body());
                if tx.send(Out::Item(item)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Ok(()),
            Err(_) => {
                return Err(Error::internal(
                    shared.service.as_str(),
                    "the stream panicked while producing its next item",
                ))
            }
        }
    }
}

/// An inbound stream that has already ended (unary and server streaming).
fn ended(shared: &Shared) -> Inbound {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Msg::End);
    Inbound::new(rx, shared.idle_timeout, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_replays_the_prefix_then_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"world").await.unwrap();
            let mut echo = Vec::new();
            s.read_to_end(&mut echo).await.unwrap();
            echo
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut io = Prefixed {
            prefix: Bytes::from_static(b"hello "),
            inner: socket,
        };
        let mut small = [0u8; 4];
        io.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hell");
        let mut rest = [0u8; 7];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"o world");
        io.write_all(b"ok").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(client.await.unwrap(), b"ok");
    }

    #[test]
    fn content_types() {
        let check = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            check_content_type(&h).map_err(|e| e.code)
        };
        assert_eq!(check_content_type(&HeaderMap::new()), Ok(()));
        assert_eq!(check("application/json"), Ok(()));
        assert_eq!(check("application/json; charset=utf-8"), Ok(()));
        assert_eq!(check("application/problem+json"), Ok(()));
        assert_eq!(check("application/x-www-form-urlencoded"), Ok(()));
        assert_eq!(check("text/plain"), Err(415));
        assert_eq!(check("application/msgpack"), Err(415));
    }

    #[test]
    fn statuses_and_transport_headers() {
        assert_eq!(http_status(404), StatusCode::NOT_FOUND);
        assert_eq!(http_status(503), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(200), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(http_status(42), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(http_status(700), StatusCode::INTERNAL_SERVER_ERROR);
        for h in [
            "host",
            "proxy-authorization",
            "sec-websocket-key",
            "micro-timeout",
        ] {
            assert!(is_transport_header(h), "{h}");
        }
        for h in ["authorization", "x-user", "cookie"] {
            assert!(!is_transport_header(h), "{h}");
        }
    }
}
