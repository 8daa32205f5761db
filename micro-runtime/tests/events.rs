//! The event streams and their embedded file log: delivery semantics, restarts,
//! crash safety and recovery from damaged files.

mod common;
use common::{drain, earliest, md, next, none_within, publish, text, TempDir, WAIT};

use bytes::Bytes;
use micro_runtime::events::{
    self, ConsumeOptions, Events, FileEvents, StartAt, DEAD_ATTEMPTS_KEY, DEAD_ERROR_KEY,
    DEAD_GROUP_KEY, DEAD_ID_KEY, DEAD_TOPIC_KEY,
};
use micro_runtime::Metadata;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The log file of `topic` in the directory of a file log.
fn log_file(dir: &TempDir, topic: &str) -> PathBuf {
    dir.0.join("topics").join(topic).join("events.log")
}

#[tokio::test]
async fn round_trip_with_metadata() {
    let dir = TempDir::new("roundtrip");
    let events = FileEvents::open(&dir.0).unwrap();
    assert_eq!(events.name(), "file");
    let before = SystemTime::now() - Duration::from_secs(1);
    let id1 = events
        .publish(
            "orders",
            Bytes::from_static(b"one"),
            md(&[("k", "v"), ("n", "1")]),
        )
        .await
        .unwrap();
    let id2 = publish(&events, "orders", "two").await;
    assert_eq!((id1.as_str(), id2.as_str()), ("1", "2"));

    let mut consumer = events.consume("orders", earliest("g")).await.unwrap();
    assert_eq!((consumer.topic(), consumer.group()), ("orders", "g"));
    let d = next(&mut consumer).await;
    let e = d.event();
    assert_eq!(
        (e.id.as_str(), e.topic.as_str(), e.attempt),
        ("1", "orders", 1)
    );
    assert_eq!(&e.payload[..], b"one");
    assert_eq!(e.metadata, md(&[("k", "v"), ("n", "1")]));
    assert!(e.timestamp >= before && e.timestamp <= SystemTime::now() + Duration::from_secs(1));
    d.ack().await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!((d.event().id.as_str(), text(&d).as_str()), ("2", "two"));
    d.ack().await.unwrap();

    // Waiting consumers see new events.
    let waiter = tokio::spawn(async move {
        let d = next(&mut consumer).await;
        let t = text(&d);
        d.ack().await.unwrap();
        t
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&events, "orders", "three").await;
    assert_eq!(waiter.await.unwrap(), "three");
}

#[tokio::test]
async fn typed_events_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Created {
        id: u64,
        name: String,
    }
    let dir = TempDir::new("typed");
    let events: Arc<dyn Events> = Arc::new(FileEvents::open(&dir.0).unwrap());
    let value = Created {
        id: 7,
        name: "ada".into(),
    };
    events::publish_typed(&*events, "users", &value)
        .await
        .unwrap();
    let mut consumer = events.consume("users", earliest("g")).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.event().metadata["Content-Type"], "application/msgpack");
    assert_eq!(d.event().decode::<Created>().unwrap(), value);
    assert_eq!(d.event().decode::<Vec<String>>().unwrap_err().code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_each_get_every_event_and_share_them_within() {
    const N: usize = 1000;
    let dir = TempDir::new("groups");
    let events = FileEvents::open(&dir.0).unwrap();
    let a = events
        .consume("t", ConsumeOptions::new("shared"))
        .await
        .unwrap();
    let b = events
        .consume("t", ConsumeOptions::new("shared"))
        .await
        .unwrap();
    let c = events
        .consume("t", ConsumeOptions::new("alone"))
        .await
        .unwrap();
    let shared = Arc::new(Mutex::new(Vec::new()));
    let alone = Arc::new(Mutex::new(Vec::new()));
    let tasks = [
        drain("a", a, Arc::clone(&shared), N),
        drain("b", b, Arc::clone(&shared), N),
        drain("c", c, Arc::clone(&alone), N),
    ];
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let events = events.clone();
            tokio::spawn(async move {
                for i in (p..N).step_by(4) {
                    publish(&events, "t", &i.to_string()).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    let expected: BTreeSet<String> = (0..N).map(|i| i.to_string()).collect();
    for seen in [&shared, &alone] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), N, "every event once, none twice");
        let got: BTreeSet<String> = seen.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(got, expected);
    }
    let shared = shared.lock().unwrap();
    let by_a = shared.iter().filter(|(n, _)| *n == "a").count();
    assert!(
        by_a > 0 && by_a < N,
        "both consumers of the group got work: a={by_a}"
    );
}

#[tokio::test]
async fn nacks_are_retried_then_dead_lettered() {
    let dir = TempDir::new("nack");
    let events = FileEvents::open(&dir.0).unwrap();
    let opts = earliest("g")
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(5));
    let bad = events
        .publish("jobs", Bytes::from_static(b"bad"), md(&[("trace", "x")]))
        .await
        .unwrap();
    publish(&events, "jobs", "good").await;
    let mut consumer = events.consume("jobs", opts).await.unwrap();
    let mut attempts = Vec::new();
    let mut good = false;
    while !(good && attempts.len() == 3) {
        let d = next(&mut consumer).await;
        if text(&d) == "bad" {
            attempts.push(d.event().attempt);
            d.nack_with(format!("boom {}", attempts.len()))
                .await
                .unwrap();
        } else {
            assert!(!good, "the good event came once");
            good = true;
            d.ack().await.unwrap();
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    publish(&events, "jobs", "next").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "next", "the group went on");
    d.ack().await.unwrap();

    let mut dead = events.consume("jobs.dead", earliest("ops")).await.unwrap();
    let d = next(&mut dead).await;
    let m = &d.event().metadata;
    assert_eq!(text(&d), "bad");
    assert_eq!(m[DEAD_TOPIC_KEY], "jobs");
    assert_eq!(m[DEAD_ID_KEY], bad);
    assert_eq!(m[DEAD_GROUP_KEY], "g");
    assert_eq!(m[DEAD_ATTEMPTS_KEY], "3");
    assert_eq!(m[DEAD_ERROR_KEY], "boom 3");
    assert_eq!(m["trace"], "x", "the original metadata is kept");
    d.ack().await.unwrap();
    none_within(&mut dead, Duration::from_millis(100)).await;
    none_within(&mut consumer, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn unacked_deliveries_come_back_after_ack_wait() {
    let dir = TempDir::new("ackwait");
    let events = FileEvents::open(&dir.0).unwrap();
    publish(&events, "t", "slow").await;
    let opts = earliest("g").ack_wait(Duration::from_millis(200));
    let mut consumer = events.consume("t", opts).await.unwrap();
    let first = next(&mut consumer).await;
    let started = Instant::now();
    let again = next(&mut consumer).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!((again.event().id.as_str(), again.event().attempt), ("1", 2));
    // A late ack of the first delivery still counts; the second is then moot.
    first.ack().await.unwrap();
    again.ack().await.unwrap();
    none_within(&mut consumer, Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_dropped_delivery_is_a_nack() {
    let dir = TempDir::new("drop");
    let events = FileEvents::open(&dir.0).unwrap();
    publish(&events, "t", "x").await;
    let opts = earliest("g").retry_backoff(Duration::from_millis(1));
    let mut consumer = events.consume("t", opts).await.unwrap();
    drop(next(&mut consumer).await);
    let started = Instant::now();
    let d = next(&mut consumer).await;
    assert_eq!(d.event().attempt, 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not left for ack_wait"
    );
    d.ack().await.unwrap();
}

#[tokio::test]
async fn prefetch_bounds_what_a_consumer_holds() {
    let dir = TempDir::new("prefetch");
    let events = FileEvents::open(&dir.0).unwrap();
    for i in 0..5 {
        publish(&events, "t", &i.to_string()).await;
    }
    let mut consumer = events
        .consume("t", earliest("g").prefetch(2))
        .await
        .unwrap();
    let d1 = next(&mut consumer).await;
    let _d2 = next(&mut consumer).await;
    none_within(&mut consumer, Duration::from_millis(200)).await;
    d1.ack().await.unwrap();
    assert_eq!(text(&next(&mut consumer).await), "2");
}

#[tokio::test]
async fn new_groups_start_where_asked() {
    let dir = TempDir::new("start");
    let events = FileEvents::open(&dir.0).unwrap();
    for p in ["a", "b"] {
        publish(&events, "t", p).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for p in ["c", "d"] {
        publish(&events, "t", p).await;
    }
    let cases = [
        (StartAt::Earliest, "a"),
        (StartAt::Id("2".into()), "b"),
        (StartAt::Time(mid), "c"),
    ];
    for (i, (start, first)) in cases.into_iter().enumerate() {
        let opts = ConsumeOptions::new(format!("g{i}")).start(start);
        let mut consumer = events.consume("t", opts).await.unwrap();
        assert_eq!(text(&next(&mut consumer).await), first);
    }
    let mut latest = events
        .consume("t", ConsumeOptions::new("latest"))
        .await
        .unwrap();
    none_within(&mut latest, Duration::from_millis(100)).await;
    publish(&events, "t", "e").await;
    assert_eq!(text(&next(&mut latest).await), "e");
    let bad = ConsumeOptions::new("bad").start(StartAt::Id("x-1".into()));
    assert_eq!(events.consume("t", bad).await.unwrap_err().code, 400);
}

#[tokio::test]
async fn groups_resume_after_a_restart() {
    let dir = TempDir::new("restart");
    {
        let events = FileEvents::open(&dir.0).unwrap();
        // A Latest group created before the events: they are its.
        drop(events.consume("t", ConsumeOptions::new("g")).await.unwrap());
        for i in 1..=10 {
            publish(&events, "t", &i.to_string()).await;
        }
        let mut consumer = events.consume("t", ConsumeOptions::new("g")).await.unwrap();
        for i in 1..=5 {
            let d = next(&mut consumer).await;
            assert_eq!(text(&d), i.to_string());
            d.ack().await.unwrap();
        }
        // Delivered, never acked when everything goes away.
        let held = [next(&mut consumer).await, next(&mut consumer).await];
        drop(held);
    }
    let events = FileEvents::open(&dir.0).expect("the lock was released");
    let mut consumer = events.consume("t", ConsumeOptions::new("g")).await.unwrap();
    let mut got = Vec::new();
    for _ in 6..=10 {
        let d = next(&mut consumer).await;
        got.push((text(&d), d.event().attempt));
        d.ack().await.unwrap();
    }
    let expected: Vec<(String, u32)> = [(6, 2), (7, 2), (8, 1), (9, 1), (10, 1)]
        .into_iter()
        .map(|(i, a)| (i.to_string(), a))
        .collect();
    assert_eq!(got, expected);
    none_within(&mut consumer, Duration::from_millis(100)).await;
    assert_eq!(publish(&events, "t", "11").await, "11");
}

/// Set in the child process of [`acknowledged_work_survives_sigkill`]: the
/// events directory it works in.
const CRASH_CHILD: &str = "MICRO_EVENTS_TEST_CRASH_CHILD";
const CRASH_TEST: &str = "acknowledged_work_survives_sigkill";

/// The payload of a crash-test event: its tag, then `len` filler bytes.
fn crash_payload(tag: &str, len: usize) -> Vec<u8> {
    let mut p = tag.as_bytes().to_vec();
    p.push(b':');
    p.extend(std::iter::repeat_n(tag.as_bytes()[0], len));
    p
}

/// The child: publishes from 8 tasks and consumes in group `worker` until
/// killed, printing each id as soon as its publish or ack returns.
fn crash_child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let events = FileEvents::open(dir).unwrap();
        let say = |line: String| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        };
        // Bounded in case the parent is gone.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks: Vec<_> = (0..8)
            .map(|task| {
                let events = events.clone();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let tag = format!("{task}-{i}-{}", std::process::id());
                        let len = rand::random_range(0..48 << 10);
                        let payload = crash_payload(&tag, len);
                        let id = events
                            .publish("crash", payload.into(), Metadata::new())
                            .await
                            .unwrap();
                        say(format!("PUBLISHED {id} {tag} {len}"));
                        i += 1;
                    }
                })
            })
            .collect();
        let mut consumer = events
            .consume("crash", earliest("worker").prefetch(16))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let d = next(&mut consumer).await;
                let id = d.event().id.clone();
                d.ack().await.unwrap();
                say(format!("ACKED {id}"));
            }
        }));
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// What the crash-test child said it did.
#[derive(Debug, Default)]
struct ChildSaid {
    /// Acknowledged publishes: id -> (tag, filler length).
    published: BTreeMap<u64, (String, usize)>,
    /// Acks that returned.
    acked: BTreeSet<u64>,
}

impl ChildSaid {
    /// Notes a line; true if it was a publish.
    fn note(&mut self, line: &str) -> bool {
        if let Some(rest) = line.strip_prefix("PUBLISHED ") {
            let mut parts = rest.split(' ');
            let id: u64 = parts.next().unwrap().parse().unwrap();
            let tag = parts.next().unwrap().to_owned();
            let len: usize = parts.next().unwrap().parse().unwrap();
            let fresh = self.published.insert(id, (tag, len)).is_none();
            assert!(fresh, "id {id} given twice");
            true
        } else {
            if let Some(id) = line.strip_prefix("ACKED ") {
                self.acked.insert(id.parse().unwrap());
            }
            false
        }
    }
}

#[test]
fn acknowledged_work_survives_sigkill() {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        return crash_child(&dir);
    }
    let dir = TempDir::new("crash");
    let log = log_file(&dir, "crash");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut said = ChildSaid::default();
    // Events of group `worker` that are done: acked by a child or by us.
    let mut done: BTreeSet<u64> = BTreeSet::new();
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let kill_after = rand::random_range(20..600);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut published = 0;
        for line in lines.by_ref() {
            if said.note(&line.unwrap()) {
                published += 1;
                if published == kill_after {
                    break;
                }
            }
        }
        assert_eq!(published, kill_after, "the child stopped early");
        std::thread::sleep(Duration::from_micros(rand::random_range(0..3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // What it said before it died counts too.
        for line in lines.map_while(Result::ok) {
            said.note(&line);
        }

        let before = std::fs::metadata(&log).unwrap().len();
        rt.block_on(async {
            let events = FileEvents::open(&dir.0).expect("the dead child's lock is gone");
            let after = std::fs::metadata(&log).unwrap().len();
            eprintln!(
                "round {round}: {} publishes and {} acks acknowledged so far; \
                 log {before} bytes, {after} after recovery",
                said.published.len(),
                said.acked.len()
            );
            let end: u64 = publish(&events, "crash", &format!("END{round}"))
                .await
                .parse()
                .unwrap();
            let last = said.published.keys().next_back().copied().unwrap_or(0);
            assert!(end > last, "ids go on after the last acknowledged one");

            // The log: every acknowledged event, intact, ids in order.
            let opts = earliest(&format!("verify{round}")).prefetch(1024);
            let mut consumer = events.consume("crash", opts).await.unwrap();
            for expect in 1..=end {
                let d = next(&mut consumer).await;
                let id: u64 = d.event().id.parse().unwrap();
                assert_eq!(id, expect, "ids are contiguous and in order");
                if let Some((tag, len)) = said.published.get(&id) {
                    assert_eq!(d.event().payload, crash_payload(tag, *len), "event {id}");
                }
                d.ack().await.unwrap();
            }

            // The group: acked events never come back, all others do.
            done.extend(&said.acked);
            let mut consumer = events
                .consume("crash", earliest("worker").prefetch(1024))
                .await
                .unwrap();
            let mut redelivered = BTreeSet::new();
            loop {
                let d = next(&mut consumer).await;
                let id: u64 = d.event().id.parse().unwrap();
                assert!(!done.contains(&id), "event {id} was acked, yet came back");
                redelivered.insert(id);
                d.ack().await.unwrap();
                if id == end {
                    break;
                }
            }
            let missing: Vec<u64> = (1..=end)
                .filter(|id| !done.contains(id) && !redelivered.contains(id))
                .collect();
            // At most the one acked by the child just before it died, unsaid.
            assert!(missing.len() <= 1, "never redelivered: {missing:?}");
            done.extend(redelivered);
            done.extend(missing);
        });
    }
}

/// The length of the log of `topic` after each of `payloads` is published.
async fn publish_and_measure(dir: &TempDir, topic: &str, payloads: &[&str]) -> Vec<u64> {
    let events = FileEvents::open(&dir.0).unwrap();
    let mut lens = Vec::new();
    for p in payloads {
        publish(&events, topic, p).await;
        lens.push(std::fs::metadata(log_file(dir, topic)).unwrap().len());
    }
    lens
}

async fn read_all(
    events: &FileEvents,
    topic: &str,
    group: &str,
    n: usize,
) -> Vec<(String, String)> {
    let mut consumer = events.consume(topic, earliest(group)).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(&mut consumer).await;
        out.push((d.event().id.clone(), text(&d)));
        d.ack().await.unwrap();
    }
    none_within(&mut consumer, Duration::from_millis(100)).await;
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_earlier_events_kept() {
    let dir = TempDir::new("torn");
    let lens = publish_and_measure(&dir, "t", &["a", "b", "c"]).await;
    let log = log_file(&dir, "t");
    let bytes = std::fs::read(&log).unwrap();
    // Half of a record, as a crash in the middle of a write leaves it.
    let last = &bytes[lens[1] as usize..lens[2] as usize];
    append(&log, &last[..last.len() / 2]);
    {
        let events = FileEvents::open(&dir.0).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), lens[2], "truncated");
        assert_eq!(publish(&events, "t", "d").await, "4");
        let all = read_all(&events, "t", "g", 4).await;
        assert_eq!(
            all,
            pairs(&[("1", "a"), ("2", "b"), ("3", "c"), ("4", "d")])
        );
    }
    // Zeros, as a file system may leave after a power cut.
    let len = std::fs::metadata(&log).unwrap().len();
    append(&log, &[0; 5000]);
    let events = FileEvents::open(&dir.0).unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len(), len);
    assert_eq!(read_all(&events, "t", "g2", 4).await.len(), 4);
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_and_the_rest_readable() {
    let dir = TempDir::new("flip");
    let lens = publish_and_measure(&dir, "t", &["first", "second", "third"]).await;
    let log = log_file(&dir, "t");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[lens[1] as usize - 3] ^= 0x20; // in the payload of the second
    std::fs::write(&log, &bytes).unwrap();
    let events = FileEvents::open(&dir.0).unwrap();
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        lens[2],
        "nothing cut"
    );
    assert_eq!(publish(&events, "t", "fourth").await, "4");
    let all = read_all(&events, "t", "g", 3).await;
    assert_eq!(
        all,
        pairs(&[("1", "first"), ("3", "third"), ("4", "fourth")])
    );
}

#[tokio::test]
async fn one_process_owns_a_directory() {
    let dir = TempDir::new("lock");
    let first = FileEvents::open(&dir.0).unwrap();
    let e = FileEvents::open(&dir.0).unwrap_err();
    assert_eq!(e.code, 409);
    assert!(e.detail.contains("in use by another process"), "{e}");
    assert!(e.detail.contains(&std::process::id().to_string()), "{e}");
    // A consumer keeps the directory.
    let consumer = first.consume("t", ConsumeOptions::new("g")).await.unwrap();
    drop(first);
    assert_eq!(FileEvents::open(&dir.0).unwrap_err().code, 409);
    drop(consumer);
    FileEvents::open(&dir.0).expect("free once everything is dropped");
}

#[tokio::test]
async fn bad_names_are_bad_requests() {
    let dir = TempDir::new("names");
    let events = FileEvents::open(&dir.0).unwrap();
    for topic in ["", "a/b", "../x", "a\\b", ".."] {
        let e = events
            .publish(topic, Bytes::new(), Metadata::new())
            .await
            .unwrap_err();
        assert_eq!(e.code, 400, "{topic}: {e}");
        let e = events
            .consume(topic, ConsumeOptions::new("g"))
            .await
            .unwrap_err();
        assert_eq!(e.code, 400, "{topic}: {e}");
    }
    let e = events
        .consume("t", ConsumeOptions::new("x/y"))
        .await
        .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(!dir.0.join("x").exists() && !dir.0.parent().unwrap().join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test -p micro-runtime --test events -- --ignored --nocapture"]
async fn publish_throughput() {
    for publishers in [1, 64] {
        let dir = TempDir::new("throughput");
        let events = FileEvents::open(&dir.0).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        let tasks: Vec<_> = (0..publishers)
            .map(|_| {
                let events = events.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        events
                            .publish("bench", Bytes::from(vec![7u8; 256]), Metadata::new())
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{publishers:>2} concurrent publishers: {total} events in {secs:.2} s = {:.0} events/s \
             (256-byte payloads, fsync per commit)",
            total as f64 / secs
        );
        if publishers == 64 {
            let started = Instant::now();
            let mut consumer = events.consume("bench", earliest("g")).await.unwrap();
            for _ in 0..total {
                next(&mut consumer).await.ack().await.unwrap();
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "one consumer, ack each: {total} events in {secs:.2} s = {:.0} events/s",
                total as f64 / secs
            );
        }
    }
}
