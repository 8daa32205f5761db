//! `#[subscriber]`s on services with the native broker, end to end over
//! loopback through the in-memory registry: queue groups and broadcast,
//! metadata, retries, dead letters, undecodable messages, failover.

use micro::broker::{self, Broker, NativeBroker, SubscribeOptions, ID_KEY, TIMESTAMP_KEY};
use micro::events::{DEAD_ATTEMPTS_KEY, DEAD_ERROR_KEY, DEAD_TOPIC_KEY};
use micro::prelude::*;
use micro::{MemoryRegistry, Registry, RunningService};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

#[micro::message]
#[derive(Debug, Clone, PartialEq)]
pub struct UserCreated {
    pub id: u64,
    pub name: String,
}

/// What a subscriber saw: the message and the context it ran in.
#[derive(Debug, Clone)]
struct Seen {
    who: &'static str,
    id: u64,
    trace: String,
    message_id: Option<String>,
    timestamp: Option<String>,
}

#[derive(Clone)]
struct Recorder {
    who: &'static str,
    tx: mpsc::UnboundedSender<Seen>,
    /// Fail the first `n` attempts of each message.
    fail_first: u32,
    attempts: Arc<Mutex<BTreeMap<u64, u32>>>,
}

#[micro::subscriber]
impl Recorder {
    #[subscriber(topic = "user.created", queue = "mailer")]
    async fn mail(&self, event: UserCreated) -> micro::Result<()> {
        self.record(event)
    }
}

impl Recorder {
    fn new(who: &'static str, tx: &mpsc::UnboundedSender<Seen>) -> Self {
        Self {
            who,
            tx: tx.clone(),
            fail_first: 0,
            attempts: Arc::default(),
        }
    }

    fn record(&self, event: UserCreated) -> micro::Result<()> {
        let n = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(event.id).or_default();
            *n += 1;
            *n
        };
        if n <= self.fail_first {
            return Err(Error::internal("test", format!("attempt {n} fails")));
        }
        let ctx = Context::current();
        let _ = self.tx.send(Seen {
            who: self.who,
            id: event.id,
            trace: ctx.trace_id().to_string(),
            message_id: ctx.get(ID_KEY).map(str::to_owned),
            timestamp: ctx.get(TIMESTAMP_KEY).map(str::to_owned),
        });
        Ok(())
    }
}

/// A broadcast subscriber: a free function.
static AUDIT: Mutex<Option<mpsc::UnboundedSender<u64>>> = Mutex::new(None);

#[micro::subscriber(topic = "user.created")]
async fn audit(event: UserCreated) -> micro::Result<()> {
    if let Some(tx) = AUDIT.lock().unwrap().as_ref() {
        let _ = tx.send(event.id);
    }
    Ok(())
}

async fn service(
    registry: &Arc<MemoryRegistry>,
    name: &str,
    build: impl FnOnce(Service) -> Service,
) -> RunningService {
    build(
        Service::new(name)
            .address("127.0.0.1:0")
            .registry(Arc::clone(registry) as Arc<dyn Registry>),
    )
    .start()
    .await
    .unwrap()
}

/// A member of the `mailer` queue group recording what it sees on `tx`.
async fn mailer(
    registry: &Arc<MemoryRegistry>,
    who: &'static str,
    tx: &mpsc::UnboundedSender<Seen>,
) -> RunningService {
    service(registry, "mailer", |s| s.subscriber(Recorder::new(who, tx))).await
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("nothing received in time")
        .expect("channel closed")
}

fn user(id: u64) -> UserCreated {
    UserCreated {
        id,
        name: format!("user {id}"),
    }
}

#[tokio::test]
async fn queue_members_share_and_broadcast_subscribers_get_all() {
    let registry = Arc::new(MemoryRegistry::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (atx, mut arx) = mpsc::unbounded_channel();
    *AUDIT.lock().unwrap() = Some(atx);
    let a = mailer(&registry, "a", &tx).await;
    let b = mailer(&registry, "b", &tx).await;
    let auditor = service(&registry, "audit", |s| s.subscriber(audit)).await;
    let publisher = service(&registry, "signup", |s| s).await;

    let n = 100;
    for id in 0..n {
        // `publish` returns once every group has handled the message.
        publisher.publish("user.created", &user(id)).await.unwrap();
    }
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        let seen = recv(&mut rx).await;
        *by.entry(seen.who).or_default() += 1;
        ids.push(seen.id);
        assert_eq!(seen.trace.len(), 32);
        assert_eq!(seen.message_id.as_ref().map(String::len), Some(32));
        assert!(seen.timestamp.is_some());
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..n).collect::<Vec<_>>(),
        "each message once in the group"
    );
    assert!(by["a"] > 0 && by["b"] > 0, "both members worked: {by:?}");
    let mut audited: Vec<u64> = Vec::new();
    for _ in 0..n {
        audited.push(recv(&mut arx).await);
    }
    audited.sort_unstable();
    assert_eq!(audited, (0..n).collect::<Vec<_>>());
    assert!(rx.try_recv().is_err(), "no duplicates in the group");

    for s in [a, b, auditor, publisher] {
        s.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_trace_id_of_the_publisher_reaches_the_subscriber() {
    let registry = Arc::new(MemoryRegistry::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = mailer(&registry, "a", &tx).await;
    let publisher = service(&registry, "signup", |s| s).await;
    let ctx = Context::new(
        None,
        Default::default(),
        "Signup.Create".into(),
        micro::TraceId(0xfeed),
    );
    ctx.scope(publisher.publish("user.created", &user(1)))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await.trace, format!("{:032x}", 0xfeed));
    sub.stop().await.unwrap();
    publisher.stop().await.unwrap();
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered() {
    let registry = Arc::new(MemoryRegistry::new());
    let broker: Arc<dyn Broker> =
        Arc::new(NativeBroker::new(Arc::clone(&registry) as Arc<dyn Registry>).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let flaky = Recorder {
        fail_first: 2,
        ..Recorder::new("flaky", &tx)
    };
    let attempts = Arc::clone(&flaky.attempts);
    let sub = service(&registry, "mailer", |s| {
        s.subscriber(flaky).broker(Arc::clone(&broker))
    })
    .await;

    // Fails twice, handled on the third attempt.
    broker::publish(&*broker, "user.created", &user(1))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await.id, 1);
    assert_eq!(attempts.lock().unwrap()[&1], 3);

    // A subscriber that always fails: five attempts, then the dead-letter topic.
    let (dtx, mut drx) = mpsc::unbounded_channel();
    let dead = broker
        .subscribe(
            "orders.dead",
            SubscribeOptions::new(),
            Arc::new(move |event: micro::events::Event| {
                let _ = dtx.send(event);
                Box::pin(async { Ok(()) })
            }),
        )
        .await
        .unwrap();
    let counter = Arc::new(Mutex::new(0u32));
    let c = Arc::clone(&counter);
    let failing = broker
        .subscribe(
            "orders",
            SubscribeOptions::new().retry_backoff(Duration::from_millis(5)),
            broker::typed(move |_: u32| {
                *c.lock().unwrap() += 1;
                async { Err(Error::internal("orders", "database down")) }
            }),
        )
        .await
        .unwrap();
    let id = broker::publish(&*broker, "orders", &42u32).await.unwrap();
    let letter = recv(&mut drx).await;
    assert_eq!(*counter.lock().unwrap(), 5);
    assert_eq!(letter.metadata[DEAD_TOPIC_KEY], "orders");
    assert_eq!(letter.metadata[DEAD_ATTEMPTS_KEY], "5");
    assert!(letter.metadata[DEAD_ERROR_KEY].contains("database down"));
    assert_eq!(
        letter.metadata[ID_KEY], id,
        "the dead letter keeps the message id"
    );
    assert_eq!(letter.decode::<u32>().unwrap(), 42);

    // A payload that is not a u32: dead-lettered at once, and the next one goes through.
    *counter.lock().unwrap() = 0;
    broker::publish(&*broker, "orders", "not a number")
        .await
        .unwrap();
    let letter = recv(&mut drx).await;
    assert_eq!(letter.metadata[DEAD_ATTEMPTS_KEY], "1");
    assert!(
        letter.metadata[DEAD_ERROR_KEY].contains("does not decode into u32"),
        "{:?}",
        letter.metadata
    );
    assert_eq!(*counter.lock().unwrap(), 0, "never reached the handler");

    failing.unsubscribe().await;
    dead.unsubscribe().await;
    sub.stop().await.unwrap();
}

#[tokio::test]
async fn a_stopped_member_hands_over_to_the_rest_of_its_group() {
    let registry = Arc::new(MemoryRegistry::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = mailer(&registry, "a", &tx).await;
    let b = mailer(&registry, "b", &tx).await;
    let publisher = service(&registry, "signup", |s| s).await;
    a.stop().await.unwrap();
    for id in 0..20 {
        publisher.publish("user.created", &user(id)).await.unwrap();
        assert_eq!(recv(&mut rx).await.who, "b");
    }
    b.stop().await.unwrap();
    // Nobody subscribes any more: publishing is not an error.
    publisher.publish("user.created", &user(99)).await.unwrap();
    publisher.stop().await.unwrap();
}

#[tokio::test]
async fn bad_topics_are_refused() {
    let registry = Arc::new(MemoryRegistry::new());
    let publisher = service(&registry, "signup", |s| s).await;
    let e = publisher.publish("a/b", &1u8).await.unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.detail.contains("invalid topic"), "{e}");
    publisher.stop().await.unwrap();
}
