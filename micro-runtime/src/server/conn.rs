//! One server-side connection: sniff, read frames, run handlers, write replies.

use super::{Reply, Request, Shared};
use crate::codec::ContentType;
use crate::context::{Context, TraceId};
use crate::error::{Error, Result};
use crate::transport::frame::{self, flags, Kind, ProtocolError, PREFACE};
use crate::transport::{preview, spawn_writer, FrameReader, FrameSender, ReadError};
use bytes::Bytes;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

/// How long a new connection may take to send its first bytes.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Abort handles of the calls running on one connection, by stream id. Owned
/// by the connection's reader alone (no lock on the hot path); entries of
/// finished calls are pruned as the map grows.
#[derive(Default)]
struct InFlight {
    calls: HashMap<u32, AbortHandle>,
    prune_at: usize,
}

impl InFlight {
    const MIN_PRUNE: usize = 64;

    fn insert(&mut self, id: u32, handle: AbortHandle) {
        if self.calls.len() >= self.prune_at.max(Self::MIN_PRUNE) {
            self.calls.retain(|_, h| !h.is_finished());
            self.prune_at = self.calls.len() * 2;
        }
        self.calls.insert(id, handle);
    }

    fn cancel(&mut self, id: u32) {
        if let Some(h) = self.calls.remove(&id) {
            h.abort();
        }
    }

    fn cancel_all(&mut self) {
        for (_, h) in self.calls.drain() {
            h.abort();
        }
    }
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = serve_native(&shared, stream).await {
        tracing::debug!(%peer, error = %e, "connection closed on protocol error");
    }
    shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_native(
    shared: &Arc<Shared>,
    stream: TcpStream,
) -> std::result::Result<(), ProtocolError> {
    let (r, mut w) = stream.into_split();
    let mut r = FrameReader::new(r, shared.max_frame);
    match tokio::time::timeout(PREFACE_TIMEOUT, sniff(&mut r)).await {
        Ok(Ok(Sniff::Native)) => {}
        Ok(Ok(Sniff::Other)) => {
            let err = ProtocolError::BadPreface {
                got: preview(r.buffered()),
            };
            let _ = w.write_all(&frame::goaway(0, &err.to_error())).await;
            let _ = w.shutdown().await;
            return Err(err);
        }
        // Closed, failed or silent before a whole preface: nothing to answer.
        _ => return Ok(()),
    }

    // Other calls still running will have replies to send soon.
    let tracker = shared.tracker.clone();
    let (tx, writer) = spawn_writer(w, move || !tracker.is_empty());
    let conn = Arc::new(Conn {
        shared: Arc::clone(shared),
        tx,
    });
    let mut in_flight = InFlight::default();
    let result = read_loop(&conn, &mut r, &mut in_flight).await;
    // Whatever still runs has no one left to answer to.
    in_flight.cancel_all();
    if let Err(e) = &result {
        let _ = conn.tx.send(frame::goaway(0, &e.to_error()));
    }
    // The writer ends once the last call holding the connection is gone.
    drop(conn);
    let _ = writer.await;
    result
}

/// What the calls of one connection share: one reference each instead of two.
struct Conn {
    shared: Arc<Shared>,
    tx: FrameSender,
}

/// What the first bytes of a connection say it speaks.
enum Sniff {
    /// The native preface (now consumed).
    Native,
    /// Anything else.
    Other,
    /// The peer closed before sending a whole preface.
    Closed,
}

/// Reads until the preface is complete or cannot match any more, so garbage is
/// answered at once.
async fn sniff(r: &mut FrameReader<OwnedReadHalf>) -> std::io::Result<Sniff> {
    loop {
        let seen = r.buffered();
        let n = seen.len().min(PREFACE.len());
        if seen[..n] != PREFACE[..n] {
            return Ok(Sniff::Other);
        }
        if n == PREFACE.len() {
            r.consume(n);
            return Ok(Sniff::Native);
        }
        if r.read_more().await? == 0 {
            return Ok(if r.buffered().is_empty() {
                Sniff::Closed
            } else {
                Sniff::Other
            });
        }
    }
}

async fn read_loop(
    conn: &Arc<Conn>,
    r: &mut FrameReader<OwnedReadHalf>,
    in_flight: &mut InFlight,
) -> std::result::Result<(), ProtocolError> {
    let (shared, tx) = (&conn.shared, &conn.tx);
    let mut last_stream = 0u32;
    let mut draining = false;
    // Made once: a fresh `cancelled()` per frame would register and drop a waiter each time.
    let drain_signal = shared.draining.cancelled();
    let close_signal = shared.closed.cancelled();
    tokio::pin!(drain_signal, close_signal);
    loop {
        let f = tokio::select! {
            biased;
            f = r.next() => f,
            _ = &mut drain_signal, if !draining => {
                draining = true;
                let reason = Error::unavailable(shared.service.as_str(), "server shutting down");
                let _ = tx.send(frame::goaway(last_stream, &reason));
                continue;
            }
            _ = &mut close_signal => return Ok(()),
        };
        let f = match f {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(_)) => return Ok(()),
            Err(ReadError::Protocol(e)) => return Err(e),
        };
        match f.kind {
            Kind::Request => {
                if f.stream == 0 || f.stream <= last_stream {
                    return Err(ProtocolError::BadStream(f.stream));
                }
                last_stream = f.stream;
                if draining {
                    let e = Error::unavailable(shared.service.as_str(), "server shutting down");
                    let _ = tx.send(error_frame(f.stream, &e, flags::REFUSED));
                    continue;
                }
                let task = spawn_call(conn, f.stream, f.payload);
                in_flight.insert(f.stream, task);
            }
            Kind::Cancel => {
                in_flight.cancel(f.stream);
            }
            Kind::Ping if f.flags & flags::ACK == 0 => {
                let _ = tx.send(frame::frame(Kind::Ping, flags::ACK, 0, &[&f.payload]));
            }
            Kind::Ping | Kind::Credit | Kind::Data => {}
            Kind::Response | Kind::GoAway => {
                return Err(ProtocolError::Malformed(
                    "frame kind only a server may send",
                ));
            }
        }
    }
}

fn error_frame(stream: u32, e: &Error, extra: u8) -> Vec<u8> {
    frame::frame(
        Kind::Response,
        flags::END_STREAM | flags::ERROR | extra,
        stream,
        &[&frame::encode_error(e)],
    )
}

/// Runs `fut` until `deadline`; `None` if the deadline came first (and `fut`
/// is dropped, which cancels it). Unlike `tokio::time::timeout_at`, the timer
/// is only made once `fut` has to wait, so calls answered at once cost none.
async fn until_deadline<F: Future>(fut: F, deadline: tokio::time::Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Runs a call on its own task; the reply goes to the connection's writer.
fn spawn_call(conn: &Arc<Conn>, id: u32, payload: Bytes) -> AbortHandle {
    let task_conn = Arc::clone(conn);
    conn.shared
        .counters
        .requests
        .fetch_add(1, Ordering::Relaxed);
    let task = conn.shared.tracker.spawn(async move {
        let shared = &task_conn.shared;
        let reply = match dispatch(shared, &payload).await {
            Ok(reply) => reply.into_frame(Kind::Response, flags::END_STREAM, id),
            Err(e) => {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                error_frame(id, &e, 0)
            }
        };
        let _ = task_conn.tx.send(reply);
    });
    task.abort_handle()
}

/// Runs one request to its reply: head decoding, route lookup, body
/// decoding, the handler under its context and deadline, panics turned into
/// internal errors.
async fn dispatch(shared: &Shared, payload: &Bytes) -> Result<Reply> {
    let service = shared.service.as_str();
    // A head that does not decode spoils only this call: the framing is intact.
    let (head, body) = frame::parse_request(payload)
        .map_err(|e| Error::bad_request(service, format!("protocol error: {e}")))?;
    if !head.service.is_empty() && head.service != service {
        return Err(Error::not_found(
            service,
            format!(
                "service `{}` is not served here (this node serves `{service}`)",
                head.service
            ),
        ));
    }
    let Some(route) = shared.routes.get(head.endpoint) else {
        let mut known: Vec<&str> = shared.routes.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(Error::not_found(
            service,
            format!(
                "unknown endpoint `{}` on service `{service}`; it serves: {}",
                head.endpoint,
                known.join(", ")
            ),
        ));
    };
    let content_type: ContentType = head.content_type.parse()?;
    let deadline = (head.timeout_us > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_micros(head.timeout_us));
    let ctx = Context::new(
        deadline.map(|d| d.into_std()),
        head.metadata.into_owned(),
        Arc::clone(&route.name),
        TraceId(head.trace_id),
    );
    let call =
        AssertUnwindSafe(ctx.scope((route.call)(Request { content_type, body }))).catch_unwind();
    let outcome = match deadline {
        Some(d) => until_deadline(call, d).await.ok_or_else(|| {
            Error::timeout(
                service,
                format!("{} did not finish within the caller's deadline", route.name),
            )
        })?,
        None => call.await,
    };
    outcome.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(endpoint = %route.name, panic = %msg, "handler panicked");
        Err(Error::internal(
            service,
            format!("handler of {} panicked: {msg}", route.name),
        ))
    })
}
