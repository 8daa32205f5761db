//! One multiplexed client connection to a node.

use crate::error::Error;
use crate::stream::{self, Credit, Inbound, Receiving};
use crate::transport::frame::{self, flags, Kind, PREFACE};
use crate::transport::{spawn_writer, FrameReader, FrameSender, ReadError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

impl CallError {
    /// The error a stream already open ends with.
    pub(crate) fn into_error(self) -> Error {
        match self {
            CallError::Lost(why) => Error::unavailable("micro.client", why),
            CallError::Refused(e) => e,
            CallError::Timeout => Error::timeout("micro.client", "the stream timed out"),
        }
    }
}

/// How a call on a connection failed without an answer from the handler.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection broke (or was never usable) before a reply came. The
    /// request may or may not have run; the client retries it elsewhere.
    Lost(String),
    /// The server refused the request before doing any work (draining).
    Refused(Error),
    /// The deadline passed.
    Timeout,
}

type Reply = Result<Bytes, Error>;
type Waiter = oneshot::Sender<Result<Reply, CallError>>;

/// What waits on one stream id of a connection.
#[derive(Debug)]
enum Slot {
    /// A unary call: its reply.
    Call(Waiter),
    /// A stream: the opening reply (or the one reply of client streaming),
    /// then the server's items and credit.
    Stream {
        opened: Option<Waiter>,
        receiving: Receiving,
        credit: Arc<Credit>,
    },
}

impl Slot {
    /// The call cannot go on: tell whoever waits.
    fn fail(self, why: CallError) {
        match self {
            Slot::Call(w) => {
                let _ = w.send(Err(why));
            }
            Slot::Stream {
                opened,
                receiving,
                credit,
            } => {
                credit.close();
                match opened {
                    Some(w) => {
                        let _ = w.send(Err(why));
                    }
                    None => receiving.fail(why.into_error()),
                }
            }
        }
    }
}

/// The calls awaiting replies, with their count mirrored where the writer
/// can read it without the lock. Every change goes through here, so the
/// count cannot drift from the map.
#[derive(Debug)]
struct Pending {
    calls: HashMap<u32, Slot>,
    count: Arc<AtomicUsize>,
}

impl Pending {
    fn insert(&mut self, id: u32, slot: Slot) {
        self.calls.insert(id, slot);
        self.count.store(self.calls.len(), Ordering::Relaxed);
    }

    fn remove(&mut self, id: u32) -> Option<Slot> {
        let slot = self.calls.remove(&id);
        if let Some(Slot::Stream { credit, .. }) = &slot {
            credit.close();
        }
        self.count.store(self.calls.len(), Ordering::Relaxed);
        slot
    }

    /// Removes the calls whose id satisfies `which`.
    fn remove_where(&mut self, which: impl Fn(u32) -> bool) -> Vec<Slot> {
        let ids: Vec<u32> = self.calls.keys().copied().filter(|id| which(*id)).collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// A connection shared by every call to one address.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: FrameSender,
    pending: Mutex<Pending>,
    next_id: AtomicU32,
    /// Set when the connection broke or the server said go-away: no new calls.
    closed: AtomicBool,
    max_frame: usize,
}

impl Connection {
    /// Dials `addr`, sends the preface and starts the reader and writer tasks.
    pub(crate) async fn connect(
        addr: &str,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Self, CallError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| CallError::Lost(format!("connect to {addr} timed out")))?
            .map_err(|e| CallError::Lost(format!("connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        w.write_all(PREFACE)
            .await
            .map_err(|e| CallError::Lost(format!("write to {addr}: {e}")))?;
        // Other calls waiting for replies will send again soon.
        let waiting = Arc::new(AtomicUsize::new(0));
        let busy = Arc::clone(&waiting);
        let (tx, _writer) = spawn_writer(w, move || busy.load(Ordering::Relaxed) > 1);
        let inner = Arc::new(Inner {
            tx,
            pending: Mutex::new(Pending {
                calls: HashMap::new(),
                count: waiting,
            }),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            max_frame,
        });
        tokio::spawn(read_loop(
            Arc::clone(&inner),
            FrameReader::new(r, max_frame),
            addr.to_owned(),
        ));
        Ok(Self { inner })
    }

    /// Whether new calls may use this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
    }

    /// Makes one unary call: sends the request and waits for its reply until `deadline`.
    pub(crate) async fn call(
        &self,
        mut request: Vec<u8>,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let inner = &self.inner;
        if let Some(e) = too_large(&request, inner.max_frame) {
            return Ok(Err(e));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = inner.pending.lock().unwrap();
            let id = inner.send_request(&mut request)?;
            pending.insert(id, Slot::Call(tx));
            id
        };
        // From here on, dropping this future (the caller gave up) cancels the call on the server.
        let mut guard = CancelOnDrop {
            inner,
            id,
            armed: true,
        };
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CallError::Lost("connection closed".into())),
            Err(_) => return Err(CallError::Timeout), // the guard sends the cancel
        };
        guard.armed = false;
        outcome
    }
}

/// A stream just opened on a connection: the opening reply to wait for, the
/// server's items, and what the client's own items need.
#[derive(Debug)]
pub(crate) struct OpenStream {
    pub(crate) id: u32,
    /// Resolves with the opening `RESPONSE` (or the one reply of client streaming).
    pub(crate) opened: oneshot::Receiver<Result<Reply, CallError>>,
    /// The server's items; dropping it before the end cancels the call.
    pub(crate) inbound: Inbound,
    /// The window for the client's items.
    pub(crate) credit: Arc<Credit>,
    pub(crate) frames: FrameSender,
}

impl Connection {
    /// Opens a stream with `request` (a `REQUEST` frame without
    /// `END_STREAM`). Unless `client_sends`, the client's side ends at once.
    pub(crate) fn open_stream(
        &self,
        mut request: Vec<u8>,
        client_sends: bool,
        idle: Duration,
    ) -> Result<Result<OpenStream, Error>, CallError> {
        let inner = &self.inner;
        if let Some(e) = too_large(&request, inner.max_frame) {
            return Ok(Err(e));
        }
        let (tx, rx) = oneshot::channel();
        let mut pending = inner.pending.lock().unwrap();
        let id = inner.send_request(&mut request)?;
        if !client_sends {
            let _ = inner
                .tx
                .send(frame::frame(Kind::Data, flags::END_STREAM, id, &[]));
        }
        let abandon = Arc::clone(inner);
        let (receiving, inbound) = Receiving::new(
            inner.tx.clone(),
            id,
            idle,
            inner.max_frame,
            Some(Box::new(move || abandon.cancel(id))),
        );
        let credit = Arc::new(Credit::new(stream::WINDOW));
        pending.insert(
            id,
            Slot::Stream {
                opened: Some(tx),
                receiving,
                credit: Arc::clone(&credit),
            },
        );
        Ok(Ok(OpenStream {
            id,
            opened: rx,
            inbound,
            credit,
            frames: inner.tx.clone(),
        }))
    }
}

impl Inner {
    /// Gives `request` the next stream id and queues it. Called with the
    /// pending map locked: ids are taken and frames queued under one lock, so
    /// they reach the server in increasing order, as the protocol requires.
    fn send_request(&self, request: &mut Vec<u8>) -> Result<u32, CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::Lost("connection closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id >= u32::MAX - 1 {
            // Ids exhausted: this connection takes no further calls; the pool dials a new one.
            self.closed.store(true, Ordering::Release);
        }
        frame::set_stream(request, id);
        self.tx
            .send(std::mem::take(request))
            .map_err(|_| CallError::Lost("connection closed".into()))?;
        Ok(id)
    }

    /// Abandons call `id`: the server cancels its handler.
    fn cancel(&self, id: u32) {
        if self.pending.lock().unwrap().remove(id).is_some() {
            let _ = self.tx.send(frame::frame(Kind::Cancel, 0, id, &[]));
        }
    }
}

/// The error for a request over the frame limit.
fn too_large(request: &[u8], max_frame: usize) -> Option<Error> {
    let len = request.len() - frame::HEADER_LEN;
    (len > max_frame).then(|| {
        Error::payload_too_large(
            "micro.client",
            format!("request of {len} bytes exceeds the frame limit of {max_frame} bytes"),
        )
    })
}

/// Sends a cancel frame for a call abandoned before its reply.
struct CancelOnDrop<'a> {
    inner: &'a Inner,
    id: u32,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.cancel(self.id);
        }
    }
}

async fn read_loop(
    inner: Arc<Inner>,
    mut r: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    addr: String,
) {
    let reason = loop {
        match r.next().await {
            Ok(Some(f)) => match f.kind {
                Kind::Response => {
                    let mut pending = inner.pending.lock().unwrap();
                    let end = f.flags & flags::END_STREAM != 0;
                    let outcome = if f.flags & flags::ERROR == 0 {
                        Ok(Ok(f.payload))
                    } else {
                        let e = frame::decode_error(&f.payload);
                        if f.flags & flags::REFUSED != 0 {
                            Err(CallError::Refused(e))
                        } else {
                            Ok(Err(e))
                        }
                    };
                    let waiter = match pending.calls.get_mut(&f.stream) {
                        Some(Slot::Stream { opened, .. }) if !end => opened.take(),
                        Some(_) => match pending.remove(f.stream) {
                            Some(Slot::Call(w)) => Some(w),
                            Some(Slot::Stream {
                                opened, receiving, ..
                            }) => {
                                if opened.is_none() {
                                    // An answer after the opening can only end the stream.
                                    if let Ok(Err(e)) = outcome {
                                        receiving.fail(e);
                                    }
                                    continue;
                                }
                                opened
                            }
                            None => None,
                        },
                        None => None,
                    };
                    drop(pending);
                    if let Some(w) = waiter {
                        let _ = w.send(outcome);
                    }
                }
                Kind::Data => {
                    let mut pending = inner.pending.lock().unwrap();
                    if let Some(Slot::Stream { receiving, .. }) = pending.calls.get(&f.stream) {
                        match receiving.data(f.flags, f.payload) {
                            Ok(false) => {}
                            Ok(true) => {
                                pending.remove(f.stream);
                            }
                            Err(e) => break format!("protocol error from {addr}: {e}"),
                        }
                    }
                }
                Kind::Credit => {
                    let Some(grant) = stream::parse_credit(&f.payload) else {
                        break format!(
                            "protocol error from {addr}: credit frame shorter than 4 bytes"
                        );
                    };
                    let pending = inner.pending.lock().unwrap();
                    if let Some(Slot::Stream { credit, .. }) = pending.calls.get(&f.stream) {
                        credit.grant(grant);
                    }
                }
                Kind::Ping if f.flags & flags::ACK == 0 => {
                    let _ = inner
                        .tx
                        .send(frame::frame(Kind::Ping, flags::ACK, 0, &[&f.payload]));
                }
                Kind::GoAway => {
                    // In-flight calls at or below `last` still get their replies; later ones
                    // were never processed and are retried by the caller.
                    let (last, reason) = frame::parse_goaway(&f.payload);
                    inner.closed.store(true, Ordering::Release);
                    tracing::debug!(%addr, last, %reason, "go-away");
                    let mut pending = inner.pending.lock().unwrap();
                    for slot in pending.remove_where(|id| id > last) {
                        slot.fail(CallError::Refused(reason.clone()));
                    }
                    if pending.is_empty() && reason.code != 503 {
                        break format!("go-away from {addr}: {reason}");
                    }
                }
                _ => {}
            },
            Ok(None) => break format!("connection to {addr} closed by the server"),
            Err(ReadError::Io(e)) => break format!("connection to {addr} failed: {e}"),
            Err(ReadError::Protocol(e)) => break format!("protocol error from {addr}: {e}"),
        }
    };
    inner.closed.store(true, Ordering::Release);
    let pending = inner.pending.lock().unwrap().remove_where(|_| true);
    for slot in pending {
        slot.fail(CallError::Lost(reason.clone()));
    }
}
