//! Streams: the typed [`Streaming`] handlers and clients see, and the
//! flow-controlled plumbing beneath it.
//!
//! Every stream is bounded in memory. On the wire the reader grants the
//! writer credit (see `docs/protocol.md`): an [`Inbound`] returns credit only
//! as the application consumes items, and the writer waits on its `Credit`
//! before sending more, so a slow reader slows its writer and nothing else.

use crate::codec::ContentType;
use crate::error::{Error, Result};
use crate::server::Reply;
use crate::transport::frame::{self, flags, Kind, ProtocolError};
use crate::transport::FrameSender;
use bytes::Bytes;
pub use futures_util::stream::{iter, unfold};
use futures_util::FutureExt;
pub use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// The window each side of a stream starts with, in payload bytes.
pub const WINDOW: usize = 256 * 1024;
/// How long a stream may wait for its next item when nothing else says.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A typed stream of items: the argument or the result of a streaming
/// endpoint.
///
/// Read it as a [`Stream`] of `Result<T>` (or with [`Streaming::message`]);
/// make one from any stream ([`Streaming::new`], [`Streaming::try_new`]), an
/// iterator ([`Streaming::iter`]), or a channel ([`Streaming::channel`]).
/// A stream that comes off the wire ends with `Ok` items followed by the end,
/// or by one `Err` (the peer's error, a lost connection, the idle timeout).
/// Dropping it cancels the other side.
pub struct Streaming<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T>> + Send>>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Streaming<T> {
    /// A stream of the items of `stream`.
    pub fn new<S>(stream: S) -> Self
    where
        S: Stream<Item = T> + Send + 'static,
    {
        Self::try_new(stream.map(Ok))
    }

    /// A stream of the items of `stream`; an `Err` ends it with that error
    /// on the other side.
    pub fn try_new<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<T>> + Send + 'static,
    {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// A stream of the items of `items`.
    pub fn iter<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::new(futures_util::stream::iter(items))
    }

    /// A stream with no items.
    pub fn empty() -> Self {
        Self::new(futures_util::stream::empty())
    }

    /// A stream fed through a sender; it ends when every sender is dropped.
    /// `capacity` items wait in the channel at most.
    pub fn channel(capacity: usize) -> (StreamSender<T>, Self) {
        let (tx, mut rx) = mpsc::channel(capacity.max(1));
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (StreamSender { tx }, Self::try_new(stream))
    }

    /// The next item: `Ok(None)` at the end of the stream.
    pub async fn message(&mut self) -> Result<Option<T>> {
        self.next().await.transpose()
    }

    /// Every remaining item, or the first error.
    pub async fn collect_all(mut self) -> Result<Vec<T>> {
        let mut items = Vec::new();
        while let Some(item) = self.message().await? {
            items.push(item);
        }
        Ok(items)
    }

    /// Items decoded from a raw inbound stream.
    pub(crate) fn decode(inbound: Inbound, content_type: ContentType) -> Self
    where
        T: DeserializeOwned,
    {
        Self::try_new(futures_util::stream::unfold(
            inbound,
            move |mut inbound| async move {
                let item = match inbound.next().await? {
                    Ok(bytes) => content_type.decode(&bytes).map_err(|e| {
                        inbound.close();
                        Error::bad_request(
                            "micro.stream",
                            format!("undecodable stream item: {}", e.detail),
                        )
                    }),
                    Err(e) => Err(e),
                };
                Some((item, inbound))
            },
        ))
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The writing end of [`Streaming::channel`].
#[derive(Debug)]
pub struct StreamSender<T> {
    tx: mpsc::Sender<Result<T>>,
}

impl<T> Clone for StreamSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> StreamSender<T> {
    /// Sends one item, waiting while the channel is full. Fails once the
    /// stream is gone (the other side ended or cancelled it).
    pub async fn send(&self, item: T) -> Result<()> {
        self.tx.send(Ok(item)).await.map_err(|_| closed())
    }

    /// Ends the stream with `error`, which the other side receives.
    pub async fn fail(&self, error: Error) -> Result<()> {
        self.tx.send(Err(error)).await.map_err(|_| closed())
    }

    /// Whether the stream is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn closed() -> Error {
    Error::unavailable("micro.stream", "the stream is closed")
}

/// One message of a raw stream, as the connection's reader delivers it.
#[derive(Debug)]
pub(crate) enum Msg {
    /// An encoded item.
    Item(Bytes),
    /// The sender's clean end.
    End,
    /// The sender's error (or the connection's): the last message.
    Error(Error),
}

/// Called with the payload bytes of each item the application takes off an
/// [`Inbound`], so the producer can be given that much more room.
pub(crate) type OnConsume = Box<dyn FnMut(usize) + Send>;
/// Called when an [`Inbound`] is dropped or closed before its end.
pub(crate) type OnAbandon = Box<dyn FnOnce() + Send>;

/// The receiving end of a raw stream: encoded items, bounded by the credit it
/// returns as they are consumed, with an idle timeout.
pub struct Inbound {
    rx: mpsc::UnboundedReceiver<Msg>,
    on_consume: Option<OnConsume>,
    on_abandon: Option<OnAbandon>,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("idle", &self.idle)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Msg>,
        idle: Duration,
        on_consume: Option<OnConsume>,
        on_abandon: Option<OnAbandon>,
    ) -> Self {
        Self {
            rx,
            on_consume,
            on_abandon,
            idle,
            timer: None,
            done: false,
        }
    }

    /// The next encoded item; `None` at the end.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        let msg = match self.recv().await {
            Some(Some(msg)) => msg,
            Some(None) => Msg::Error(Error::unavailable(
                "micro.stream",
                "the stream was cut off before its end",
            )),
            None => {
                self.close();
                return Some(Err(Error::timeout(
                    "micro.stream",
                    format!("no stream item within the idle timeout of {:?}", self.idle),
                )));
            }
        };
        match msg {
            Msg::Item(bytes) => {
                if let Some(f) = self.on_consume.as_mut() {
                    f(bytes.len());
                }
                Some(Ok(bytes))
            }
            Msg::End => {
                self.finish();
                None
            }
            Msg::Error(e) => {
                self.finish();
                Some(Err(e))
            }
        }
    }

    /// The next message, or `None` after the idle timeout. The timer is armed
    /// only when a message is not already waiting, and reused.
    async fn recv(&mut self) -> Option<Option<Msg>> {
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(msg) = self.rx.poll_recv(cx) {
                return Poll::Ready(Some(msg));
            }
            if !armed {
                // Read the clock once per wait, not on every wake-up.
                let deadline = tokio::time::Instant::now() + self.idle;
                match self.timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(deadline),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                armed = true;
            }
            let timer = self.timer.as_mut().expect("armed above");
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// The stream ended as the protocol says: nothing to cancel.
    fn finish(&mut self) {
        self.done = true;
        self.on_abandon = None;
    }

    /// Gives up on the rest of the stream, telling the other side.
    pub(crate) fn close(&mut self) {
        self.done = true;
        self.rx.close();
        if let Some(f) = self.on_abandon.take() {
            f();
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(f) = self.on_abandon.take() {
            f();
        }
    }
}

/// Encoded items going out; each [`Reply`] has room for its frame header.
pub type Outbound = Pin<Box<dyn Stream<Item = Result<Reply>> + Send>>;

/// Encodes a typed stream's items in `content_type`.
pub(crate) fn encode<T>(items: Streaming<T>, content_type: ContentType) -> Outbound
where
    T: serde::Serialize + Send + 'static,
{
    Box::pin(items.map(move |item| item.and_then(|v| Reply::encode(content_type, &v))))
}

/// The send window of one stream: how many more payload bytes the peer has
/// room for. One task sends on a stream, so one waiter at most.
#[derive(Debug)]
pub(crate) struct Credit {
    available: AtomicI64,
    closed: AtomicBool,
    notify: Notify,
}

impl Credit {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            available: AtomicI64::new(window as i64),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Waits until there is room, then takes `n` bytes of it (an item larger
    /// than the room left goes out once any room is there). `false` once the
    /// stream is closed.
    pub(crate) async fn take(&self, n: usize) -> bool {
        loop {
            // Fast path: room (or closed) without touching the `Notify`, whose
            // waiter list is behind a lock.
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.available.load(Ordering::Acquire) > 0 {
                self.available.fetch_sub(n as i64, Ordering::AcqRel);
                return true;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.available.load(Ordering::Acquire) > 0 {
                self.available.fetch_sub(n as i64, Ordering::AcqRel);
                return true;
            }
            notified.await;
        }
    }

    /// The peer has room for `n` more bytes.
    pub(crate) fn grant(&self, n: usize) {
        self.available.fetch_add(n as i64, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// No more sending on this stream.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Credit {
    /// Resolves once the stream is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// The receiving half of one native stream, as a connection's reader holds
/// it: delivers `DATA` frames to the application's [`Inbound`] and checks
/// that the peer keeps within the window it was granted.
#[derive(Debug)]
pub(crate) struct Receiving {
    tx: mpsc::UnboundedSender<Msg>,
    /// Payload bytes delivered but not yet consumed by the application.
    buffered: Arc<AtomicUsize>,
    limit: usize,
}

impl Receiving {
    /// A stream `id` on the connection whose writer is `frames`: the
    /// [`Inbound`] returns credit there as its items are consumed.
    pub(crate) fn new(
        frames: FrameSender,
        id: u32,
        idle: Duration,
        max_frame: usize,
        on_abandon: Option<OnAbandon>,
    ) -> (Self, Inbound) {
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        let mut consumed = 0usize;
        let on_consume: OnConsume = Box::new({
            let buffered = Arc::clone(&buffered);
            move |n| {
                buffered.fetch_sub(n, Ordering::AcqRel);
                // Granting a quarter of the window at a time keeps credit frames rare.
                consumed += n;
                if consumed >= WINDOW / 4 {
                    let grant = (std::mem::take(&mut consumed) as u32).to_be_bytes();
                    let _ = frames.send(frame::frame(Kind::Credit, 0, id, &[&grant]));
                }
            }
        });
        let inbound = Inbound::new(rx, idle, Some(on_consume), on_abandon);
        let receiving = Self {
            tx,
            buffered,
            // The sender may start one item past its window.
            limit: WINDOW + max_frame,
        };
        (receiving, inbound)
    }

    /// Delivers one `DATA` frame; `Ok(true)` when it ends the stream.
    pub(crate) fn data(&self, frame_flags: u8, payload: Bytes) -> Result<bool, ProtocolError> {
        if frame_flags & flags::ERROR != 0 {
            self.fail(frame::decode_error(&payload));
            return Ok(true);
        }
        if !payload.is_empty() {
            let buffered = self.buffered.fetch_add(payload.len(), Ordering::AcqRel);
            if buffered + payload.len() > self.limit {
                return Err(ProtocolError::Malformed(
                    "stream data beyond the window the reader granted",
                ));
            }
            let _ = self.tx.send(Msg::Item(payload));
        }
        let end = frame_flags & flags::END_STREAM != 0;
        if end {
            let _ = self.tx.send(Msg::End);
        }
        Ok(end)
    }

    /// Ends the stream with `error`.
    pub(crate) fn fail(&self, error: Error) {
        let _ = self.tx.send(Msg::Error(error));
    }
}

/// The `CREDIT` frame's grant, if well formed.
pub(crate) fn parse_credit(payload: &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize)
}

/// Sends the items of `out` as `DATA` frames of stream `id`, each once the
/// peer has room for it, then the end (or the error that ended it). Stops
/// early, sending nothing more, when the stream is closed under it.
/// `source` names the sender in the error a panicking stream turns into.
pub(crate) async fn pump(
    mut out: Outbound,
    credit: &Credit,
    frames: &FrameSender,
    id: u32,
    source: &str,
) {
    loop {
        // An item that is ready needs no watch on the stream's closing (the
        // credit check below sees it): only a pending stream races it.
        let next = match futures_util::poll!(AssertUnwindSafe(out.next()).catch_unwind()) {
            Poll::Ready(next) => next,
            Poll::Pending => tokio::select! {
                next = AssertUnwindSafe(out.next()).catch_unwind() => next,
                () = credit.closed() => return,
            },
        };
        let last = match next {
            Ok(Some(Ok(reply))) => {
                if !credit.take(reply.body().len()).await {
                    return;
                }
                if frames.send(reply.into_frame(Kind::Data, 0, id)).is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => frame::frame(Kind::Data, flags::END_STREAM, id, &[]),
            Ok(Some(Err(e))) => error_data(id, &e),
            Err(_) => error_data(
                id,
                &Error::internal(source, "the stream panicked while producing its next item"),
            ),
        };
        let _ = frames.send(last);
        return;
    }
}

fn error_data(id: u32, e: &Error) -> Vec<u8> {
    frame::frame(
        Kind::Data,
        flags::END_STREAM | flags::ERROR,
        id,
        &[&frame::encode_error(e)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credit_blocks_until_granted_and_wakes_on_close() {
        let credit = Arc::new(Credit::new(10));
        assert!(credit.take(10).await);
        let waiter = tokio::spawn({
            let credit = Arc::clone(&credit);
            async move { credit.take(5).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        credit.grant(4);
        assert!(waiter.await.unwrap());
        let closed = tokio::spawn({
            let credit = Arc::clone(&credit);
            async move { credit.take(5).await }
        });
        credit.close();
        assert!(!closed.await.unwrap());
    }

    #[tokio::test]
    async fn inbound_reports_consumption_end_and_abandon() {
        let (tx, rx) = mpsc::unbounded_channel();
        let consumed = Arc::new(std::sync::Mutex::new(0usize));
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut inbound = Inbound::new(
            rx,
            Duration::from_secs(5),
            Some(Box::new({
                let consumed = Arc::clone(&consumed);
                move |n| *consumed.lock().unwrap() += n
            })),
            Some(Box::new({
                let abandoned = Arc::clone(&abandoned);
                move || abandoned.store(true, Ordering::SeqCst)
            })),
        );
        tx.send(Msg::Item(Bytes::from_static(b"abc"))).unwrap();
        tx.send(Msg::End).unwrap();
        assert_eq!(inbound.next().await.unwrap().unwrap(), "abc");
        assert!(inbound.next().await.is_none());
        drop(inbound);
        assert_eq!(*consumed.lock().unwrap(), 3);
        assert!(
            !abandoned.load(Ordering::SeqCst),
            "a finished stream is not cancelled"
        );

        let (_tx, rx) = mpsc::unbounded_channel();
        let flag = Arc::new(AtomicBool::new(false));
        let inbound = Inbound::new(
            rx,
            Duration::from_secs(5),
            None,
            Some(Box::new({
                let flag = Arc::clone(&flag);
                move || flag.store(true, Ordering::SeqCst)
            })),
        );
        drop(inbound);
        assert!(
            flag.load(Ordering::SeqCst),
            "dropping before the end cancels"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inbound_idle_timeout_is_a_typed_error() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let mut inbound = Inbound::new(rx, Duration::from_secs(1), None, None);
        let e = inbound.next().await.unwrap().unwrap_err();
        assert_eq!(e.code, 408);
        assert!(inbound.next().await.is_none());
    }

    #[tokio::test]
    async fn streaming_from_channel_and_errors() {
        let (tx, s) = Streaming::<u32>::channel(2);
        tokio::spawn(async move {
            tx.send(1).await.unwrap();
            tx.fail(Error::bad_request("x", "boom")).await.unwrap();
        });
        let mut s = s;
        assert_eq!(s.message().await.unwrap(), Some(1));
        assert_eq!(s.message().await.unwrap_err().detail, "boom");
        assert_eq!(
            Streaming::iter(vec![1, 2, 3]).collect_all().await.unwrap(),
            vec![1, 2, 3]
        );
    }
}
