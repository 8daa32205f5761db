//! The mDNS registry between registries and between processes.
//!
//! Isolation: when running as root with `unshare` available, each test
//! re-executes its own test binary (`--exact <test> --nocapture`, with
//! `MICRO_MDNS_TEST_CHILD=1`) inside `unshare -n` after `ip link set lo up`,
//! so all the multicast happens in a network namespace that has only `lo`
//! and nothing can reach a real network. Otherwise the test runs in place
//! with the default options, which speak on loopback only (the socket joins
//! the group on 127.0.0.1 and sends with IP_MULTICAST_IF 127.0.0.1), and on a
//! random high port so that parallel runs do not see each other.

use micro_runtime::registry::{Endpoint, Event, EventKind, Node, Registry, ServiceRecord, Watcher};
use micro_runtime::{MdnsOptions, MdnsRegistry};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::{timeout, Instant};

const CHILD_ENV: &str = "MICRO_MDNS_TEST_CHILD";
const HELPER_ENV: &str = "MICRO_MDNS_TEST_HELPER_PORT";

/// Runs `body` in a network namespace with only `lo` when possible (see the
/// module docs), else in place.
fn isolated(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() || !can_unshare() {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = Command::new("unshare")
        .args(["-n", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .status()
        .expect("run unshare");
    assert!(
        status.success(),
        "{test} failed in its network namespace: {status}"
    );
}

fn can_unshare() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root && Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn port() -> u16 {
    rand::random_range(20_000..60_000)
}

fn registry(port: u16) -> MdnsRegistry {
    MdnsRegistry::new(MdnsOptions::default().port(port)).expect("mdns registry")
}

fn service(name: &str, id: &str, addr: &str) -> ServiceRecord {
    let endpoints = (0..4)
        .map(|i| Endpoint {
            name: format!("Greeter.Hello{i}"),
            request: "HelloRequest".into(),
            response: "HelloReply".into(),
            doc: format!("Says hello {i}, at length — with ünïcödé. ").repeat(30),
            metadata: BTreeMap::from([("stream".into(), (i % 2 == 0).to_string())]),
        })
        .collect();
    ServiceRecord {
        name: name.into(),
        version: "1.0.0".into(),
        metadata: BTreeMap::from([("team".into(), "core".into())]),
        endpoints,
        nodes: vec![Node {
            id: id.into(),
            address: addr.into(),
            metadata: BTreeMap::from([("transport".into(), "tcp".into())]),
        }],
    }
}

/// Polls `get_service` until `pred` holds, or panics after `within`.
async fn wait_for(
    r: &MdnsRegistry,
    name: &str,
    within: Duration,
    pred: impl Fn(&[ServiceRecord]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if pred(&r.get_service(name).await.unwrap()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "condition on {name} not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event of `kind` (others are skipped), or panics after `within`.
async fn next_event(w: &mut Watcher, kind: EventKind, within: Duration) -> (Event, Duration) {
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        let ev = timeout(left, w.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event within {within:?}"))
            .expect("watch ended");
        if ev.kind == kind {
            return (ev, start.elapsed());
        }
    }
}

fn nodes(recs: &[ServiceRecord]) -> Vec<String> {
    recs.iter()
        .flat_map(|r| r.nodes.iter().map(|n| n.id.clone()))
        .collect()
}

#[test]
fn registries_see_each_other() {
    isolated("registries_see_each_other", || {
        runtime().block_on(async {
            let port = port();
            let a = registry(port);
            let b = registry(port);
            let mut w = b.watch(Some("greeter")).await.unwrap();
            let mut all = b.watch(None).await.unwrap();
            let rec = service("greeter", "greeter-a1", "127.0.0.1:4001");
            a.register(&rec, Duration::from_secs(30)).await.unwrap();

            let (ev, seen_in) = next_event(&mut w, EventKind::Create, Duration::from_secs(3)).await;
            eprintln!("B saw A's registration (watch Create) after {seen_in:?}");
            assert_eq!(
                ev.service, rec,
                "record (with long endpoint docs) round-trips"
            );
            assert_eq!(
                next_event(&mut all, EventKind::Create, Duration::from_secs(1))
                    .await
                    .0
                    .service,
                rec
            );
            assert_eq!(b.get_service("greeter").await.unwrap(), vec![rec.clone()]);
            assert!(b
                .list_services()
                .await
                .unwrap()
                .iter()
                .any(|s| s.name == "greeter"));
            assert!(b.get_service("nobody").await.unwrap().is_empty());

            // A new registry finds it on its very first lookup (start-up query).
            let c = registry(port);
            let t = Instant::now();
            assert_eq!(
                nodes(&c.get_service("greeter").await.unwrap()),
                ["greeter-a1"]
            );
            eprintln!(
                "a fresh registry's first get_service answered in {:?}",
                t.elapsed()
            );

            // Refreshes are no Create; a change is an Update.
            for _ in 0..3 {
                a.register(&rec, Duration::from_secs(30)).await.unwrap();
            }
            let mut changed = rec.clone();
            changed.nodes[0]
                .metadata
                .insert("load".into(), "high".into());
            a.register(&changed, Duration::from_secs(30)).await.unwrap();
            let (ev, _) = next_event(&mut w, EventKind::Update, Duration::from_secs(2)).await;
            assert_eq!(ev.service, changed);

            // A second node of the same service in B's own process.
            let rec2 = service("greeter", "greeter-b1", "127.0.0.1:4002");
            b.register(&rec2, Duration::from_secs(30)).await.unwrap();
            wait_for(&a, "greeter", Duration::from_secs(3), |r| {
                r.len() == 1 && r[0].nodes.len() == 2
            })
            .await;

            // Goodbye: B drops A's node at once.
            let t = Instant::now();
            a.deregister(&changed).await.unwrap();
            let (ev, _) = next_event(&mut w, EventKind::Delete, Duration::from_secs(2)).await;
            eprintln!("B saw A's deregistration after {:?}", t.elapsed());
            assert_eq!(nodes(std::slice::from_ref(&ev.service)), ["greeter-a1"]);
            assert_eq!(
                nodes(&b.get_service("greeter").await.unwrap()),
                ["greeter-b1"]
            );
            // No Create for greeter-a1 may follow (no stale announcement revives it).
            tokio::time::sleep(Duration::from_millis(300)).await;
            while let Ok(ev) = w.try_recv() {
                assert!(ev.service.nodes[0].id != "greeter-a1", "stale event {ev:?}");
            }
        });
    });
}

/// The helper of `killed_process_drops_out`: registers a node with a 2 s TTL,
/// refreshes it every 600 ms, and never says goodbye (it gets SIGKILLed).
/// Does nothing unless run by that test.
#[test]
fn helper_register_and_sleep() {
    let Some(port) = std::env::var(HELPER_ENV).ok().and_then(|p| p.parse().ok()) else {
        return;
    };
    runtime().block_on(async {
        let r = registry(port);
        let rec = service("pinger", "pinger-child", "127.0.0.1:4100");
        loop {
            r.register(&rec, Duration::from_secs(2)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    });
}

#[test]
fn killed_process_drops_out() {
    isolated("killed_process_drops_out", || {
        runtime().block_on(async {
            let port = port();
            let b = registry(port);
            let mut w = b.watch(Some("pinger")).await.unwrap();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "helper_register_and_sleep", "--nocapture"])
                .env(HELPER_ENV, port.to_string())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn helper");
            let started = Instant::now();
            let (ev, _) = next_event(&mut w, EventKind::Create, Duration::from_secs(10)).await;
            eprintln!(
                "saw the other process's node {:?} after spawning it",
                started.elapsed()
            );
            assert_eq!(ev.service.nodes[0].id, "pinger-child");
            assert_eq!(ev.service.endpoints.len(), 4);

            // Alive for several TTLs: refreshes from the other process are seen.
            let alive_until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < alive_until {
                assert_eq!(
                    nodes(&b.get_service("pinger").await.unwrap()),
                    ["pinger-child"]
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while let Ok(ev) = w.try_recv() {
                assert_ne!(ev.kind, EventKind::Delete, "a live node expired: {ev:?}");
            }

            child.kill().unwrap(); // SIGKILL: no goodbye
            child.wait().unwrap();
            let killed = Instant::now();
            let (_, after) = next_event(&mut w, EventKind::Delete, Duration::from_secs(4)).await;
            eprintln!("the killed process's node (TTL 2 s) dropped out {after:?} after the kill");
            assert!(
                killed.elapsed() <= Duration::from_millis(2_000 + 800),
                "dropped after {after:?}"
            );
            assert!(b.get_service("pinger").await.unwrap().is_empty());
        });
    });
}

#[test]
fn dropping_the_registry_says_goodbye() {
    isolated("dropping_the_registry_says_goodbye", || {
        runtime().block_on(async {
            let port = port();
            let b = registry(port);
            let mut w = b.watch(Some("dropper")).await.unwrap();
            let a = registry(port);
            a.register(
                &service("dropper", "dropper-1", "127.0.0.1:4200"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            next_event(&mut w, EventKind::Create, Duration::from_secs(3)).await;
            drop(a);
            next_event(&mut w, EventKind::Delete, Duration::from_secs(2)).await;
        });
    });
}
