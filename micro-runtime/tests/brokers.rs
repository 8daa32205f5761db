//! Conformance of the NATS, Redis and memory brokers: the same suite runs
//! against each (the servers on their default local ports), then each remote
//! broker is checked against a server that is down, or restarts (a private
//! server started and killed by the test), and the NATS broker against a
//! foreign client (`nats_interop.py`, which needs `pip install nats-py`).
#![cfg(all(feature = "nats", feature = "redis"))]

mod common;
use common::{eventually, nats_server, redis_server, refused_in_time, Server, DOWN_ADDRESS};

use bytes::Bytes;
use micro_runtime::broker::{
    self, Broker, MemoryBroker, MessageHandler, NatsBroker, RedisBroker, SubscribeOptions,
    CONTENT_TYPE_KEY, ID_KEY, TIMESTAMP_KEY,
};
use micro_runtime::context::TRACE_ID_KEY;
use micro_runtime::env::{DEFAULT_NATS_ADDRESS, DEFAULT_REDIS_ADDRESS};
use micro_runtime::events::{
    Event, DEAD_ATTEMPTS_KEY, DEAD_ERROR_KEY, DEAD_GROUP_KEY, DEAD_ID_KEY, DEAD_TOPIC_KEY,
};
use micro_runtime::{Context, Error, Metadata, TraceId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits for a restarted server to be usable again.
const RECOVERY: Duration = Duration::from_secs(30);
/// The queue group of the tests.
const GROUP: &str = "workers";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item {id}"),
    }
}

/// A topic of its own for each test run.
fn topic(test: &str) -> String {
    format!("test.{test}.{:016x}", rand::random::<u64>())
}

/// Runs each conformance test against each broker.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test]
                async fn $test() {
                    let broker = super::NatsBroker::connect(super::DEFAULT_NATS_ADDRESS)
                        .await
                        .expect("a NATS server on 127.0.0.1:4222");
                    super::$test(std::sync::Arc::new(broker), super::topic(stringify!($test))).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    let broker = super::RedisBroker::connect(super::DEFAULT_REDIS_ADDRESS)
                        .await
                        .expect("a Redis server on 127.0.0.1:6379");
                    let topic = super::topic(stringify!($test));
                    super::$test(std::sync::Arc::new(broker.clone()), topic.clone()).await;
                    broker.remove_queue(&topic, super::GROUP).await.unwrap();
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    let broker = super::MemoryBroker::new();
                    super::$test(std::sync::Arc::new(broker), super::topic(stringify!($test))).await;
                }
            )*
        }
    };
}

conformance!(
    typed_messages_carry_their_metadata,
    broadcast_reaches_every_subscriber,
    queue_group_members_share_the_messages,
    failed_deliveries_are_retried,
    exhausted_messages_are_dead_lettered,
    undecodable_payloads_are_dead_lettered_at_once,
    unsubscribing_stops_deliveries,
);

// ---------------------------------------------------------------------------
// The conformance suite.

/// What a handler saw of a message.
struct Seen {
    event: Event,
    order: Order,
    context: Context,
}

async fn typed_messages_carry_their_metadata(broker: Arc<dyn Broker>, topic: String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler: MessageHandler = Arc::new(move |event: Event| {
        let tx = tx.clone();
        Box::pin(async move {
            let order = event.decode()?;
            let _ = tx.send(Seen {
                event,
                order,
                context: Context::current(),
            });
            Ok(())
        })
    });
    let _sub = broker
        .subscribe(&topic, SubscribeOptions::new(), handler)
        .await
        .unwrap();

    // MessagePack, published from within a call: its trace id and metadata go along.
    let trace = TraceId::random();
    let caller = Metadata::from([("X-Tenant".to_owned(), "acme".to_owned())]);
    let ctx = Context::new(None, caller, "Shop.Order".into(), trace);
    let id = ctx
        .scope(broker::publish(&*broker, &topic, &order(1)))
        .await
        .unwrap();
    let seen = recv(&mut rx).await;
    assert_eq!(seen.order, order(1));
    let event = &seen.event;
    assert_eq!(
        (event.id.as_str(), event.topic.as_str(), event.attempt),
        (id.as_str(), topic.as_str(), 1)
    );
    assert_eq!(event.metadata[ID_KEY], id);
    assert_eq!(event.metadata[CONTENT_TYPE_KEY], "application/msgpack");
    assert_eq!(event.metadata[TRACE_ID_KEY], trace.to_string());
    assert_eq!(event.metadata["X-Tenant"], "acme");
    let millis: u64 = event.metadata[TIMESTAMP_KEY].parse().unwrap();
    let published = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
    assert_eq!(event.timestamp, published);
    let age = SystemTime::now()
        .duration_since(published)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "published {age:?} ago");
    // The handler runs within the message's context.
    assert_eq!(seen.context.trace_id(), trace);
    assert_eq!(seen.context.get(ID_KEY), Some(id.as_str()));
    assert_eq!(seen.context.get("X-Tenant"), Some("acme"));
    assert_eq!(seen.context.endpoint(), topic);

    // JSON, published outside any call: a fresh trace id.
    let json = serde_json::to_vec(&order(2)).unwrap();
    let metadata = Metadata::from([(CONTENT_TYPE_KEY.to_owned(), "application/json".to_owned())]);
    let id = broker.publish(&topic, json.into(), metadata).await.unwrap();
    let seen = recv(&mut rx).await;
    assert_eq!(
        (seen.event.id.as_str(), &seen.order),
        (id.as_str(), &order(2))
    );
    assert_eq!(seen.event.metadata[CONTENT_TYPE_KEY], "application/json");
    let trace: TraceId = seen.event.metadata[TRACE_ID_KEY].parse().unwrap();
    assert!(!trace.is_none());
    assert_eq!(seen.context.trace_id(), trace);
}

async fn broadcast_reaches_every_subscriber(broker: Arc<dyn Broker>, topic: String) {
    let (a, seen_a) = recorder();
    let (b, seen_b) = recorder();
    let _a = broker
        .subscribe(&topic, SubscribeOptions::new(), a)
        .await
        .unwrap();
    let _b = broker
        .subscribe(&topic, SubscribeOptions::new(), b)
        .await
        .unwrap();
    for id in 0..20 {
        broker::publish(&*broker, &topic, &order(id)).await.unwrap();
    }
    let all: HashSet<u64> = (0..20).collect();
    wait_for("both subscribers to get the 20 messages", WAIT, || {
        distinct(&seen_a) == all && distinct(&seen_b) == all
    })
    .await;
}

async fn queue_group_members_share_the_messages(broker: Arc<dyn Broker>, topic: String) {
    const N: u64 = 200;
    let (a, seen_a) = recorder();
    let (b, seen_b) = recorder();
    let (all, seen_all) = recorder();
    let member_a = broker
        .subscribe(&topic, SubscribeOptions::new().queue(GROUP), a)
        .await
        .unwrap();
    let member_b = broker
        .subscribe(&topic, SubscribeOptions::new().queue(GROUP), b)
        .await
        .unwrap();
    let everything = broker
        .subscribe(&topic, SubscribeOptions::new(), all)
        .await
        .unwrap();
    for id in 0..N {
        broker::publish(&*broker, &topic, &order(id)).await.unwrap();
    }
    let count = |seen: &Arc<Mutex<Vec<u64>>>| seen.lock().unwrap().len() as u64;
    wait_for(
        "the group and the broadcast subscriber to get every message",
        WAIT,
        || count(&seen_a) + count(&seen_b) >= N && count(&seen_all) >= N,
    )
    .await;
    // Unsubscribing waits for what was received to be handled: any duplicate
    // would be counted by now.
    for sub in [member_a, member_b, everything] {
        sub.unsubscribe().await;
    }
    let (a, b) = (
        seen_a.lock().unwrap().clone(),
        seen_b.lock().unwrap().clone(),
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one member got everything: {} and {}",
        a.len(),
        b.len()
    );
    let group: HashSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        a.len() + b.len(),
        N as usize,
        "the group handled some messages twice"
    );
    assert_eq!(group, (0..N).collect());
    assert_eq!(count(&seen_all), N);
    assert_eq!(distinct(&seen_all), (0..N).collect());
}

async fn failed_deliveries_are_retried(broker: Arc<dyn Broker>, topic: String) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let handler: MessageHandler = Arc::new(move |event: Event| {
        seen.lock().unwrap().push(event.attempt);
        Box::pin(async move {
            if event.attempt < 3 {
                Err(Error::internal(
                    "test",
                    format!("attempt {} fails", event.attempt),
                ))
            } else {
                Ok(())
            }
        })
    });
    let opts = SubscribeOptions::new().retry_backoff(Duration::from_millis(10));
    let sub = broker.subscribe(&topic, opts, handler).await.unwrap();
    let dead = DeadLetters::subscribe(&*broker, &topic).await;
    broker::publish(&*broker, &topic, &order(1)).await.unwrap();
    wait_for("a third attempt", WAIT, || {
        attempts.lock().unwrap().len() >= 3
    })
    .await;
    sub.unsubscribe().await;
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert!(
        dead.try_recv().is_none(),
        "a handled message was dead-lettered"
    );
}

async fn exhausted_messages_are_dead_lettered(broker: Arc<dyn Broker>, topic: String) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let handler: MessageHandler = Arc::new(move |event: Event| {
        seen.lock().unwrap().push(event.attempt);
        Box::pin(async { Err(Error::internal("test", "the handler always fails")) })
    });
    let opts = SubscribeOptions::new()
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(10));
    let _sub = broker.subscribe(&topic, opts, handler).await.unwrap();
    let mut dead = DeadLetters::subscribe(&*broker, &topic).await;
    let id = broker::publish(&*broker, &topic, &order(1)).await.unwrap();

    let letter = dead.recv().await;
    assert_eq!(*attempts.lock().unwrap(), [1, 2]);
    assert_eq!(letter.topic, format!("{topic}.dead"));
    assert_eq!(letter.decode::<Order>().unwrap(), order(1));
    let md = &letter.metadata;
    assert_eq!(md[DEAD_TOPIC_KEY], topic);
    assert_eq!(md[DEAD_ID_KEY], id);
    assert_eq!(md[DEAD_ATTEMPTS_KEY], "2");
    assert_eq!(md[DEAD_GROUP_KEY], "");
    assert!(
        md[DEAD_ERROR_KEY].contains("the handler always fails"),
        "{md:?}"
    );
}

async fn undecodable_payloads_are_dead_lettered_at_once(broker: Arc<dyn Broker>, topic: String) {
    let (handler, seen) = recorder();
    let opts = SubscribeOptions::new().retry_backoff(Duration::from_millis(10));
    let _sub = broker.subscribe(&topic, opts, handler).await.unwrap();
    let mut dead = DeadLetters::subscribe(&*broker, &topic).await;

    // 0xc1 is never valid MessagePack.
    let garbage = Bytes::from_static(b"\xc1 not an order");
    let id = broker
        .publish(&topic, garbage.clone(), Metadata::new())
        .await
        .unwrap();
    let letter = dead.recv().await;
    assert_eq!(letter.payload, garbage);
    assert_eq!(letter.metadata[DEAD_ID_KEY], id);
    assert_eq!(letter.metadata[DEAD_ATTEMPTS_KEY], "1");
    let error = &letter.metadata[DEAD_ERROR_KEY];
    assert!(
        error.contains("does not decode into") && error.contains("Order"),
        "{error}"
    );

    // The subscription goes on with the next message.
    broker::publish(&*broker, &topic, &order(2)).await.unwrap();
    wait_for("the next message", WAIT, || {
        distinct(&seen) == HashSet::from([2])
    })
    .await;
}

async fn unsubscribing_stops_deliveries(broker: Arc<dyn Broker>, topic: String) {
    let (leaving, seen_leaving) = recorder();
    let (staying, seen_staying) = recorder();
    let leaving = broker
        .subscribe(&topic, SubscribeOptions::new(), leaving)
        .await
        .unwrap();
    let _staying = broker
        .subscribe(&topic, SubscribeOptions::new(), staying)
        .await
        .unwrap();
    broker::publish(&*broker, &topic, &order(1)).await.unwrap();
    wait_for("the first message", WAIT, || {
        distinct(&seen_leaving).len() == 1 && distinct(&seen_staying).len() == 1
    })
    .await;

    leaving.unsubscribe().await;
    broker::publish(&*broker, &topic, &order(2)).await.unwrap();
    wait_for("the second message", WAIT, || {
        distinct(&seen_staying).len() == 2
    })
    .await;
    assert_eq!(distinct(&seen_leaving), HashSet::from([1]));
}

// ---------------------------------------------------------------------------
// Servers that are down or restart.

#[tokio::test]
async fn nats_refuses_to_connect_to_a_down_server() {
    refused_in_time(NatsBroker::connect(DOWN_ADDRESS)).await;
}

#[tokio::test]
async fn redis_refuses_to_connect_to_a_down_server() {
    refused_in_time(RedisBroker::connect(DOWN_ADDRESS)).await;
}

#[tokio::test]
async fn malformed_addresses_are_refused() {
    let e = NatsBroker::connect("http://127.0.0.1:4222")
        .await
        .unwrap_err();
    assert_eq!(e.code, 400, "{e}");
    let e = RedisBroker::connect("http://127.0.0.1:6379")
        .await
        .unwrap_err();
    assert_eq!(e.code, 400, "{e}");
}

#[tokio::test]
async fn nats_survives_a_server_restart() {
    let mut server = nats_server(&[]).await;
    let address = format!("nats://127.0.0.1:{}", server.port);
    let broker = NatsBroker::connect(&address).await.unwrap();
    survives_a_restart(Arc::new(broker), &address, &mut server).await;
}

#[tokio::test]
async fn redis_survives_a_server_restart() {
    let mut server = redis_server().await;
    let address = format!("127.0.0.1:{}", server.port);
    let broker = RedisBroker::connect(&address).await.unwrap();
    survives_a_restart(Arc::new(broker), &address, &mut server).await;
}

/// While the server is down, publishing fails with a 503 naming it; once it
/// is back, publishing works and both a broadcast subscriber and a queue
/// group member receive again.
async fn survives_a_restart(broker: Arc<dyn Broker>, address: &str, server: &mut Server) {
    let topic = topic("restart");
    let (one, seen_one) = recorder();
    let (member, seen_member) = recorder();
    let _one = broker
        .subscribe(&topic, SubscribeOptions::new(), one)
        .await
        .unwrap();
    let _member = broker
        .subscribe(&topic, SubscribeOptions::new().queue(GROUP), member)
        .await
        .unwrap();
    broker::publish(&*broker, &topic, &order(0)).await.unwrap();
    wait_for("the message before the restart", WAIT, || {
        distinct(&seen_one).contains(&0) && distinct(&seen_member).contains(&0)
    })
    .await;

    server.kill();
    let e = eventually("publishing to fail", WAIT, || {
        let (broker, topic) = (Arc::clone(&broker), topic.clone());
        async move {
            let order = order(1);
            let publishing = broker::publish(&*broker, &topic, &order);
            tokio::time::timeout(Duration::from_secs(10), publishing)
                .await
                .expect("publish returned within 10 s")
                .err()
        }
    })
    .await;
    assert_eq!(e.code, 503, "{e}");
    assert!(e.detail.contains(address), "{e}");

    server.restart().await;
    let mut next = 100;
    eventually(
        "both subscribers to receive after the restart",
        RECOVERY,
        || {
            next += 1;
            let (broker, topic, id) = (Arc::clone(&broker), topic.clone(), next);
            let (seen_one, seen_member) = (Arc::clone(&seen_one), Arc::clone(&seen_member));
            async move {
                // Failures are expected until the broker has reconnected.
                let _ = broker::publish(&*broker, &topic, &order(id)).await;
                let after =
                    |seen: &Arc<Mutex<Vec<u64>>>| seen.lock().unwrap().iter().any(|&i| i > 100);
                (after(&seen_one) && after(&seen_member)).then_some(())
            }
        },
    )
    .await;
    broker::publish(&*broker, &topic, &order(1000))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// A foreign NATS client.

#[tokio::test]
async fn nats_python_client_receives_micro_messages() {
    let broker = NatsBroker::connect(DEFAULT_NATS_ADDRESS).await.unwrap();
    let topic = topic("to_python");
    let mut python = Python::run(&["receive", DEFAULT_NATS_ADDRESS, &topic]);
    assert_eq!(python.line().await, "READY");

    let body = serde_json::json!({"id": 7, "item": "book"});
    let metadata = Metadata::from([(CONTENT_TYPE_KEY.to_owned(), "application/json".to_owned())]);
    let id = broker
        .publish(&topic, serde_json::to_vec(&body).unwrap().into(), metadata)
        .await
        .unwrap();

    let received: serde_json::Value = serde_json::from_str(&python.line().await).unwrap();
    assert_eq!(received["subject"], topic.as_str());
    assert_eq!(received["body"], body);
    let headers = &received["headers"];
    assert_eq!(headers[ID_KEY], id.as_str(), "{headers}");
    assert_eq!(headers[CONTENT_TYPE_KEY], "application/json", "{headers}");
    assert!(
        headers[TIMESTAMP_KEY]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok(),
        "{headers}"
    );
    assert!(
        headers[TRACE_ID_KEY]
            .as_str()
            .unwrap()
            .parse::<TraceId>()
            .is_ok(),
        "{headers}"
    );
}

#[tokio::test]
async fn micro_receives_python_client_messages() {
    let broker = NatsBroker::connect(DEFAULT_NATS_ADDRESS).await.unwrap();
    let topic = topic("from_python");
    let (handler, seen) = recorder();
    let _sub = broker
        .subscribe(&topic, SubscribeOptions::new(), handler)
        .await
        .unwrap();

    let body = r#"{"id": 7, "item": "book"}"#;
    let mut python = Python::run(&["publish", DEFAULT_NATS_ADDRESS, &topic, body]);
    assert_eq!(python.line().await, "SENT");
    wait_for("the message of the Python client", WAIT, || {
        distinct(&seen) == HashSet::from([7])
    })
    .await;
}

// ---------------------------------------------------------------------------
// Helpers.

/// A typed handler recording the ids of the orders it gets.
fn recorder() -> (MessageHandler, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::clone(&seen);
    let handler = broker::typed(move |o: Order| {
        ids.lock().unwrap().push(o.id);
        async { Ok(()) }
    });
    (handler, seen)
}

fn distinct(seen: &Mutex<Vec<u64>>) -> HashSet<u64> {
    seen.lock().unwrap().iter().copied().collect()
}

/// A subscriber to the dead-letter topic of a topic.
struct DeadLetters {
    rx: mpsc::UnboundedReceiver<Event>,
    _sub: broker::Subscription,
}

impl DeadLetters {
    async fn subscribe(broker: &dyn Broker, topic: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: MessageHandler = Arc::new(move |event: Event| {
            let _ = tx.send(event);
            Box::pin(async { Ok(()) })
        });
        let dead = format!("{topic}.dead");
        let _sub = broker
            .subscribe(&dead, SubscribeOptions::new(), handler)
            .await
            .unwrap();
        Self { rx, _sub }
    }

    async fn recv(&mut self) -> Event {
        recv(&mut self.rx).await
    }

    fn try_recv(mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("the handler is gone")
}

/// Waits until `condition` holds; fails the test after `limit`.
async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    eventually(what, limit, || {
        std::future::ready(condition().then_some(()))
    })
    .await;
}

/// `nats_interop.py`, whose output lines are read as they come.
struct Python {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Python {
    fn run(args: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nats_interop.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs (the NATS interop tests need python3 and `pip install nats-py`)");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next line the script prints; fails the test with its error output
    /// if it exits first (e.g. without nats-py) or takes too long.
    async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.recv()).await;
        match line {
            Ok(Some(line)) => line,
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().and_then(|t| t.join().ok());
                panic!(
                    "nats_interop.py printed nothing more (does `python3 -c 'import nats'` work? \
                     if not: pip install nats-py); its error output:\n{}",
                    stderr.unwrap_or_default()
                );
            }
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
