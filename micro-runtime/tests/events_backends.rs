//! Conformance of the events backends: one suite run against the embedded
//! file log, NATS JetStream and Redis Streams (the servers on their default
//! local ports, which must be up: a test that cannot reach them fails). Then
//! the remote backends against a server that is down or restarts (a private
//! server started and killed by the test), Redis against a consumer that
//! died, and both remote backends against consumers coming and going while
//! events are published (nothing may be lost).
#![cfg(all(feature = "nats", feature = "redis"))]

mod common;
use common::{
    drain, earliest, md, nats_server, next, none_within, publish, redis_server, refused_in_time,
    text, Server, TempDir, DOWN_ADDRESS, WAIT,
};

use bytes::Bytes;
use micro_runtime::env::{DEFAULT_NATS_ADDRESS, DEFAULT_REDIS_ADDRESS};
use micro_runtime::events::{
    ConsumeOptions, Events, FileEvents, JetStreamEvents, RedisEvents, StartAt, DEAD_ATTEMPTS_KEY,
    DEAD_ERROR_KEY, DEAD_GROUP_KEY, DEAD_ID_KEY, DEAD_TOPIC_KEY,
};
use micro_runtime::Metadata;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    File,
    Nats,
    Redis,
}

/// What a conformance test gets: a backend to open (again) and a topic of
/// its own.
#[derive(Debug, Clone)]
struct Cx {
    kind: Kind,
    topic: String,
    dir: Arc<TempDir>,
}

impl Cx {
    fn new(kind: Kind, test: &str) -> Cx {
        Cx {
            kind,
            topic: format!("{test}.{:016x}", rand::random::<u64>()),
            dir: Arc::new(TempDir::new(test)),
        }
    }

    /// Opens the backend (the file log must not be open already).
    async fn open(&self) -> Arc<dyn Events> {
        match self.kind {
            Kind::File => Arc::new(FileEvents::open(&self.dir.0).unwrap()),
            Kind::Nats => Arc::new(nats().await),
            Kind::Redis => Arc::new(redis().await),
        }
    }

    /// A topic under the test's own, such as its dead-letter topic `<topic>.dead`.
    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.topic)
    }

    /// Deletes the topics of the test on a remote server.
    async fn cleanup(&self) {
        let topics = [self.topic.clone(), self.topic("dead")];
        match self.kind {
            Kind::File => {}
            Kind::Nats => {
                let events = nats().await;
                for t in &topics {
                    events.delete_topic(t).await.unwrap();
                }
            }
            Kind::Redis => {
                let events = redis().await;
                for t in &topics {
                    events.delete_topic(t).await.unwrap();
                }
            }
        }
    }
}

async fn nats() -> JetStreamEvents {
    JetStreamEvents::connect(DEFAULT_NATS_ADDRESS)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need nats-server with JetStream (`nats-server -js`) at \
                 {DEFAULT_NATS_ADDRESS}: {e}"
            )
        })
}

async fn redis() -> RedisEvents {
    RedisEvents::connect(DEFAULT_REDIS_ADDRESS)
        .await
        .unwrap_or_else(|e| panic!("these tests need redis-server at {DEFAULT_REDIS_ADDRESS}: {e}"))
}

/// Runs a conformance test, then deletes its topics.
async fn run<F, Fut>(kind: Kind, test: &str, f: F)
where
    F: FnOnce(Cx) -> Fut,
    Fut: Future<Output = ()>,
{
    let cx = Cx::new(kind, test);
    f(cx.clone()).await;
    cx.cleanup().await;
}

/// Runs each conformance test against each backend.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Kind::File, stringify!($test), super::$test).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Kind::Nats, stringify!($test), super::$test).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Kind::Redis, stringify!($test), super::$test).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip_with_metadata,
    every_group_gets_every_event,
    consumers_of_a_group_share_the_events,
    groups_resume_after_a_restart,
    nacks_are_retried_then_dead_lettered,
    unacked_deliveries_come_back_after_ack_wait,
    an_expired_last_attempt_is_dead_lettered,
    a_dropped_delivery_is_a_nack,
    prefetch_bounds_what_a_consumer_holds,
    new_groups_start_where_asked,
);

// ---------------------------------------------------------------------------
// Helpers

/// An id as numbers, to compare: `7` (file, NATS) or `1700000000000-7` (Redis).
fn id_key(id: &str) -> (u64, u64) {
    match id.split_once('-') {
        Some((ms, n)) => (ms.parse().unwrap(), n.parse().unwrap()),
        None => (id.parse().unwrap(), 0),
    }
}

// ---------------------------------------------------------------------------
// The conformance suite

async fn round_trip_with_metadata(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    let before = SystemTime::now() - Duration::from_secs(1);
    let id1 = events
        .publish(
            topic,
            Bytes::from_static(b"one"),
            md(&[("k", "v"), ("Content-Type", "text/plain")]),
        )
        .await
        .unwrap();
    let id2 = publish(&*events, topic, "two").await;
    assert!(id_key(&id2) > id_key(&id1), "ids increase: {id1}, {id2}");

    let mut consumer = events.consume(topic, earliest("g")).await.unwrap();
    assert_eq!((consumer.topic(), consumer.group()), (topic.as_str(), "g"));
    let d = next(&mut consumer).await;
    let e = d.event();
    assert_eq!(
        (e.id.as_str(), e.topic.as_str(), e.attempt),
        (id1.as_str(), topic.as_str(), 1)
    );
    assert_eq!(&e.payload[..], b"one");
    assert_eq!(
        e.metadata,
        md(&[("k", "v"), ("Content-Type", "text/plain")])
    );
    assert!(e.timestamp >= before && e.timestamp <= SystemTime::now() + Duration::from_secs(1));
    d.ack().await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(
        (d.event().id.as_str(), text(&d).as_str()),
        (id2.as_str(), "two")
    );
    assert!(d.event().metadata.is_empty());
    d.ack().await.unwrap();

    // A waiting consumer sees new events.
    let waiter = tokio::spawn(async move {
        let d = next(&mut consumer).await;
        let t = text(&d);
        d.ack().await.unwrap();
        t
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(&*events, topic, "three").await;
    assert_eq!(waiter.await.unwrap(), "three");
}

async fn every_group_gets_every_event(cx: Cx) {
    const N: usize = 50;
    let events = cx.open().await;
    let topic = &cx.topic;
    let mut a = events
        .consume(topic, ConsumeOptions::new("a"))
        .await
        .unwrap();
    let mut b = events
        .consume(topic, ConsumeOptions::new("b"))
        .await
        .unwrap();
    for i in 0..N {
        publish(&*events, topic, &i.to_string()).await;
    }
    for consumer in [&mut a, &mut b] {
        let mut got = Vec::new();
        for _ in 0..N {
            let d = next(consumer).await;
            got.push(text(&d).parse::<usize>().unwrap());
            d.ack().await.unwrap();
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "all, in order");
        none_within(consumer, Duration::from_millis(200)).await;
    }
}

async fn consumers_of_a_group_share_the_events(cx: Cx) {
    const N: usize = 400;
    let events = cx.open().await;
    let topic = &cx.topic;
    let shared = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["a", "b"] {
        let consumer = events
            .consume(topic, ConsumeOptions::new("shared").prefetch(16))
            .await
            .unwrap();
        tasks.push(drain(name, consumer, Arc::clone(&shared), N));
    }
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let events = Arc::clone(&events);
            let topic = topic.clone();
            tokio::spawn(async move {
                for i in (p..N).step_by(4) {
                    publish(&*events, &topic, &i.to_string()).await;
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
    let seen = shared.lock().unwrap();
    assert_eq!(seen.len(), N, "every event once, none twice");
    let got: BTreeSet<String> = seen.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(got, (0..N).map(|i| i.to_string()).collect());
    let by_a = seen.iter().filter(|(n, _)| *n == "a").count();
    assert!(
        by_a > 0 && by_a < N,
        "both consumers got work: a={by_a} of {N}"
    );
}

async fn groups_resume_after_a_restart(cx: Cx) {
    let topic = &cx.topic;
    // A remote backend gives the events a consumer fetched ahead, and did not
    // hand out before it was dropped, to others after `ack_wait`.
    let group = || ConsumeOptions::new("g").ack_wait(Duration::from_secs(3));
    {
        let events = cx.open().await;
        // A Latest group created before the events: they are its.
        drop(events.consume(topic, group()).await.unwrap());
        for i in 1..=10 {
            publish(&*events, topic, &i.to_string()).await;
        }
        let mut consumer = events.consume(topic, group()).await.unwrap();
        for i in 1..=5 {
            let d = next(&mut consumer).await;
            assert_eq!(text(&d), i.to_string());
            d.ack().await.unwrap();
        }
        // Delivered, never acked when everything goes away.
        let held = [next(&mut consumer).await, next(&mut consumer).await];
        assert_eq!(held.iter().map(text).collect::<Vec<_>>(), ["6", "7"]);
        drop(held);
        // Let the nacks of the dropped deliveries go out before the backend
        // goes away (a remote backend sends them from spawned tasks).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = cx.open().await;
    let mut consumer = events.consume(topic, group()).await.unwrap();
    let mut got = BTreeMap::new();
    for _ in 6..=10 {
        let d = next(&mut consumer).await;
        got.insert(text(&d).parse::<u32>().unwrap(), d.event().attempt);
        d.ack().await.unwrap();
    }
    let expected: BTreeMap<u32, u32> = [(6, 2), (7, 2), (8, 1), (9, 1), (10, 1)].into();
    if cx.kind == Kind::Nats {
        // JetStream counts the deliveries to the dropped consumer's client
        // that it fetched ahead and never handed out.
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert!(
            got.iter().all(|(p, attempt)| *attempt >= expected[p]),
            "payload -> attempt: {got:?}"
        );
    } else {
        assert_eq!(got, expected, "payload -> attempt");
    }
    none_within(&mut consumer, Duration::from_millis(500)).await;
}

async fn nacks_are_retried_then_dead_lettered(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    let backoff = Duration::from_millis(200);
    let opts = earliest("g").max_attempts(3).retry_backoff(backoff);
    let bad = events
        .publish(topic, Bytes::from_static(b"bad"), md(&[("trace", "x")]))
        .await
        .unwrap();
    publish(&*events, topic, "good").await;
    let mut consumer = events.consume(topic, opts.clone()).await.unwrap();
    let mut attempts = Vec::new();
    let mut good = false;
    let mut nacked_at = None;
    while !(good && attempts.len() == 3) {
        let d = next(&mut consumer).await;
        if text(&d) == "bad" {
            let attempt = d.event().attempt;
            if let Some(at) = nacked_at {
                let waited = Instant::now().duration_since(at);
                let expected = opts.backoff(attempt - 1);
                assert!(
                    waited + Duration::from_millis(50) >= expected,
                    "attempt {attempt} came after {waited:?}, before its backoff of {expected:?}"
                );
            }
            attempts.push(attempt);
            assert_eq!(d.event().id, bad);
            d.nack_with(format!("boom {}", attempts.len()))
                .await
                .unwrap();
            nacked_at = Some(Instant::now());
        } else {
            assert!(!good, "the good event came once");
            good = true;
            d.ack().await.unwrap();
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    publish(&*events, topic, "next").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "next", "the group went on");
    d.ack().await.unwrap();

    let mut dead = events
        .consume(&cx.topic("dead"), earliest("ops"))
        .await
        .unwrap();
    let d = next(&mut dead).await;
    let m = &d.event().metadata;
    assert_eq!(text(&d), "bad");
    assert_eq!(m[DEAD_TOPIC_KEY], *topic);
    assert_eq!(m[DEAD_ID_KEY], bad);
    assert_eq!(m[DEAD_GROUP_KEY], "g");
    assert_eq!(m[DEAD_ATTEMPTS_KEY], "3");
    assert_eq!(m[DEAD_ERROR_KEY], "boom 3");
    assert_eq!(m["trace"], "x", "the original metadata is kept");
    d.ack().await.unwrap();
    none_within(&mut dead, Duration::from_millis(300)).await;
    none_within(&mut consumer, Duration::from_millis(300)).await;
}

async fn unacked_deliveries_come_back_after_ack_wait(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    let id = publish(&*events, topic, "slow").await;
    let ack_wait = Duration::from_secs(1);
    let mut consumer = events
        .consume(topic, earliest("g").ack_wait(ack_wait))
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    let started = Instant::now();
    let again = next(&mut consumer).await;
    let waited = started.elapsed();
    assert!(
        waited >= ack_wait - Duration::from_millis(150),
        "came back after {waited:?}"
    );
    assert_eq!(
        (again.event().id.as_str(), again.event().attempt),
        (id.as_str(), 2)
    );
    // A late ack of the first delivery still counts; the second is then moot.
    first.ack().await.unwrap();
    again.ack().await.unwrap();
    none_within(&mut consumer, ack_wait * 2).await;
}

async fn an_expired_last_attempt_is_dead_lettered(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    let id = publish(&*events, topic, "stuck").await;
    let opts = earliest("g")
        .max_attempts(1)
        .ack_wait(Duration::from_secs(1));
    let mut consumer = events.consume(topic, opts).await.unwrap();
    let held = next(&mut consumer).await;
    assert_eq!(held.event().attempt, 1);
    publish(&*events, topic, "after").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "after");
    d.ack().await.unwrap();
    // The group's consumer gives up on the held event once its ack_wait is
    // over (while it is polled), without delivering it again.
    none_within(&mut consumer, Duration::from_millis(2500)).await;

    let mut dead = events
        .consume(&cx.topic("dead"), earliest("ops"))
        .await
        .unwrap();
    let d = next(&mut dead).await;
    let m = &d.event().metadata;
    assert_eq!(
        (text(&d).as_str(), m[DEAD_ID_KEY].as_str()),
        ("stuck", id.as_str())
    );
    assert_eq!(m[DEAD_ATTEMPTS_KEY], "1");
    assert!(m[DEAD_ERROR_KEY].contains("not acked within"), "{m:?}");
    d.ack().await.unwrap();
    // Moot now: the event is done in its group.
    held.ack().await.unwrap();
    none_within(&mut consumer, Duration::from_millis(500)).await;
}

async fn a_dropped_delivery_is_a_nack(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    publish(&*events, topic, "x").await;
    let opts = earliest("g").retry_backoff(Duration::from_millis(10));
    let mut consumer = events.consume(topic, opts).await.unwrap();
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

async fn prefetch_bounds_what_a_consumer_holds(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    for i in 0..5 {
        publish(&*events, topic, &i.to_string()).await;
    }
    let mut consumer = events
        .consume(topic, earliest("g").prefetch(2))
        .await
        .unwrap();
    let d1 = next(&mut consumer).await;
    let d2 = next(&mut consumer).await;
    assert_eq!((text(&d1).as_str(), text(&d2).as_str()), ("0", "1"));
    none_within(&mut consumer, Duration::from_millis(300)).await;
    d1.ack().await.unwrap();
    let d3 = next(&mut consumer).await;
    assert_eq!(text(&d3), "2");
    d2.ack().await.unwrap();
    d3.ack().await.unwrap();
}

async fn new_groups_start_where_asked(cx: Cx) {
    let events = cx.open().await;
    let topic = &cx.topic;
    let mut ids = HashMap::new();
    for p in ["a", "b"] {
        ids.insert(p, publish(&*events, topic, p).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mid = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for p in ["c", "d"] {
        ids.insert(p, publish(&*events, topic, p).await);
    }
    let cases = [
        (StartAt::Earliest, "a"),
        (StartAt::Id(ids["b"].clone()), "b"),
        (StartAt::Id(ids["d"].clone()), "d"),
        (StartAt::Time(mid), "c"),
    ];
    for (i, (start, first)) in cases.into_iter().enumerate() {
        let opts = ConsumeOptions::new(format!("g{i}")).start(start.clone());
        let mut consumer = events.consume(topic, opts).await.unwrap();
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), first, "{start:?}");
        d.ack().await.unwrap();
    }
    let mut latest = events
        .consume(topic, ConsumeOptions::new("latest"))
        .await
        .unwrap();
    none_within(&mut latest, Duration::from_millis(300)).await;
    publish(&*events, topic, "e").await;
    let d = next(&mut latest).await;
    assert_eq!(text(&d), "e");
    d.ack().await.unwrap();
    // An existing group resumes whatever it is told (taking the new limits).
    drop(latest);
    let opts = ConsumeOptions::new("latest")
        .start(StartAt::Earliest)
        .prefetch(8)
        .ack_wait(Duration::from_secs(10));
    let mut again = events.consume(topic, opts).await.unwrap();
    none_within(&mut again, Duration::from_millis(300)).await;

    let bad = ConsumeOptions::new("bad").start(StartAt::Id("x-1".into()));
    assert_eq!(events.consume(topic, bad).await.unwrap_err().code, 400);
}

// ---------------------------------------------------------------------------
// Redis: a consumer that died

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_events_of_a_dead_consumer_are_claimed() {
    let cx = Cx::new(Kind::Redis, "dead_consumer");
    let events = cx.open().await;
    let topic = &cx.topic;
    let ack_wait = Duration::from_secs(1);
    let opts = earliest("g").ack_wait(ack_wait);
    // The group exists; another process reads two events and dies.
    drop(events.consume(topic, opts.clone()).await.unwrap());
    let ids = [
        publish(&*events, topic, "one").await,
        publish(&*events, topic, "two").await,
    ];
    let client = ::redis::Client::open(DEFAULT_REDIS_ADDRESS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let read: ::redis::streams::StreamReadReply = ::redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("crashed")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(format!("micro:events:{topic}"))
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(read.keys[0].ids.len(), 2, "the dead consumer had both");
    let read_at = Instant::now();

    let mut consumer = events.consume(topic, opts).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next(&mut consumer).await;
        got.push((d.event().id.clone(), text(&d), d.event().attempt));
        d.ack().await.unwrap();
    }
    assert!(
        read_at.elapsed() >= ack_wait - Duration::from_millis(100),
        "claimed only once idle for ack_wait"
    );
    got.sort();
    let mut expected = vec![
        (ids[0].clone(), "one".to_owned(), 2),
        (ids[1].clone(), "two".to_owned(), 2),
    ];
    expected.sort();
    assert_eq!(got, expected);
    let pending: ::redis::streams::StreamPendingReply = ::redis::cmd("XPENDING")
        .arg(format!("micro:events:{topic}"))
        .arg("g")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0, "nothing left pending");
    none_within(&mut consumer, Duration::from_millis(1500)).await;
    cx.cleanup().await;
}

// ---------------------------------------------------------------------------
// Servers that are down, or restart

#[tokio::test]
async fn nats_server_down_is_a_503() {
    refused_in_time(JetStreamEvents::connect(DOWN_ADDRESS)).await;
}

#[tokio::test]
async fn redis_server_down_is_a_503() {
    refused_in_time(RedisEvents::connect(DOWN_ADDRESS)).await;
}

/// Tries `f` until it succeeds, failing the test after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = micro_runtime::Result<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {WAIT:?}: {e}"),
        }
    }
}

/// Publishes through a restart of the server; the consumer resumes after it.
async fn survives_a_restart(events: Arc<dyn Events>, address: &str, server: &mut Server) {
    let topic = format!("restart.{:016x}", rand::random::<u64>());
    publish(&*events, &topic, "before").await;
    let mut consumer = events.consume(&topic, earliest("g")).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "before");
    d.ack().await.unwrap();

    server.kill();
    let started = Instant::now();
    let e = events
        .publish(&topic, Bytes::from_static(b"lost"), Metadata::new())
        .await
        .unwrap_err();
    assert_eq!(e.code, 503, "{e}");
    assert!(e.detail.contains(address), "names the server: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "took {:?}",
        started.elapsed()
    );

    server.restart().await;
    let id = eventually("publishing after the restart", || {
        events.publish(&topic, Bytes::from_static(b"after"), Metadata::new())
    })
    .await;
    // The consumer goes on (it may report the outage first).
    let deadline = Instant::now() + WAIT;
    loop {
        let r = tokio::time::timeout(WAIT, consumer.next_delivery()).await;
        match r.expect("no delivery after the restart") {
            // A publish that failed with a 503 has an unknown outcome: the
            // client may have handed it to the server before the kill.
            Ok(Some(d)) if text(&d) == "lost" => d.ack().await.unwrap(),
            Ok(Some(d)) => {
                assert_eq!(
                    (text(&d).as_str(), d.event().id.as_str()),
                    ("after", id.as_str())
                );
                d.ack().await.unwrap();
                break;
            }
            Ok(None) => panic!("the consumer ended"),
            Err(e) => {
                assert_eq!(e.code, 503, "{e}");
                assert!(Instant::now() < deadline, "the consumer kept failing: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publish_and_consume_survive_a_server_restart() {
    let store = TempDir::new("nats-store");
    let mut server = nats_server(&["-js", "-sd", &store.0.to_string_lossy()]).await;
    let address = format!("nats://127.0.0.1:{}", server.port);
    let events = eventually("connecting to the private nats-server", || {
        JetStreamEvents::connect(&address)
    })
    .await;
    survives_a_restart(Arc::new(events), &address, &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_and_consume_survive_a_server_restart() {
    let mut server = redis_server().await;
    let address = format!("redis://127.0.0.1:{}", server.port);
    let events = eventually("connecting to the private redis-server", || {
        RedisEvents::connect(&address)
    })
    .await;
    // Redis keeps nothing here: the group comes back empty, at the start of
    // the new stream, and gets what is published after the restart.
    survives_a_restart(Arc::new(events), &address, &mut server).await;
}

// ---------------------------------------------------------------------------
// Nothing lost while consumers come and go

async fn no_loss_with_consumer_churn(events: Arc<dyn Events>, topic: &str) {
    const N: usize = 2000;
    const SLOTS: usize = 3;
    let opts = ConsumeOptions::new("workers")
        .ack_wait(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(20))
        .max_attempts(1000)
        .prefetch(16);
    // Create the group before publishing.
    drop(events.consume(topic, opts.clone()).await.unwrap());
    let processed: Arc<Mutex<HashMap<String, u32>>> = Arc::default();

    let spawn_worker = |events: Arc<dyn Events>| {
        let processed = Arc::clone(&processed);
        let opts = opts.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let mut consumer = events.consume(&topic, opts).await.unwrap();
            loop {
                match consumer.next_delivery().await {
                    Ok(Some(d)) => {
                        // Handled: recorded before the ack, which the churn
                        // may cut short (the event then comes again).
                        let id = d.event().id.clone();
                        *processed.lock().unwrap().entry(id).or_default() += 1;
                        if rand::random_ratio(1, 10) {
                            let work = rand::random_range(1..5);
                            tokio::time::sleep(Duration::from_millis(work)).await;
                        }
                        if let Err(e) = d.ack().await {
                            eprintln!("ack failed: {e}");
                        }
                    }
                    Ok(None) => return,
                    Err(e) => eprintln!("consumer error: {e}"),
                }
            }
        })
    };
    let mut workers: Vec<_> = (0..SLOTS)
        .map(|_| spawn_worker(Arc::clone(&events)))
        .collect();

    let publisher = {
        let events = Arc::clone(&events);
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(N);
            for i in 0..N {
                ids.push(publish(&*events, &topic, &i.to_string()).await);
                if i % 20 == 0 {
                    let pause = rand::random_range(0..10);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            ids
        })
    };
    let mut restarts = 0;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(rand::random_range(10..80))).await;
        let slot = rand::random_range(0..SLOTS);
        workers[slot].abort();
        workers[slot] = spawn_worker(Arc::clone(&events));
        restarts += 1;
    }
    let ids: BTreeSet<String> = publisher.await.unwrap().into_iter().collect();
    assert_eq!(ids.len(), N, "distinct ids");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let processed = processed.lock().unwrap();
            ids.iter().filter(|id| !processed.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {N} events never processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &workers {
        w.abort();
    }
    let processed = processed.lock().unwrap();
    let duplicates: u32 = processed.values().map(|n| n - 1).sum();
    println!(
        "{}: {N} events, all processed, {restarts} consumer restarts, {duplicates} processed more than once",
        events.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_loses_nothing_while_consumers_come_and_go() {
    let cx = Cx::new(Kind::Nats, "churn");
    no_loss_with_consumer_churn(cx.open().await, &cx.topic).await;
    cx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loses_nothing_while_consumers_come_and_go() {
    let cx = Cx::new(Kind::Redis, "churn");
    no_loss_with_consumer_churn(cx.open().await, &cx.topic).await;
    cx.cleanup().await;
}
