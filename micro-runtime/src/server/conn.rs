//! One server-side connection: sniff, read frames, run handlers, write replies.

use super::{Reply, Request, Shared, StreamReply, StreamRequest};
use crate::codec::ContentType;
use crate::context::{Context, TraceId};
use crate::error::{Error, Result};
use crate::stream::{self, Credit, Inbound, Receiving};
use crate::transport::frame::{self, flags, Kind, ProtocolError, PREFACE};
use crate::transport::{preview, spawn_writer, FrameReader, FrameSender, ReadError};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

/// How long a new connection may take to send its first bytes.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// The calls running on one connection, by stream id: their tasks' abort
/// handles and, for streams, the receiving half and the send window. Owned by
/// the connection's reader alone (no lock on the hot path); entries of
/// finished calls are pruned as the map grows.
#[derive(Default)]
struct InFlight {
    calls: HashMap<u32, Running>,
    prune_at: usize,
}

struct Running {
    task: AbortHandle,
    stream: Option<(Receiving, Arc<Credit>)>,
}

impl InFlight {
    const MIN_PRUNE: usize = 64;

    fn insert(&mut self, id: u32, running: Running) {
        if self.calls.len() >= self.prune_at.max(Self::MIN_PRUNE) {
            self.calls.retain(|_, r| !r.task.is_finished());
            self.prune_at = self.calls.len() * 2;
        }
        self.calls.insert(id, running);
    }

    fn stream(&self, id: u32) -> Option<&(Receiving, Arc<Credit>)> {
        self.calls.get(&id).and_then(|r| r.stream.as_ref())
    }

    fn cancel(&mut self, id: u32) {
        if let Some(r) = self.calls.remove(&id) {
            r.task.abort();
        }
    }

    fn cancel_all(&mut self) {
        for (_, r) in self.calls.drain() {
            r.task.abort();
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
        Ok(Ok(Sniff::Other)) if looks_like_http(r.buffered()) => {
            let (r, prefix) = r.into_parts();
            let stream = r.reunite(w).expect("halves of one stream");
            super::http::serve(Arc::clone(shared), stream, prefix.freeze()).await;
            return Ok(());
        }
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

/// Whether the first bytes start an HTTP/1 request line (a method token).
fn looks_like_http(seen: &[u8]) -> bool {
    seen.first().is_some_and(u8::is_ascii_uppercase)
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
                let running = if f.flags & flags::END_STREAM != 0 {
                    Running {
                        task: spawn_call(conn, f.stream, f.payload),
                        stream: None,
                    }
                } else {
                    spawn_stream(conn, f.stream, f.payload)
                };
                in_flight.insert(f.stream, running);
            }
            Kind::Data => {
                // Data of a stream that is gone (finished or cancelled) is dropped.
                if let Some((receiving, _)) = in_flight.stream(f.stream) {
                    receiving.data(f.flags, f.payload)?;
                }
            }
            Kind::Credit => {
                let grant = stream::parse_credit(&f.payload).ok_or(ProtocolError::Malformed(
                    "credit frame shorter than 4 bytes",
                ))?;
                if let Some((_, credit)) = in_flight.stream(f.stream) {
                    credit.grant(grant);
                }
            }
            Kind::Cancel => {
                in_flight.cancel(f.stream);
            }
            Kind::Ping if f.flags & flags::ACK == 0 => {
                let _ = tx.send(frame::frame(Kind::Ping, flags::ACK, 0, &[&f.payload]));
            }
            Kind::Ping => {}
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

/// Runs a streaming call on its own task: the handler gets the caller's
/// items as the reader delivers them, and its replies go out within the
/// caller's credit.
fn spawn_stream(conn: &Arc<Conn>, id: u32, payload: Bytes) -> Running {
    let shared = &conn.shared;
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (receiving, inbound) = Receiving::new(
        conn.tx.clone(),
        id,
        shared.idle_timeout,
        shared.max_frame,
        None,
    );
    let credit = Arc::new(Credit::new(stream::WINDOW));
    let task_conn = Arc::clone(conn);
    let task_credit = Arc::clone(&credit);
    let task = shared.tracker.spawn(async move {
        let (shared, tx) = (&task_conn.shared, &task_conn.tx);
        let (reply, ctx) = match open_stream(shared, &payload, inbound).await {
            Ok(opened) => opened,
            Err(e) => {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(error_frame(id, &e, 0));
                return;
            }
        };
        match reply {
            StreamReply::Unary(reply) => {
                let _ = tx.send(reply.into_frame(Kind::Response, flags::END_STREAM, id));
            }
            StreamReply::Stream(out) => {
                let _ = tx.send(frame::frame(Kind::Response, 0, id, &[]));
                let source = shared.service.as_str();
                ctx.scope(stream::pump(out, &task_credit, tx, id, source))
                    .await;
            }
        }
    });
    Running {
        task: task.abort_handle(),
        stream: Some((receiving, credit)),
    }
}

/// Opens one native streaming request: head decoding, then the shared path.
async fn open_stream(
    shared: &Shared,
    payload: &Bytes,
    inbound: Inbound,
) -> Result<(StreamReply, Context)> {
    let (head, body) = frame::parse_request(payload)
        .map_err(|e| Error::bad_request(shared.service.as_str(), format!("protocol error: {e}")))?;
    let route = shared.route(head.service, head.endpoint)?;
    let content_type: ContentType = head.content_type.parse()?;
    let ctx = Context::new(
        None,
        head.metadata.into_owned(),
        Arc::clone(&route.name),
        TraceId(head.trace_id),
    );
    let request = StreamRequest {
        content_type,
        body,
        inbound,
    };
    let reply = shared.open_stream(route, ctx.clone(), request).await?;
    Ok((reply, ctx))
}

/// Runs one native request to its reply: head decoding, then the shared
/// dispatch path.
async fn dispatch(shared: &Shared, payload: &Bytes) -> Result<Reply> {
    // A head that does not decode spoils only this call: the framing is intact.
    let (head, body) = frame::parse_request(payload)
        .map_err(|e| Error::bad_request(shared.service.as_str(), format!("protocol error: {e}")))?;
    let route = shared.route(head.service, head.endpoint)?;
    let content_type: ContentType = head.content_type.parse()?;
    let deadline = (head.timeout_us > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_micros(head.timeout_us));
    let ctx = Context::new(
        deadline.map(|d| d.into_std()),
        head.metadata.into_owned(),
        Arc::clone(&route.name),
        TraceId(head.trace_id),
    );
    shared
        .run_unary(route, ctx, Request { content_type, body }, deadline)
        .await
}
