//! Pub/sub and durable event streams across processes.
//!
//! - The native broker, with `micro-test-subscriber` processes found by mDNS
//!   on `lo`: queue groups and broadcast, then no loss while queue members are
//!   SIGKILLed and replaced. As root these re-execute themselves inside a
//!   network namespace that has only `lo` (`unshare -n`), like cluster.rs.
//! - Durable events on NATS JetStream and Redis Streams (servers on
//!   127.0.0.1:4222 and 127.0.0.1:6379), with `micro-test-consumer` processes
//!   in one group SIGKILLed and replaced. These stay in the host's network
//!   namespace, where the servers are.
//!
//! Each subscriber or consumer appends the id of every message it handles to
//! a file of its own before acknowledging it; the union of the files shows
//! what was handled. A process killed between the write and the ack makes a
//! duplicate, which is allowed (at least once); a missing id is a loss.

use futures_util::stream::{self, StreamExt};
use micro::events::{self, Events};
use micro::registry::Registry;
use micro::{MdnsOptions, MdnsRegistry, RunningService, Service};
use micro_tests::{
    free_udp_port, read_ids, reexec_in_loopback_netns, wait_until, NodeProcess, Numbered,
};
use nix::sys::signal::Signal;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBSCRIBER: &str = env!("CARGO_BIN_EXE_micro-test-subscriber");
const CONSUMER: &str = env!("CARGO_BIN_EXE_micro-test-consumer");

/// How many messages the kill tests publish.
const LOAD: u64 = 10_000;
/// How many publishes the kill tests keep in flight.
const IN_FLIGHT: usize = 32;
/// The least number of kills while the kill tests publish.
const MIN_KILLS: usize = 5;
/// The kill tests publish no faster than one message per this, so that the
/// kills land while messages are in flight.
const PACE: Duration = Duration::from_micros(800);

/// The tests here spawn many processes on 2 cores: one at a time, so that the
/// figures they print mean something.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scratch directory for the id files; removed at the end unless the test
/// failed (to look at them).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "micro-pubsub-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("id files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The environment of a `micro-test-subscriber` found by mDNS on `lo`.
fn subscriber_env(
    port: u16,
    topic: &str,
    queue: Option<&str>,
    out: &Path,
    handle_ms: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("MICRO_REGISTRY", "mdns".into()),
        ("MICRO_MDNS_INTERFACES", "lo".into()),
        ("MICRO_MDNS_PORT", port.to_string()),
        ("MICRO_SERVER_ADDRESS", "127.0.0.1:0".into()),
        ("MICRO_REGISTER_TTL", "3s".into()),
        ("MICRO_REGISTER_INTERVAL", "1s".into()),
        ("MICRO_GRACE_PERIOD", "10s".into()),
        ("MICRO_TEST_TOPIC", topic.into()),
        ("MICRO_TEST_QUEUE", queue.unwrap_or_default().into()),
        ("MICRO_TEST_OUT", out.display().to_string()),
        ("MICRO_TEST_HANDLE_MS", handle_ms.to_string()),
    ]
}

fn mdns(port: u16) -> Arc<MdnsRegistry> {
    Arc::new(
        MdnsRegistry::new(MdnsOptions::default().interfaces(["lo"]).port(port))
            .expect("mdns registry"),
    )
}

/// How many subscriptions of `topic` the registry knows.
async fn subscriptions(registry: &MdnsRegistry, topic: &str) -> usize {
    registry
        .get_service(&format!("micro.topic:{topic}"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.nodes.len())
        .sum()
}

/// A publishing service on the mDNS registry (the native broker by default).
async fn publisher(registry: &Arc<MdnsRegistry>) -> RunningService {
    Service::new("publisher")
        .address("127.0.0.1:0")
        .registry(Arc::clone(registry) as Arc<dyn Registry>)
        .start()
        .await
        .expect("start the publisher")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_and_broadcast_across_processes() {
    let _one = ONE_AT_A_TIME.lock().await;
    if reexec_in_loopback_netns("queue_and_broadcast_across_processes") {
        return;
    }
    let port = free_udp_port();
    let dir = Scratch::new("fanout");
    let topic = "orders.placed";
    let n = 300;
    let start = |name: &str, queue: Option<&str>| {
        NodeProcess::start(
            SUBSCRIBER,
            &subscriber_env(port, topic, queue, &dir.file(name), 0),
        )
    };
    let workers = ["worker-0", "worker-1", "worker-2"];
    let watchers = ["watcher-0", "watcher-1"];
    let mut procs: Vec<NodeProcess> = workers
        .iter()
        .map(|w| start(w, Some("workers")))
        .chain(watchers.iter().map(|w| start(w, None)))
        .collect();
    let registry = mdns(port);
    wait_until(
        "five subscriptions found by mDNS",
        Duration::from_secs(10),
        || async { subscriptions(&registry, topic).await == 5 },
    )
    .await;

    let publisher = publisher(&registry).await;
    let t0 = Instant::now();
    for id in 0..n {
        // Returns once the group and both watchers have handled it.
        publisher
            .publish(topic, &Numbered { id })
            .await
            .unwrap_or_else(|e| panic!("publish {id}: {e}"));
    }
    let elapsed = t0.elapsed();

    let mut shared = Vec::new();
    let mut per_worker = BTreeMap::new();
    for w in workers {
        let ids = read_ids(&dir.file(w));
        per_worker.insert(w, ids.len());
        shared.extend(ids);
    }
    shared.sort_unstable();
    assert_eq!(
        shared,
        (0..n).collect::<Vec<_>>(),
        "each message exactly once in the queue group"
    );
    assert!(
        per_worker.values().all(|&c| c > 0),
        "every queue member got some: {per_worker:?}"
    );
    for w in watchers {
        let mut ids = read_ids(&dir.file(w));
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..n).collect::<Vec<_>>(),
            "{w}: each message exactly once"
        );
    }
    println!("{n} messages published one by one in {elapsed:?}; queue group shares: {per_worker:?}; each watcher got all {n}");

    publisher.stop().await.unwrap();
    for p in &mut procs {
        p.signal(Signal::SIGTERM);
        assert!(
            p.wait_exit(Duration::from_secs(15)).success(),
            "a subscriber exits cleanly on SIGTERM"
        );
    }
}

/// Kills a random member of a set of processes every 150-400 ms and starts a
/// replacement, on a thread of its own, until stopped. Dropping it stops it
/// and kills the processes.
struct Chaos {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<(Vec<NodeProcess>, usize)>>,
}

impl Chaos {
    /// Starts with `members`; `spawn(n)` starts the `n`-th process (counting
    /// the first members, so replacements start at `members.len()`).
    fn start<F>(mut members: Vec<NodeProcess>, spawn: F) -> Self
    where
        F: Fn(usize) -> NodeProcess + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicUsize::new(0));
        let (stopped, killed) = (Arc::clone(&stop), Arc::clone(&kills));
        let thread = std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut started = members.len();
            loop {
                let until = Instant::now() + Duration::from_millis(rng.random_range(150..=400));
                while Instant::now() < until {
                    if stopped.load(Ordering::SeqCst) {
                        return (members, started);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let victim = members.swap_remove(rng.random_range(0..members.len()));
                victim.signal(Signal::SIGKILL);
                drop(victim); // reaped
                killed.fetch_add(1, Ordering::SeqCst);
                members.push(spawn(started));
                started += 1;
            }
        });
        Self {
            stop,
            kills,
            thread: Some(thread),
        }
    }

    fn kills(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.kills)
    }

    /// Stops; returns the live members and how many processes were started in all.
    fn finish(mut self) -> (Vec<NodeProcess>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the chaos thread panicked")
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Publishes ids `0..LOAD` with [`IN_FLIGHT`] publishes at once, no faster
/// than [`PACE`], retrying each until it succeeds. Id `i` waits until `kills`
/// has reached `i / (LOAD / (MIN_KILLS + 1))`, so at least [`MIN_KILLS`]
/// kills happen while publishing. Returns how many publishes were retried.
async fn publish_all<F, Fut>(kills: &AtomicUsize, publish: F) -> usize
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = micro::Result<()>>,
{
    let retries = AtomicUsize::new(0);
    let chunk = LOAD / (MIN_KILLS as u64 + 1);
    let t0 = tokio::time::Instant::now();
    let (retries_ref, publish) = (&retries, &publish);
    stream::iter(0..LOAD)
        .for_each_concurrent(IN_FLIGHT, |id| async move {
            tokio::time::sleep_until(t0 + PACE * id as u32).await;
            let need = (id / chunk) as usize;
            wait_until(
                &format!("kill #{need} before publishing {id}"),
                Duration::from_secs(30),
                || async { kills.load(Ordering::SeqCst) >= need },
            )
            .await;
            let mut attempt = 0;
            while let Err(e) = publish(id).await {
                attempt += 1;
                retries_ref.fetch_add(1, Ordering::SeqCst);
                eprintln!("publish {id} failed (attempt {attempt}), retrying: {e}");
                assert!(attempt < 20, "publish {id} keeps failing: {e}");
            }
        })
        .await;
    retries.into_inner()
}

/// The ids in files `prefix-0` .. `prefix-{count-1}` of `dir`, counted.
fn union(dir: &Scratch, prefix: &str, count: usize) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for n in 0..count {
        for id in read_ids(&dir.file(&format!("{prefix}-{n}"))) {
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

/// Checks that every id of `0..LOAD` is in `seen` and nothing else; returns
/// the number of duplicates.
fn check_no_loss(seen: &BTreeMap<u64, usize>) -> usize {
    let missing: Vec<u64> = (0..LOAD).filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} ids lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let unknown: Vec<&u64> = seen.keys().filter(|&&id| id >= LOAD).collect();
    assert!(unknown.is_empty(), "ids never published: {unknown:?}");
    seen.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_while_queue_members_are_killed() {
    let _one = ONE_AT_A_TIME.lock().await;
    if reexec_in_loopback_netns("no_loss_while_queue_members_are_killed") {
        return;
    }
    let port = free_udp_port();
    let dir = Scratch::new("kills");
    let topic = "jobs";
    let base = dir.0.clone();
    // Handling takes 1 ms after the write: a kill often lands between the
    // write and the ack.
    let spawn = move |n: usize| {
        NodeProcess::start(
            SUBSCRIBER,
            &subscriber_env(
                port,
                topic,
                Some("workers"),
                &base.join(format!("member-{n}")),
                1,
            ),
        )
    };
    let members: Vec<NodeProcess> = (0..3).map(&spawn).collect();
    let registry = mdns(port);
    wait_until(
        "three queue members found by mDNS",
        Duration::from_secs(10),
        || async { subscriptions(&registry, topic).await == 3 },
    )
    .await;
    let publisher = publisher(&registry).await;

    let t0 = Instant::now();
    let chaos = Chaos::start(members, spawn);
    let kills = chaos.kills();
    let retries = publish_all(&kills, |id| {
        let publisher = &publisher;
        async move { publisher.publish(topic, &Numbered { id }).await.map(drop) }
    })
    .await;
    let elapsed = t0.elapsed();
    let (mut members, started) = chaos.finish();
    let kills = kills.load(Ordering::SeqCst);

    // `publish` returned Ok for each: its handler had written it.
    let seen = union(&dir, "member", started);
    let duplicates = check_no_loss(&seen);
    println!(
        "native broker: {LOAD} messages, {IN_FLIGHT} in flight: elapsed {elapsed:?}, \
         {kills} kills ({started} processes in all), {retries} publish retries, \
         {duplicates} duplicates, none lost"
    );
    assert!(kills >= MIN_KILLS);

    publisher.stop().await.unwrap();
    for m in &mut members {
        m.signal(Signal::SIGTERM);
        assert!(m.wait_exit(Duration::from_secs(15)).success());
    }
}

/// The environment of a `micro-test-consumer` on `backend` at `address`.
fn consumer_env(
    backend: &str,
    address: &str,
    topic: &str,
    out: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("MICRO_EVENTS", backend.into()),
        ("MICRO_EVENTS_ADDRESS", address.into()),
        ("MICRO_TEST_TOPIC", topic.into()),
        ("MICRO_TEST_GROUP", "workers".into()),
        ("MICRO_TEST_OUT", out.display().to_string()),
        ("MICRO_TEST_ACK_WAIT_MS", "2000".into()),
        ("MICRO_TEST_HANDLE_MS", "1".into()),
    ]
}

/// 3 consumers in one group, killed and replaced at random while [`LOAD`]
/// events are published to a fresh topic: every event is handled at least once.
async fn no_loss_on_event_streams(
    backend: &'static str,
    address: &'static str,
    events: Arc<dyn Events>,
) -> String {
    let dir = Scratch::new(backend);
    let topic = format!("micro-test-load-{:016x}", rand::random::<u64>());
    let base = dir.0.clone();
    let t = topic.clone();
    let spawn = move |n: usize| {
        NodeProcess::start(
            CONSUMER,
            &consumer_env(backend, address, &t, &base.join(format!("consumer-{n}"))),
        )
    };
    let members: Vec<NodeProcess> = (0..3).map(&spawn).collect();

    let t0 = Instant::now();
    let chaos = Chaos::start(members, spawn);
    let kills = chaos.kills();
    let retries = publish_all(&kills, |id| {
        let (events, topic) = (&events, &topic);
        async move {
            events::publish_typed(&**events, topic, &Numbered { id })
                .await
                .map(drop)
        }
    })
    .await;
    let published = t0.elapsed();
    let (members, started) = chaos.finish();
    let kills = kills.load(Ordering::SeqCst);

    // Events held by killed consumers come back after their ack_wait (2 s).
    wait_until("every event handled", Duration::from_secs(60), || async {
        let seen = union(&dir, "consumer", started);
        seen.len() as u64 >= LOAD
    })
    .await;
    let elapsed = t0.elapsed();
    let seen = union(&dir, "consumer", started);
    let duplicates = check_no_loss(&seen);
    println!(
        "{backend} events: {LOAD} events, {IN_FLIGHT} publishes in flight: published in {published:?}, \
         all handled after {elapsed:?}; {kills} kills ({started} processes in all), \
         {retries} publish retries, {duplicates} duplicates, none lost"
    );
    assert!(kills >= MIN_KILLS);
    drop(members);
    topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_on_event_streams_nats() {
    let _one = ONE_AT_A_TIME.lock().await;
    let address = "nats://127.0.0.1:4222";
    let events = Arc::new(
        events::JetStreamEvents::connect(address)
            .await
            .expect("NATS with JetStream on 127.0.0.1:4222"),
    );
    let topic = no_loss_on_event_streams("nats", address, events.clone()).await;
    // On failure the streams stay behind, under a name no other run uses.
    for t in [topic.clone(), format!("{topic}.dead")] {
        events.delete_topic(&t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_on_event_streams_redis() {
    let _one = ONE_AT_A_TIME.lock().await;
    let address = "redis://127.0.0.1:6379";
    let events = Arc::new(
        events::RedisEvents::connect(address)
            .await
            .expect("Redis on 127.0.0.1:6379"),
    );
    let topic = no_loss_on_event_streams("redis", address, events.clone()).await;
    // On failure the keys stay behind, under a name no other run uses.
    for t in [topic.clone(), format!("{topic}.dead")] {
        events.delete_topic(&t).await.unwrap();
    }
}
