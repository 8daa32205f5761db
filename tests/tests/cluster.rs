//! Multi-process tests: several `micro-test-node` processes found by mDNS.
//!
//! As root each test re-executes itself inside a network namespace that has
//! only `lo` (`unshare -n`), so nothing can multicast elsewhere; otherwise mDNS
//! stays on `lo`, micro's default.

use micro::registry::{EventKind, Registry};
use micro::{Client, MdnsOptions, MdnsRegistry, MemoryRegistry, Strategy};
use micro_tests::{
    free_udp_port, in_netns, reexec_in_loopback_netns, wait_until, NodeInfoClient, NodeProcess,
};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_micro-test-node");

fn node_env(port: u16, ttl: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MICRO_REGISTRY", "mdns".into()),
        ("MICRO_MDNS_INTERFACES", "lo".into()),
        ("MICRO_MDNS_PORT", port.to_string()),
        ("MICRO_SERVER_ADDRESS", "127.0.0.1:0".into()),
        ("MICRO_REGISTER_TTL", ttl.into()),
        ("MICRO_REGISTER_INTERVAL", "1s".into()),
        ("MICRO_GRACE_PERIOD", "10s".into()),
    ]
}

fn mdns(port: u16) -> Arc<MdnsRegistry> {
    Arc::new(
        MdnsRegistry::new(MdnsOptions::default().interfaces(["lo"]).port(port))
            .expect("mdns registry"),
    )
}

async fn node_count(registry: &MdnsRegistry) -> usize {
    registry
        .get_service("node")
        .await
        .unwrap()
        .iter()
        .map(|r| r.nodes.len())
        .sum()
}

/// A client aimed at one node only (by its address), to read its `Debug.Stats`.
async fn stats_of(address: &str) -> micro::Stats {
    let reg = MemoryRegistry::new();
    let record = micro::registry::ServiceRecord {
        name: "node".into(),
        nodes: vec![micro::registry::Node {
            id: "one".into(),
            address: address.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    reg.register(&record, Duration::from_secs(60))
        .await
        .unwrap();
    let client = Client::with_registry(Arc::new(reg)).unwrap();
    client
        .call("node", "Debug.Stats", &(), &micro::CallOptions::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_calls_and_survive_sigkill() {
    if reexec_in_loopback_netns("three_nodes_share_calls_and_survive_sigkill") {
        return;
    }
    if in_netns() {
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&out.stdout).into_owned();
        let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
        assert_eq!(names, ["lo"], "the namespace must have only loopback");
    }
    let port = free_udp_port();
    let env = node_env(port, "3s");
    let mut nodes: Vec<NodeProcess> = (0..3).map(|_| NodeProcess::start(NODE, &env)).collect();
    let registry = mdns(port);
    wait_until(
        "three nodes found by mDNS",
        Duration::from_secs(10),
        || async { node_count(&registry).await == 3 },
    )
    .await;

    let client = Client::builder()
        .registry(registry.clone())
        .selector(Strategy::RoundRobin)
        .build()
        .unwrap();
    let node = NodeInfoClient::new(&client);
    let mut served: HashMap<u32, usize> = HashMap::new();
    for _ in 0..300 {
        *served.entry(node.whoami().await.unwrap()).or_default() += 1;
    }
    let pids: Vec<u32> = nodes.iter().map(NodeProcess::pid).collect();
    for pid in &pids {
        assert!(
            served.get(pid).copied().unwrap_or(0) >= 50,
            "calls not spread over all nodes: {served:?}"
        );
    }

    // A stream of calls from 8 tasks; one node is SIGKILLed in the middle.
    let ok = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            let ok = Arc::clone(&ok);
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    node.whoami().await?;
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), micro::Error>(())
            })
        })
        .collect();
    wait_until("calls to flow", Duration::from_secs(5), || async {
        ok.load(Ordering::Relaxed) > 200
    })
    .await;
    let victim = nodes.remove(0);
    victim.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    drop(victim);
    for w in workers {
        w.await
            .unwrap()
            .expect("every call succeeds while a node dies");
    }
    println!(
        "{} calls succeeded across the SIGKILL",
        ok.load(Ordering::Relaxed)
    );

    // The dead node leaves the registry within its TTL (3 s), plus a margin for the sweep.
    wait_until(
        "the killed node to expire",
        Duration::from_secs(5),
        || async { node_count(&registry).await == 2 },
    )
    .await;
    println!(
        "killed node left the registry after {:?}",
        killed_at.elapsed()
    );
    assert!(killed_at.elapsed() < Duration::from_millis(4500));
    for n in &mut nodes {
        n.signal(Signal::SIGTERM);
        assert!(n.wait_exit(Duration::from_secs(15)).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_calls_and_deregisters_at_once() {
    if reexec_in_loopback_netns("sigterm_drains_in_flight_calls_and_deregisters_at_once") {
        return;
    }
    let port = free_udp_port();
    // A long TTL: the node can only leave this fast by deregistering.
    let env = node_env(port, "60s");
    let mut nodes: Vec<NodeProcess> = (0..2).map(|_| NodeProcess::start(NODE, &env)).collect();
    let registry = mdns(port);
    wait_until("two nodes found", Duration::from_secs(10), || async {
        node_count(&registry).await == 2
    })
    .await;
    let mut watch = registry.watch(Some("node")).await.unwrap();

    let client = Client::builder()
        .registry(registry.clone())
        .selector(Strategy::RoundRobin)
        .build()
        .unwrap();
    let node = NodeInfoClient::new(&client).with_timeout(Duration::from_secs(20));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.sleep(1500).await })
        })
        .collect();
    let victim_addr = nodes[0].address.clone();
    wait_until(
        "calls in flight on the victim",
        Duration::from_secs(5),
        || async { stats_of(&victim_addr).await.in_flight >= 2 },
    )
    .await;

    nodes[0].signal(Signal::SIGTERM);
    let termed = Instant::now();
    let deregistered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = watch.recv().await {
            if ev.kind == EventKind::Delete
                && ev.service.nodes.iter().any(|n| n.address == victim_addr)
            {
                return termed.elapsed();
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the node deregisters on SIGTERM");
    println!("deregistered {deregistered:?} after SIGTERM");
    assert!(deregistered < Duration::from_secs(2));

    let victim_pid = nodes[0].pid();
    let mut by_victim = 0;
    for c in calls {
        if c.await.unwrap().expect("in-flight calls complete") == victim_pid {
            by_victim += 1;
        }
    }
    assert_eq!(by_victim, 2, "the draining node finished its own calls");
    assert!(
        nodes[0].wait_exit(Duration::from_secs(10)).success(),
        "exit code 0 after draining"
    );
    // New calls go to the remaining node.
    assert_eq!(node.whoami().await.unwrap(), nodes[1].pid());
}
