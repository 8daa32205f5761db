//! The native transport: TCP carrying length-prefixed, multiplexed frames.
//!
//! [`frame`] defines the format; this module reads frames off a socket and
//! writes them in batches from a single writer task per connection.

pub mod frame;

use bytes::{Buf, BytesMut};
use frame::{Frame, Header, ProtocolError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Bytes asked of the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames off a socket through one growing buffer: payloads are split
/// off it without copying, and a frame's length is checked against the bound
/// before any of its payload is buffered.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames of at most `max_frame` payload bytes.
    pub fn new(io: R, max_frame: usize) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// The socket back, with the bytes received but not consumed yet.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Reads whatever the socket has; 0 at the end of the stream.
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// The next frame. `Ok(None)` is a clean end of the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let mut want = HEADER_LEN;
            if self.buf.len() >= HEADER_LEN {
                let header =
                    Header::parse(self.buf[..HEADER_LEN].try_into().expect("header length"));
                let kind = header.validate(self.max_frame)?;
                want = HEADER_LEN + header.len;
                if self.buf.len() >= want {
                    self.buf.advance(HEADER_LEN);
                    let payload = self.buf.split_to(header.len).freeze();
                    return Ok(Some(Frame {
                        kind,
                        flags: header.flags,
                        stream: header.stream,
                        payload,
                    }));
                }
                self.buf.reserve(want - self.buf.len());
            }
            if self.read_more().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ProtocolError::Truncated {
                    got: self.buf.len(),
                    want,
                }
                .into());
            }
        }
    }
}

/// Sends encoded frames to a connection's writer task.
pub type FrameSender = mpsc::UnboundedSender<Vec<u8>>;

/// Bytes gathered into one write at most.
const BATCH_BYTES: usize = 256 * 1024;
/// Frames taken off the queue at once at most.
const MAX_BATCH: usize = 256;

/// Starts the writer task of a connection: it writes every frame it is sent,
/// gathering whatever is queued into one write. It ends when every sender is
/// dropped or the socket fails, and then shuts the write side down.
///
/// `busy` says whether more frames are probably on their way (other calls in
/// flight). Then the writer first lets the ready tasks run, so the frames they
/// queue share one write: under load that saves most of the syscalls, while
/// a lone call pays nothing for it.
pub fn spawn_writer<W, B>(w: W, busy: B) -> (FrameSender, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
    B: Fn() -> bool + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(write_loop(w, rx, busy)))
}

async fn write_loop<W, B>(mut w: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>, busy: B)
where
    W: AsyncWrite + Unpin,
    B: Fn() -> bool,
{
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if busy() {
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
        }
        let result = if batch.len() == 1 {
            w.write_all(&batch[0]).await
        } else {
            for f in batch.iter() {
                if buf.len() + f.len() > BATCH_BYTES && !buf.is_empty() {
                    if w.write_all(&buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                }
                buf.extend_from_slice(f);
            }
            let r = w.write_all(&buf).await;
            buf.clear();
            r
        };
        batch.clear();
        if result.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Lossy, bounded text of some bytes for error messages.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let b = &bytes[..bytes.len().min(16)];
    String::from_utf8_lossy(b).into_owned()
}
