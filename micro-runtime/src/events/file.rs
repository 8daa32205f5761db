//! The embedded, file-backed event log: the default [`Events`] backend.

use super::group::Group;
use super::log::{sync_dir, TopicLog};
use super::{check_name, ConsumeOptions, Consumer, Events, Metadata, ERROR_ID};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// The embedded event log in a local directory: the default [`Events`] backend.
///
/// One process owns a directory at a time: it stays locked while the
/// `FileEvents` (or a clone), or any consumer or delivery made from it, is
/// alive. Consumers of one group therefore share its events within this
/// process.
///
/// # On disk
///
/// ```text
/// <dir>/LOCK                          locked (flock / LockFileEx) by the owner; holds its pid
/// <dir>/topics/<topic>/events.log     the topic's append-only log
/// <dir>/topics/<topic>/<group>.group  a consumer group's state
/// ```
///
/// Both kinds of file are sequences of framed records:
/// `magic: 4 bytes | len: u32 LE | crc32(len bytes ++ body): u32 LE | body`.
/// In a topic log the magic is `MEV1` and the body the MessagePack array
/// `[seq: u64, timestamp_ms: u64, metadata: map, payload: bin]`; `seq` counts
/// from 1 in each topic and is the event's id. In a group file the magic is
/// `MEG1` and the body a MessagePack op: a snapshot (`Cursor(seq)`: everything
/// before was delivered; `Pending(seq, attempts, error)`: not acked yet), then
/// `Delivered(seq)`, `Failed(seq, error)` and `Acked(seq)` as they happen. A
/// group file is rewritten as a snapshot when opened and every 16 Ki ops.
///
/// # Durability and recovery
///
/// A publish returns once its record is written and `fsync`ed; publishes that
/// arrive during an `fsync` are written together and synced once (group
/// commit). Group ops are written without `fsync`: a killed process loses none,
/// a power cut may lose the latest acks (meaning redeliveries, not losses).
///
/// Opening scans every log: a record with a bad checksum is skipped with a
/// warning when good records follow it, and a torn tail (a write cut short by
/// a crash) is truncated. The scan rebuilds a sparse index (a position every
/// 64 KiB); reads then go to the file through it, with a small read-ahead per
/// group, so logs are never held in memory.
///
/// There is one file per topic and no retention yet: a log grows until it is
/// deleted (with the process stopped).
#[derive(Debug, Clone)]
pub struct FileEvents {
    inner: Arc<Inner>,
}

/// What a [`FileEvents`] and its consumer groups share.
#[derive(Debug)]
pub(crate) struct Inner {
    dir: PathBuf,
    lock: Arc<File>,
    topics: Mutex<HashMap<String, Arc<TopicLog>>>,
    groups: Mutex<HashMap<(String, String), Weak<Group>>>,
}

impl FileEvents {
    /// The directory used when `MICRO_EVENTS_DIR` is not set, relative to the
    /// working directory.
    pub const DEFAULT_DIR: &'static str = ".micro/events";

    /// Opens (creating if needed) the log in `dir`, taking its lock and
    /// recovering every topic. Blocking: it reads every log once.
    ///
    /// Fails with a `409` if another process (or another `FileEvents` in this
    /// one) has the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileEvents> {
        let dir = dir.as_ref().to_path_buf();
        let io_error = |what: &str, path: &Path, e: std::io::Error| {
            Error::internal(ERROR_ID, format!("cannot {what} {}: {e}", path.display()))
        };
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| io_error("create the events directory", &topics_dir, e))?;
        let lock = lock_dir(&dir)?;
        let mut topics = HashMap::new();
        let entries = std::fs::read_dir(&topics_dir)
            .map_err(|e| io_error("list the topics in", &topics_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list the topics in", &topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let log = entry.path().join("events.log");
            if check_name("topic", &name).is_err() || !log.is_file() {
                tracing::warn!(path = %entry.path().display(), "events: ignoring a stray entry among the topics");
                continue;
            }
            let topic = TopicLog::open(&name, log, Arc::clone(&lock))?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(FileEvents {
            inner: Arc::new(Inner {
                dir,
                lock,
                topics: Mutex::new(topics),
                groups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Opens the directory named by `MICRO_EVENTS_DIR`, or [`Self::DEFAULT_DIR`].
    pub fn from_env() -> Result<FileEvents> {
        let dir = crate::env::var("MICRO_EVENTS_DIR").unwrap_or_else(|| Self::DEFAULT_DIR.into());
        Self::open(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// Takes the directory's lock file, or says who has it.
fn lock_dir(dir: &Path) -> Result<Arc<File>> {
    let path = dir.join("LOCK");
    let fail = |e: std::io::Error| {
        Error::internal(
            ERROR_ID,
            format!("cannot lock the events directory ({}): {e}", path.display()),
        )
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(fail)?;
    // Called through the trait: `File::try_lock` is newer than this crate's MSRV.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(Error::conflict(
                ERROR_ID,
                format!(
                    "the events directory {} is in use by another process{holder}: its lock \
                     file is held. One process owns an events directory at a time; give \
                     each service its own MICRO_EVENTS_DIR",
                    dir.display()
                ),
            ));
        }
        Err(fs4::TryLockError::Error(e)) => return Err(fail(e)),
    }
    file.set_len(0).map_err(fail)?;
    write!(file, "{}", std::process::id()).map_err(fail)?;
    Ok(Arc::new(file))
}

impl Inner {
    /// The log of a topic, created if new.
    fn topic(&self, name: &str) -> Result<Arc<TopicLog>> {
        check_name("topic", name)?;
        let mut topics = self.topics.lock().expect("topics lock");
        if let Some(t) = topics.get(name) {
            return Ok(Arc::clone(t));
        }
        let topics_dir = self.dir.join("topics");
        let dir = topics_dir.join(name);
        let created = std::fs::create_dir_all(&dir)
            .and_then(|()| sync_dir(&topics_dir))
            .map_err(|e| {
                Error::internal(
                    ERROR_ID,
                    format!("cannot create topic `{name}` ({}): {e}", dir.display()),
                )
            });
        created?;
        let log = Arc::new(TopicLog::open(
            name,
            dir.join("events.log"),
            Arc::clone(&self.lock),
        )?);
        sync_dir(&dir).map_err(|e| {
            Error::internal(ERROR_ID, format!("cannot sync {}: {e}", dir.display()))
        })?;
        topics.insert(name.to_owned(), Arc::clone(&log));
        Ok(log)
    }

    /// Appends an event; its id once durable.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        metadata: Metadata,
    ) -> Result<String> {
        let log = self.topic(topic)?;
        Ok(log.append(payload, metadata).await?.to_string())
    }
}

#[async_trait]
impl Events for FileEvents {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<String> {
        self.inner.publish(topic, payload, metadata).await
    }

    async fn consume(&self, topic: &str, opts: ConsumeOptions) -> Result<Consumer> {
        opts.validate(topic)?;
        let log = self.inner.topic(topic)?;
        let key = (topic.to_owned(), opts.group.clone());
        let group = {
            let mut groups = self.inner.groups.lock().expect("groups lock");
            match groups.get(&key).and_then(Weak::upgrade) {
                Some(group) => group,
                None => {
                    let path = self
                        .inner
                        .dir
                        .join("topics")
                        .join(topic)
                        .join(format!("{}.group", opts.group));
                    let group = Arc::new(Group::open(
                        Arc::clone(&self.inner),
                        log,
                        &opts.group,
                        path,
                        &opts.start,
                    )?);
                    groups.insert(key, Arc::downgrade(&group));
                    group
                }
            }
        };
        Ok(group.consumer(opts))
    }
}
