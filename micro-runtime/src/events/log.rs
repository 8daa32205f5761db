//! The append-only log of one topic: record framing, recovery on open, group
//! commit, and reads that go to the file (never the whole log in memory).
//!
//! The framing is shared with the consumer-group files (`group.rs`); only the
//! magic differs. A framed record is
//!
//! ```text
//! magic: 4 bytes | len: u32 LE | crc: u32 LE | body: len bytes
//! ```
//!
//! where `crc` is the CRC32 (IEEE) of the four `len` bytes followed by the body,
//! so a damaged length is caught as surely as a damaged body. A topic record's
//! body is the MessagePack array `[seq: u64, timestamp_ms: u64, metadata: map,
//! payload: bin]`.

use super::{Metadata, ERROR_ID};
use crate::error::{Error, Result};
use bytes::Bytes;
use serde::{de::IgnoredAny, Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};

/// The magic of a topic record (`v1` of the format).
pub(crate) const TOPIC_MAGIC: [u8; 4] = *b"MEV1";
/// Magic, length and checksum.
pub(crate) const HEADER: u64 = 12;
/// The largest record body accepted (and believed when scanning).
pub(crate) const MAX_BODY: u64 = 64 << 20;
/// The sparse index keeps one entry per this many bytes of log.
const INDEX_EVERY: u64 = 64 << 10;
/// How much is read from the file at a time.
const CHUNK: u64 = 64 << 10;

/// The checksum of a record: over the length bytes, then the body.
fn checksum(len: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends one framed record to `out`.
pub(crate) fn frame(magic: [u8; 4], body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("record bodies are bounded by MAX_BODY");
    out.extend_from_slice(&magic);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Reads exactly `buf.len()` bytes at `pos` without moving any shared cursor.
fn read_exact_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, pos)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut pos) = (buf, pos);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Makes a new directory entry durable (a no-op where directories cannot be synced).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// What a [`Scanner`] found at its position.
#[derive(Debug)]
pub(crate) enum Scanned<'s> {
    /// A complete record with a good checksum.
    Record { pos: u64, next: u64, body: &'s [u8] },
    /// Bytes that are no record, followed by a good record at `next`.
    Corrupt { pos: u64, next: u64 },
    /// Bytes that are no record, with no good record after them: a torn tail.
    Torn { pos: u64 },
}

/// Walks the framed records of `[pos, end)` of a file, reading a chunk at a time.
///
/// A bad record (wrong magic, impossible length, checksum mismatch, cut short)
/// is reported as [`Scanned::Corrupt`] when a good record follows it (found by
/// searching for the magic and checking each candidate in full), and as
/// [`Scanned::Torn`] when none does.
#[derive(Debug)]
pub(crate) struct Scanner<'f> {
    file: &'f File,
    magic: [u8; 4],
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'f> Scanner<'f> {
    /// Scans `[pos, end)` of `file` for records with `magic`.
    pub(crate) fn new(file: &'f File, magic: [u8; 4], pos: u64, end: u64) -> Self {
        Self {
            file,
            magic,
            pos,
            end,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// The position of the next thing to scan.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The bytes `[at, at + len)`, which must lie within the scanned range.
    fn bytes(&mut self, at: u64, len: u64) -> io::Result<&[u8]> {
        let buffered = at >= self.buf_at && at + len <= self.buf_at + self.buf.len() as u64;
        if !buffered {
            let want = len.max(CHUNK).min(self.end - at);
            self.buf.resize(want as usize, 0);
            read_exact_at(self.file, &mut self.buf, at)?;
            self.buf_at = at;
        }
        let start = (at - self.buf_at) as usize;
        Ok(&self.buf[start..start + len as usize])
    }

    /// The body length of the good record at `at`, if there is one.
    fn valid_at(&mut self, at: u64) -> io::Result<Option<u64>> {
        if self.end - at < HEADER {
            return Ok(None);
        }
        let magic = self.magic;
        let head = self.bytes(at, HEADER)?;
        if head[..4] != magic {
            return Ok(None);
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let body_len = u64::from(len);
        if body_len > MAX_BODY || at + HEADER + body_len > self.end {
            return Ok(None);
        }
        let body = &self.bytes(at, HEADER + body_len)?[HEADER as usize..];
        Ok((checksum(len, body) == crc).then_some(body_len))
    }

    /// The position of the next good record after `from`, if any.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut window = Vec::new();
        let mut at = from;
        while self.end.saturating_sub(at) >= HEADER {
            let len = CHUNK.min(self.end - at);
            window.resize(len as usize, 0);
            read_exact_at(self.file, &mut window, at)?;
            let hits: Vec<u64> = window
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == self.magic)
                .map(|(i, _)| at + i as u64)
                .collect();
            for candidate in hits {
                if self.valid_at(candidate)?.is_some() {
                    return Ok(Some(candidate));
                }
            }
            // Overlap by three bytes so a magic straddling two windows is seen.
            at += (len - 3).max(1);
        }
        Ok(None)
    }

    /// The next record, corrupt stretch or torn tail; `None` at the end.
    pub(crate) fn next(&mut self) -> io::Result<Option<Scanned<'_>>> {
        let pos = self.pos;
        if pos >= self.end {
            return Ok(None);
        }
        if let Some(len) = self.valid_at(pos)? {
            self.pos = pos + HEADER + len;
            let body = &self.bytes(pos, HEADER + len)?[HEADER as usize..];
            return Ok(Some(Scanned::Record {
                pos,
                next: pos + HEADER + len,
                body,
            }));
        }
        match self.resync(pos + 1)? {
            Some(next) => {
                self.pos = next;
                Ok(Some(Scanned::Corrupt { pos, next }))
            }
            None => {
                self.pos = self.end;
                Ok(Some(Scanned::Torn { pos }))
            }
        }
    }
}

/// A topic record as written.
#[derive(Serialize)]
struct RecordOut<'a>(
    u64,
    u64,
    &'a Metadata,
    #[serde(with = "serde_bytes")] &'a [u8],
);

/// A topic record as read.
#[derive(Deserialize)]
struct RecordIn<'a>(
    u64,
    u64,
    Metadata,
    #[serde(borrow, with = "serde_bytes")] &'a [u8],
);

/// The sequence number and timestamp of a record, skipping the rest.
#[derive(Deserialize)]
struct RecordHead(u64, u64, IgnoredAny, IgnoredAny);

/// A record read back from a topic log.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    /// The sequence number: the event id.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The event's metadata.
    pub metadata: Metadata,
    /// The event's payload.
    pub payload: Bytes,
    /// Where the record starts in the log.
    pub pos: u64,
}

impl Rec {
    fn decode(pos: u64, body: &[u8]) -> Option<Rec> {
        let RecordIn(seq, ts_ms, metadata, payload) = rmp_serde::from_slice(body).ok()?;
        Some(Rec {
            seq,
            ts_ms,
            metadata,
            payload: Bytes::copy_from_slice(payload),
            pos,
        })
    }
}

fn head(body: &[u8]) -> Option<(u64, u64)> {
    rmp_serde::from_slice::<RecordHead>(body)
        .ok()
        .map(|h| (h.0, h.1))
}

/// Milliseconds since the Unix epoch of a time (zero before it).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What is durable in the log, as readers may see it.
#[derive(Debug)]
struct Committed {
    /// The sequence number the next event gets.
    next_seq: u64,
    /// The end of the last durable record.
    end: u64,
    /// The timestamp of the last record (timestamps never go backwards).
    last_ts: u64,
    /// `(seq, pos)` of a record every [`INDEX_EVERY`] bytes or so.
    index: Vec<(u64, u64)>,
    /// Set when an fsync failed: what reached the disk is then unknown.
    poisoned: Option<String>,
}

impl Committed {
    fn note(&mut self, seq: u64, pos: u64) {
        if self
            .index
            .last()
            .is_none_or(|&(_, last)| pos >= last + INDEX_EVERY)
        {
            self.index.push((seq, pos));
        }
    }
}

/// A publish waiting for the next commit.
#[derive(Debug)]
struct Append {
    payload: Bytes,
    metadata: Metadata,
    reply: oneshot::Sender<Result<u64>>,
}

/// Publishes waiting for the committer, and whether one is running.
#[derive(Debug, Default)]
struct Queue {
    appends: Vec<Append>,
    committing: bool,
}

/// The committer of a log, as handed to the blocking pool: if the pool drops
/// it unrun (the runtime is shutting down), the queued publishes fail instead
/// of waiting for a committer that never comes.
#[derive(Debug)]
struct CommitGuard(Option<Arc<TopicLog>>);

impl CommitGuard {
    fn run(mut self) {
        TopicLog::commit_loop(self.0.take());
    }
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        if let Some(log) = self.0.take() {
            let mut q = log.queue.lock().expect("queue lock");
            q.committing = false;
            q.appends.clear();
        }
    }
}

/// The log of one topic.
#[derive(Debug)]
pub(crate) struct TopicLog {
    name: String,
    path: PathBuf,
    file: File,
    committed: Mutex<Committed>,
    queue: Mutex<Queue>,
    /// The `next_seq` of the last commit, for consumers waiting for events.
    appended: watch::Sender<u64>,
    /// Held so the directory stays locked while the log is in use.
    _lock: Arc<File>,
}

impl TopicLog {
    /// Opens (creating if needed) a topic log and recovers it: every record is
    /// checked, corrupt ones are skipped with a warning, and a torn tail is cut off.
    pub(crate) fn open(name: &str, path: PathBuf, lock: Arc<File>) -> Result<TopicLog> {
        let fail = |what: &str, e: io::Error| {
            Error::internal(
                ERROR_ID,
                format!("{what} the log of topic `{name}` ({}): {e}", path.display()),
            )
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| fail("cannot open", e))?;
        let len = file.metadata().map_err(|e| fail("cannot stat", e))?.len();
        let mut committed = Committed {
            next_seq: 1,
            end: len,
            last_ts: 0,
            index: Vec::new(),
            poisoned: None,
        };
        let mut scanner = Scanner::new(&file, TOPIC_MAGIC, 0, len);
        let mut torn = None;
        while let Some(item) = scanner.next().map_err(|e| fail("cannot read", e))? {
            match item {
                Scanned::Record { pos, body, .. } => match head(body) {
                    Some((seq, ts)) if seq >= committed.next_seq => {
                        committed.note(seq, pos);
                        committed.next_seq = seq + 1;
                        committed.last_ts = committed.last_ts.max(ts);
                    }
                    _ => tracing::warn!(
                        topic = name, path = %path.display(), pos,
                        "events: skipping a record that is not a valid event of this log"
                    ),
                },
                Scanned::Corrupt { pos, next } => tracing::warn!(
                    topic = name, path = %path.display(), from = pos, to = next,
                    "events: skipping corrupt bytes in the log (checksum mismatch)"
                ),
                Scanned::Torn { pos } => torn = Some(pos),
            }
        }
        if let Some(pos) = torn {
            tracing::warn!(
                topic = name, path = %path.display(), at = pos, bytes = len - pos,
                "events: truncating a torn tail (a record cut short by a crash)"
            );
            file.set_len(pos).map_err(|e| fail("cannot truncate", e))?;
            file.sync_all().map_err(|e| fail("cannot sync", e))?;
            committed.end = pos;
        }
        let (appended, _) = watch::channel(committed.next_seq);
        Ok(TopicLog {
            name: name.to_owned(),
            path,
            file,
            committed: Mutex::new(committed),
            queue: Mutex::new(Queue::default()),
            appended,
            _lock: lock,
        })
    }

    /// The topic's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The end of the durable part of the log.
    pub(crate) fn end(&self) -> u64 {
        self.committed.lock().expect("log lock").end
    }

    /// The sequence number the next event gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.committed.lock().expect("log lock").next_seq
    }

    /// Watches the next sequence number: changes after every commit.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Appends an event and returns its sequence number once it is on disk.
    pub(crate) async fn append(
        self: &Arc<Self>,
        payload: Bytes,
        metadata: Metadata,
    ) -> Result<u64> {
        let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
        if (payload.len() + size + 64) as u64 > MAX_BODY {
            return Err(Error::payload_too_large(
                ERROR_ID,
                format!(
                    "an event of topic `{}` may hold at most {} MiB of payload and metadata",
                    self.name,
                    MAX_BODY >> 20
                ),
            ));
        }
        let (reply, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("queue lock");
            q.appends.push(Append {
                payload,
                metadata,
                reply,
            });
            !std::mem::replace(&mut q.committing, true)
        };
        if start {
            let guard = CommitGuard(Some(Arc::clone(self)));
            tokio::task::spawn_blocking(move || guard.run());
        }
        rx.await.map_err(|_| {
            Error::internal(ERROR_ID, "the commit of the event was abandoned".to_owned())
        })?
    }

    /// Takes what is queued, or marks the committer stopped when nothing is.
    fn take_batch(&self) -> Option<Vec<Append>> {
        let mut q = self.queue.lock().expect("queue lock");
        if q.appends.is_empty() {
            q.committing = false;
            None
        } else {
            Some(std::mem::take(&mut q.appends))
        }
    }

    /// Commits batches until the queue is empty (group commit: everything that
    /// queued up during one fsync goes into the next).
    fn commit_loop(mut log: Option<Arc<Self>>) {
        let mut batch = log
            .as_ref()
            .and_then(|l| l.take_batch())
            .unwrap_or_default();
        while let Some(l) = log.as_ref() {
            let result = l.commit(&batch);
            let next = l.take_batch();
            if next.is_none() {
                // Let go of the log before answering: once the last publisher
                // hears back, nothing of this directory may be held any more.
                log = None;
            }
            for (i, append) in batch.drain(..).enumerate() {
                let _ = append.reply.send(
                    result
                        .as_ref()
                        .map(|first| first + i as u64)
                        .map_err(Clone::clone),
                );
            }
            batch = next.unwrap_or_default();
        }
    }

    /// Writes a batch and syncs it; returns the sequence number of its first event.
    fn commit(&self, batch: &[Append]) -> Result<u64> {
        let (first, end, mut ts) = {
            let c = self.committed.lock().expect("log lock");
            if let Some(why) = &c.poisoned {
                return Err(Error::unavailable(ERROR_ID, why.clone()));
            }
            (c.next_seq, c.end, c.last_ts)
        };
        ts = ts.max(millis(SystemTime::now()));
        let mut buf = Vec::new();
        let mut starts = Vec::with_capacity(batch.len());
        let mut body = Vec::new();
        for (i, a) in batch.iter().enumerate() {
            body.clear();
            let record = RecordOut(first + i as u64, ts, &a.metadata, &a.payload);
            rmp_serde::encode::write(&mut body, &record)
                .map_err(|e| Error::internal(ERROR_ID, format!("cannot encode an event: {e}")))?;
            starts.push(end + buf.len() as u64);
            frame(TOPIC_MAGIC, &body, &mut buf);
        }
        let fail = |what: &str, e: io::Error| {
            format!(
                "cannot {what} the log of topic `{}` ({}): {e}",
                self.name,
                self.path.display()
            )
        };
        if let Err(e) = (&self.file).write_all(&buf) {
            let why = fail("write", e);
            // Take back whatever part of the batch was written.
            if let Err(e) = self.file.set_len(end) {
                self.poison(format!("{why}; then {}", fail("truncate", e)));
            }
            return Err(Error::internal(ERROR_ID, why));
        }
        if let Err(e) = self.file.sync_data() {
            let why = fail("sync", e);
            // After a failed fsync, what reached the disk is unknown: stop writing.
            self.poison(format!("{why}; reopen the events directory to recover"));
            return Err(Error::internal(ERROR_ID, why));
        }
        let next_seq = {
            let mut c = self.committed.lock().expect("log lock");
            for (i, &pos) in starts.iter().enumerate() {
                c.note(first + i as u64, pos);
            }
            c.next_seq = first + batch.len() as u64;
            c.end = end + buf.len() as u64;
            c.last_ts = ts;
            c.next_seq
        };
        self.appended.send_replace(next_seq);
        Ok(first)
    }

    fn poison(&self, why: String) {
        tracing::error!(topic = %self.name, error = %why, "events: the topic log stopped taking events");
        self.committed.lock().expect("log lock").poisoned = Some(why);
    }

    fn read_error(&self, e: io::Error) -> Error {
        Error::internal(
            ERROR_ID,
            format!(
                "cannot read the log of topic `{}` ({}): {e}",
                self.name,
                self.path.display()
            ),
        )
    }

    /// Reads up to `max` records (and about `max_bytes`) from `from` up to the
    /// durable end, skipping corrupt ones; returns them and where to go on.
    /// Blocking.
    pub(crate) fn read_batch(
        &self,
        from: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<(Vec<Rec>, u64)> {
        let end = self.end();
        let mut scanner = Scanner::new(&self.file, TOPIC_MAGIC, from, end);
        let (mut out, mut bytes) = (Vec::new(), 0);
        while out.len() < max && bytes < max_bytes {
            match scanner.next().map_err(|e| self.read_error(e))? {
                None => break,
                Some(Scanned::Record { pos, next, body }) => match Rec::decode(pos, body) {
                    Some(rec) => {
                        bytes += next - pos;
                        out.push(rec);
                    }
                    None => {
                        tracing::debug!(topic = %self.name, pos, "events: skipping an undecodable record")
                    }
                },
                Some(Scanned::Corrupt { pos, next }) => {
                    tracing::debug!(topic = %self.name, from = pos, to = next, "events: skipping corrupt bytes");
                }
                Some(Scanned::Torn { pos }) => {
                    tracing::warn!(topic = %self.name, pos, "events: unreadable bytes before the end of the log");
                }
            }
        }
        Ok((out, scanner.pos()))
    }

    /// The record at `pos`, if a good one starts there. Blocking.
    pub(crate) fn read_at(&self, pos: u64) -> Result<Option<Rec>> {
        let end = self.end();
        let mut scanner = Scanner::new(&self.file, TOPIC_MAGIC, pos, end);
        match scanner.next().map_err(|e| self.read_error(e))? {
            Some(Scanned::Record { pos, body, .. }) => Ok(Rec::decode(pos, body)),
            _ => Ok(None),
        }
    }

    /// The sequence number and position of the first record for which `after`
    /// holds (given its sequence number and timestamp), or the end of the log.
    /// `after` must be monotonic: false, then true. Blocking.
    pub(crate) fn find(&self, after: impl Fn(u64, u64) -> bool) -> Result<(u64, u64)> {
        let (index, end, next_seq) = {
            let c = self.committed.lock().expect("log lock");
            (c.index.clone(), c.end, c.next_seq)
        };
        let head_at = |pos: u64| -> Result<Option<(u64, u64)>> {
            let mut scanner = Scanner::new(&self.file, TOPIC_MAGIC, pos, end);
            match scanner.next().map_err(|e| self.read_error(e))? {
                Some(Scanned::Record { body, .. }) => Ok(head(body)),
                _ => Ok(None),
            }
        };
        // The first index entry already past the point; scan from the one before.
        let (mut lo, mut hi) = (0, index.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (seq, pos) = index[mid];
            let ts = head_at(pos)?.map_or(0, |(_, ts)| ts);
            if after(seq, ts) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let from = if lo == 0 { 0 } else { index[lo - 1].1 };
        let mut scanner = Scanner::new(&self.file, TOPIC_MAGIC, from, end);
        while let Some(item) = scanner.next().map_err(|e| self.read_error(e))? {
            if let Scanned::Record { pos, body, .. } = item {
                if let Some((seq, ts)) = head(body) {
                    if after(seq, ts) {
                        return Ok((seq, pos));
                    }
                }
            }
        }
        Ok((next_seq, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!(
            "micro-events-log-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        (dir, file)
    }

    #[test]
    fn scanner_finds_records_corruption_and_torn_tails() {
        let (dir, mut file) = temp_file("scan");
        let mut buf = Vec::new();
        for body in [&b"one"[..], b"two", b"three"] {
            frame(TOPIC_MAGIC, body, &mut buf);
        }
        let second = 15u64; // 12 + "one"
        buf[second as usize + 13] ^= 0xff; // a byte of "two"
        buf.extend_from_slice(&TOPIC_MAGIC);
        buf.extend_from_slice(&[9, 0, 0]); // a header cut short
        file.write_all(&buf).unwrap();
        let len = buf.len() as u64;
        let mut s = Scanner::new(&file, TOPIC_MAGIC, 0, len);
        let mut seen = Vec::new();
        while let Some(item) = s.next().unwrap() {
            seen.push(match item {
                Scanned::Record { body, .. } => String::from_utf8(body.to_vec()).unwrap(),
                Scanned::Corrupt { pos, next } => format!("corrupt {pos}..{next}"),
                Scanned::Torn { pos } => format!("torn {pos}"),
            });
        }
        assert_eq!(
            seen,
            ["one", "corrupt 15..30", "three", "torn 47"].map(String::from)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_length_is_caught() {
        let (dir, mut file) = temp_file("len");
        let mut buf = Vec::new();
        frame(TOPIC_MAGIC, b"abcdef", &mut buf);
        frame(TOPIC_MAGIC, b"ghi", &mut buf);
        buf[4] = 2; // the first record's length: 6 -> 2
        file.write_all(&buf).unwrap();
        let mut s = Scanner::new(&file, TOPIC_MAGIC, 0, buf.len() as u64);
        assert!(matches!(
            s.next().unwrap(),
            Some(Scanned::Corrupt { pos: 0, next: 18 })
        ));
        assert!(matches!(
            s.next().unwrap(),
            Some(Scanned::Record { pos: 18, .. })
        ));
        assert!(s.next().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
