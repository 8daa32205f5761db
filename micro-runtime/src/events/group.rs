//! Consumer groups of the file log: who holds which event, retries, dead
//! letters, and the group file that makes it all survive a restart.
//!
//! The group file format is described on [`FileEvents`](super::FileEvents).
//! Attempts are counted when an event is handed out (and that is written
//! before it is), so an event that crashes its consumer's process still runs
//! out of attempts and lands in the dead-letter topic.

use super::file::Inner;
use super::log::{frame, sync_dir, Rec, Scanned, Scanner, TopicLog};
use super::{
    Acknowledge, ConsumeOptions, Consumer, Delivery, Event, StartAt, DEAD_ATTEMPTS_KEY,
    DEAD_ERROR_KEY, DEAD_GROUP_KEY, DEAD_ID_KEY, DEAD_TOPIC_KEY, ERROR_ID,
};
use crate::error::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The magic of a group-file record.
const GROUP_MAGIC: [u8; 4] = *b"MEG1";
/// Ops written before the group file is compacted (if they outnumber the
/// pending events four to one).
const COMPACT_AFTER: u64 = 16_384;
/// Events read ahead from the log per group.
const READAHEAD: usize = 64;
/// Bytes read ahead from the log per group, about.
const READAHEAD_BYTES: u64 = 1 << 20;

/// A change of a group's state, as written to its file.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    /// Snapshot: every event before this sequence number was delivered, and
    /// is done unless listed as pending.
    Cursor(u64),
    /// Snapshot: an event not yet acked, its deliveries and last error.
    Pending(u64, u32, Option<String>),
    /// The event was delivered once more.
    Delivered(u64),
    /// A delivery of the event failed with this error.
    Failed(u64, String),
    /// The event is done.
    Acked(u64),
}

/// An event delivered and not yet acked.
#[derive(Debug)]
struct Pending {
    /// Deliveries so far.
    attempts: u32,
    /// The last error given with a nack.
    error: Option<String>,
    /// Where it is in the log, when known.
    pos: Option<u64>,
    /// Held by a consumer (`when` is its ack deadline), or waiting to be
    /// redelivered (`when` is when it is due).
    out: bool,
    when: Instant,
}

/// The mutable state of a group.
#[derive(Debug)]
struct State {
    /// The group file, open for appending.
    file: File,
    /// Ops written since the last snapshot.
    ops: u64,
    /// The sequence number after the last event ever delivered.
    cursor: u64,
    /// Where in the log the read-ahead stops.
    read_pos: u64,
    /// Events read from the log, not yet delivered.
    readahead: VecDeque<Rec>,
    pending: BTreeMap<u64, Pending>,
    /// `(when, seq)` of every pending event.
    timers: BTreeSet<(Instant, u64)>,
}

impl State {
    fn write(&mut self, op: &Op) -> io::Result<()> {
        let mut buf = Vec::with_capacity(32);
        append_op(op, &mut buf);
        self.file.write_all(&buf)?;
        self.ops += 1;
        Ok(())
    }

    fn schedule(&mut self, seq: u64, out: bool, when: Instant) {
        if let Some(p) = self.pending.get_mut(&seq) {
            self.timers.remove(&(p.when, seq));
            p.out = out;
            p.when = when;
            self.timers.insert((when, seq));
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(p) = self.pending.remove(&seq) {
            self.timers.remove(&(p.when, seq));
        }
    }

    fn snapshot(&self) -> impl Iterator<Item = Op> + '_ {
        snapshot(self.cursor, &self.pending)
    }
}

/// The ops that restore a cursor and pending events.
fn snapshot(cursor: u64, pending: &BTreeMap<u64, Pending>) -> impl Iterator<Item = Op> + '_ {
    std::iter::once(Op::Cursor(cursor)).chain(
        pending
            .iter()
            .map(|(&seq, p)| Op::Pending(seq, p.attempts, p.error.clone())),
    )
}

fn append_op(op: &Op, out: &mut Vec<u8>) {
    let body = rmp_serde::to_vec(op).expect("ops always encode");
    frame(GROUP_MAGIC, &body, out);
}

/// Replaces the group file with `ops`, durably, and opens it for appending.
fn write_snapshot(path: &Path, ops: impl Iterator<Item = Op>) -> io::Result<File> {
    let mut buf = Vec::new();
    for op in ops {
        append_op(&op, &mut buf);
    }
    let tmp = path.with_extension("group.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    OpenOptions::new().append(true).open(path)
}

/// Replays a group file: the cursor and the pending events (attempts, error).
type Replayed = (u64, BTreeMap<u64, (u32, Option<String>)>);

fn replay(path: &Path) -> io::Result<Replayed> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut scanner = Scanner::new(&file, GROUP_MAGIC, 0, len);
    let (mut cursor, mut pending) = (0, BTreeMap::new());
    while let Some(item) = scanner.next()? {
        let body = match item {
            Scanned::Record { body, .. } => body,
            Scanned::Corrupt { pos, next } => {
                tracing::warn!(path = %path.display(), from = pos, to = next, "events: skipping corrupt bytes in a group file");
                continue;
            }
            // A write cut short by a crash: the snapshot written next drops it.
            Scanned::Torn { .. } => break,
        };
        match rmp_serde::from_slice::<Op>(body) {
            Ok(Op::Cursor(c)) => cursor = c,
            Ok(Op::Pending(seq, attempts, error)) => {
                pending.insert(seq, (attempts, error));
            }
            Ok(Op::Delivered(seq)) => {
                pending.entry(seq).or_insert((0, None)).0 += 1;
                cursor = cursor.max(seq + 1);
            }
            Ok(Op::Failed(seq, error)) => {
                if let Some(p) = pending.get_mut(&seq) {
                    p.1 = Some(error);
                }
            }
            Ok(Op::Acked(seq)) => {
                pending.remove(&seq);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "events: skipping an unreadable group op");
            }
        }
    }
    Ok((cursor, pending))
}

/// What a consumer does next.
#[derive(Debug)]
enum Pick {
    /// Hand out this event (read from the log if `rec` is `None`).
    Deliver {
        seq: u64,
        rec: Option<Rec>,
        pos: Option<u64>,
        attempt: u32,
    },
    /// Its attempts are used up: move it to the dead-letter topic.
    DeadLetter {
        seq: u64,
        pos: Option<u64>,
        attempts: u32,
        error: Option<String>,
    },
    /// Read more events from the log.
    Refill,
    /// Nothing to do before new events, a change, or this time.
    Wait(Option<Instant>),
}

/// A consumer group of one topic, shared by its consumers in this process.
pub(crate) struct Group {
    events: Arc<Inner>,
    topic: Arc<TopicLog>,
    name: String,
    path: PathBuf,
    state: Mutex<State>,
    /// Bumped when an event becomes deliverable again.
    changed: watch::Sender<u64>,
    /// Held while reading ahead, so one consumer does it at a time.
    refill: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("topic", &self.topic.name())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Opens the group, creating it at `start` if it is new. Blocking.
    pub(crate) fn open(
        events: Arc<Inner>,
        topic: Arc<TopicLog>,
        name: &str,
        path: PathBuf,
        start: &StartAt,
    ) -> Result<Group> {
        let fail = |e: io::Error| {
            Error::internal(
                ERROR_ID,
                format!(
                    "cannot open consumer group `{name}` of topic `{}` ({}): {e}",
                    topic.name(),
                    path.display()
                ),
            )
        };
        let (cursor, pending) = if path.exists() {
            replay(&path).map_err(fail)?
        } else {
            (Self::start_seq(&topic, start)?, BTreeMap::new())
        };
        let next_seq = topic.next_seq();
        if cursor > next_seq {
            tracing::warn!(
                topic = topic.name(),
                group = name,
                cursor,
                next_seq,
                "events: the group is ahead of its topic log (was the log's tail lost?)"
            );
        }
        let (_, read_pos) = topic.find(|seq, _| seq >= cursor)?;
        let now = Instant::now();
        let mut timers = BTreeSet::new();
        let pending: BTreeMap<u64, Pending> = pending
            .into_iter()
            .map(|(seq, (attempts, error))| {
                timers.insert((now, seq));
                let p = Pending {
                    attempts,
                    error,
                    pos: None,
                    out: false,
                    when: now,
                };
                (seq, p)
            })
            .collect();
        let file = write_snapshot(&path, snapshot(cursor, &pending)).map_err(fail)?;
        let state = State {
            file,
            ops: 0,
            cursor,
            read_pos,
            readahead: VecDeque::new(),
            pending,
            timers,
        };
        let (changed, _) = watch::channel(0);
        Ok(Group {
            events,
            topic,
            name: name.to_owned(),
            path,
            state: Mutex::new(state),
            changed,
            refill: tokio::sync::Mutex::new(()),
        })
    }

    /// The first sequence number a new group delivers.
    fn start_seq(topic: &TopicLog, start: &StartAt) -> Result<u64> {
        Ok(match start {
            StartAt::Earliest => topic.find(|_, _| true)?.0,
            StartAt::Latest => topic.next_seq(),
            StartAt::Time(t) => {
                let ms = super::log::millis(*t);
                topic.find(|_, ts| ts >= ms)?.0
            }
            StartAt::Id(id) => {
                let id: u64 = id.trim().parse().map_err(|_| {
                    Error::bad_request(
                        ERROR_ID,
                        format!("StartAt::Id(`{id}`): file-log event ids are decimal numbers"),
                    )
                })?;
                topic.find(|seq, _| seq >= id)?.0
            }
        })
    }

    /// A consumer of this group.
    pub(crate) fn consumer(self: Arc<Self>, opts: ConsumeOptions) -> Consumer {
        let state = ConsumerState {
            permits: Arc::new(Semaphore::new(opts.prefetch)),
            appended: self.topic.subscribe(),
            changed: self.changed.subscribe(),
            opts: Arc::new(opts),
            group: self,
        };
        let (topic, group) = (
            state.group.topic.name().to_owned(),
            state.group.name.clone(),
        );
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let next = state.next().await;
            Some((next, state))
        });
        Consumer::new(topic, group, stream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("group lock")
    }

    fn write_error(&self, e: io::Error) -> Error {
        Error::internal(
            ERROR_ID,
            format!(
                "cannot write consumer group `{}` of topic `{}` ({}): {e}",
                self.name,
                self.topic.name(),
                self.path.display()
            ),
        )
    }

    fn wake(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Decides what a consumer does next, claiming an event if there is one.
    fn pick(&self, opts: &ConsumeOptions) -> Result<Pick> {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(&(_, seq)) = st.timers.first().filter(|(when, _)| *when <= now) {
            let p = st.pending.get_mut(&seq).expect("timers follow pending");
            if p.out && p.error.is_none() {
                p.error = Some(format!("not acked within {:?}", opts.ack_wait));
            }
            let (attempts, pos, error) = (p.attempts, p.pos, p.error.clone());
            if attempts >= opts.max_attempts {
                // Held while it is moved to the dead-letter topic.
                st.schedule(seq, true, now + opts.ack_wait);
                return Ok(Pick::DeadLetter {
                    seq,
                    pos,
                    attempts,
                    error,
                });
            }
            st.write(&Op::Delivered(seq))
                .map_err(|e| self.write_error(e))?;
            st.pending.get_mut(&seq).expect("pending").attempts += 1;
            st.schedule(seq, true, now + opts.ack_wait);
            return Ok(Pick::Deliver {
                seq,
                rec: None,
                pos,
                attempt: attempts + 1,
            });
        }
        if let Some(rec) = st.readahead.pop_front() {
            if let Err(e) = st.write(&Op::Delivered(rec.seq)) {
                st.readahead.push_front(rec);
                return Err(self.write_error(e));
            }
            let (seq, when) = (rec.seq, now + opts.ack_wait);
            st.cursor = st.cursor.max(seq + 1);
            let p = Pending {
                attempts: 1,
                error: None,
                pos: Some(rec.pos),
                out: true,
                when,
            };
            if let Some(old) = st.pending.insert(seq, p) {
                st.timers.remove(&(old.when, seq));
            }
            st.timers.insert((when, seq));
            return Ok(Pick::Deliver {
                seq,
                pos: Some(rec.pos),
                rec: Some(rec),
                attempt: 1,
            });
        }
        if st.read_pos < self.topic.end() {
            return Ok(Pick::Refill);
        }
        Ok(Pick::Wait(st.timers.first().map(|&(when, _)| when)))
    }

    /// Reads ahead from the log, if the read-ahead is empty.
    async fn refill(&self) -> Result<()> {
        let _one = self.refill.lock().await;
        let from = {
            let st = self.lock();
            if !st.readahead.is_empty() {
                return Ok(());
            }
            st.read_pos
        };
        let topic = Arc::clone(&self.topic);
        let (recs, next) =
            blocking(move || topic.read_batch(from, READAHEAD, READAHEAD_BYTES)).await?;
        let mut st = self.lock();
        st.readahead.extend(recs);
        st.read_pos = next;
        Ok(())
    }

    /// Reads a pending event back from the log; `None` (and the event
    /// forgotten) if it is no longer there.
    async fn read(&self, seq: u64, pos: Option<u64>) -> Result<Option<Rec>> {
        let topic = Arc::clone(&self.topic);
        let rec = blocking(move || {
            let pos = match pos {
                Some(pos) => pos,
                None => topic.find(|s, _| s >= seq)?.1,
            };
            Ok(topic.read_at(pos)?.filter(|r| r.seq == seq))
        })
        .await?;
        let mut st = self.lock();
        match &rec {
            Some(rec) => {
                if let Some(p) = st.pending.get_mut(&seq) {
                    p.pos = Some(rec.pos);
                }
            }
            None => {
                tracing::warn!(
                    topic = self.topic.name(), group = %self.name, id = seq,
                    "events: a pending event is no longer in the log (corrupt?); dropping it"
                );
                st.write(&Op::Acked(seq)).map_err(|e| self.write_error(e))?;
                st.remove(seq);
            }
        }
        Ok(rec)
    }

    fn event(&self, rec: Rec, attempt: u32) -> Event {
        Event {
            id: rec.seq.to_string(),
            topic: self.topic.name().to_owned(),
            payload: rec.payload,
            metadata: rec.metadata,
            timestamp: UNIX_EPOCH + Duration::from_millis(rec.ts_ms),
            attempt,
        }
    }

    /// Marks an event done.
    fn ack(&self, seq: u64) -> Result<()> {
        let mut st = self.lock();
        if !st.pending.contains_key(&seq) {
            return Ok(());
        }
        st.write(&Op::Acked(seq)).map_err(|e| self.write_error(e))?;
        st.remove(seq);
        if st.ops > COMPACT_AFTER && st.ops > 4 * st.pending.len() as u64 {
            st.ops = 0;
            match write_snapshot(&self.path, st.snapshot()) {
                Ok(file) => st.file = file,
                Err(e) => tracing::warn!(
                    group = %self.name, error = %e,
                    "events: cannot compact a group file; will try again later"
                ),
            }
        }
        Ok(())
    }

    /// Settles a failed delivery: schedules the redelivery, or returns the
    /// error to dead-letter the event with when its attempts are used up.
    /// `None` if this delivery no longer holds the event.
    fn fail(
        &self,
        seq: u64,
        attempt: u32,
        error: Option<String>,
        opts: &ConsumeOptions,
    ) -> Result<Option<(bool, Option<String>)>> {
        let now = Instant::now();
        let mut st = self.lock();
        match st.pending.get(&seq) {
            Some(p) if p.out && p.attempts == attempt => {}
            _ => return Ok(None),
        }
        if let Some(e) = &error {
            st.write(&Op::Failed(seq, e.clone()))
                .map_err(|e| self.write_error(e))?;
        }
        let p = st.pending.get_mut(&seq).expect("checked");
        if error.is_some() {
            p.error = error;
        }
        let error = p.error.clone();
        let dead = p.attempts >= opts.max_attempts;
        let when = if dead {
            now + opts.ack_wait
        } else {
            now + opts.backoff(attempt)
        };
        st.schedule(seq, dead, when);
        Ok(Some((dead, error)))
    }

    /// Appends the event to the dead-letter topic, then acks it here.
    async fn dead_letter(
        &self,
        event: Event,
        attempts: u32,
        error: Option<String>,
        opts: &ConsumeOptions,
    ) -> Result<()> {
        let seq: u64 = event.id.parse().expect("file-log ids are numbers");
        let topic = opts.dead_letter_topic(self.topic.name());
        let mut metadata = event.metadata;
        metadata.insert(DEAD_TOPIC_KEY.into(), event.topic.clone());
        metadata.insert(DEAD_ID_KEY.into(), event.id.clone());
        metadata.insert(DEAD_GROUP_KEY.into(), self.name.clone());
        metadata.insert(DEAD_ATTEMPTS_KEY.into(), attempts.to_string());
        if let Some(e) = &error {
            metadata.insert(DEAD_ERROR_KEY.into(), e.clone());
        }
        match self.events.publish(&topic, event.payload, metadata).await {
            Ok(id) => {
                tracing::warn!(
                    topic = %event.topic, group = %self.name, id = %event.id, attempts,
                    error = error.as_deref().unwrap_or(""), dead_letter = %topic, dead_id = id,
                    "events: gave up on an event; moved it to the dead-letter topic"
                );
                self.ack(seq)
            }
            Err(e) => {
                let retry = Instant::now() + opts.backoff(attempts);
                self.lock().schedule(seq, false, retry);
                Err(e)
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(st) = self.state.get_mut() {
            let _ = st.file.sync_data();
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(ERROR_ID, format!("events I/O task failed: {e}")))?
}

/// What one consumer keeps between deliveries.
#[derive(Debug)]
struct ConsumerState {
    group: Arc<Group>,
    opts: Arc<ConsumeOptions>,
    /// One permit per delivery held: the prefetch bound.
    permits: Arc<Semaphore>,
    appended: watch::Receiver<u64>,
    changed: watch::Receiver<u64>,
}

impl ConsumerState {
    async fn next(&mut self) -> Result<Delivery> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let group = Arc::clone(&self.group);
        loop {
            // Seen before looking, so a change after the look wakes the wait.
            self.appended.borrow_and_update();
            self.changed.borrow_and_update();
            match group.pick(&self.opts)? {
                Pick::Deliver {
                    seq,
                    rec,
                    pos,
                    attempt,
                } => {
                    let rec = match rec {
                        Some(rec) => rec,
                        None => match group.read(seq, pos).await? {
                            Some(rec) => rec,
                            None => continue,
                        },
                    };
                    let event = group.event(rec, attempt);
                    let settle = FileDelivery {
                        group,
                        seq,
                        attempt,
                        opts: Arc::clone(&self.opts),
                        _permit: permit,
                    };
                    return Ok(Delivery::new(event, Box::new(settle)));
                }
                Pick::DeadLetter {
                    seq,
                    pos,
                    attempts,
                    error,
                } => {
                    if let Some(rec) = group.read(seq, pos).await? {
                        let event = group.event(rec, attempts);
                        group
                            .dead_letter(event, attempts, error, &self.opts)
                            .await?;
                    }
                }
                Pick::Refill => group.refill().await?,
                Pick::Wait(until) => {
                    let sleep = async {
                        match until {
                            Some(t) => tokio::time::sleep_until(t.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.appended.changed() => {}
                        _ = self.changed.changed() => {}
                        () = sleep => {}
                    }
                }
            }
        }
    }
}

/// The file log's side of a [`Delivery`].
#[derive(Debug)]
struct FileDelivery {
    group: Arc<Group>,
    seq: u64,
    attempt: u32,
    opts: Arc<ConsumeOptions>,
    /// Released when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acknowledge for FileDelivery {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.group.ack(self.seq)
    }

    async fn nack(self: Box<Self>, event: Event, error: Option<String>) -> Result<()> {
        match self.group.fail(self.seq, self.attempt, error, &self.opts)? {
            Some((true, error)) => {
                self.group
                    .dead_letter(event, self.attempt, error, &self.opts)
                    .await
            }
            Some((false, _)) => {
                self.group.wake();
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn abandon(self: Box<Self>) {
        let error = Some("dropped without ack or nack".to_owned());
        // Only the state changes here (no I/O); a due event that has used up
        // its attempts is dead-lettered by the consumer that picks it up.
        let now = Instant::now();
        let mut st = self.group.lock();
        if let Some(p) = st.pending.get_mut(&self.seq) {
            if p.out && p.attempts == self.attempt {
                p.error = error;
                st.schedule(self.seq, false, now + self.opts.backoff(self.attempt));
                drop(st);
                self.group.wake();
            }
        }
    }
}
