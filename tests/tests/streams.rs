//! Streams across two processes: a `micro-test-node` serves the `Streams`
//! contract; this process calls it through the generated client.

use micro::registry::{Node, Registry, ServiceRecord};
use micro::{Client, MemoryRegistry, Streaming};
use micro_tests::{rss_bytes, wait_until, NodeInfoClient, NodeProcess, StreamStats, StreamsClient};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_micro-test-node");

/// A node process serving on loopback, and a client that reaches it.
async fn node() -> (NodeProcess, Client) {
    let node = NodeProcess::start(
        NODE,
        &[
            ("MICRO_REGISTRY", "memory".into()),
            ("MICRO_SERVER_ADDRESS", "127.0.0.1:0".into()),
            ("MICRO_GRACE_PERIOD", "1s".into()),
        ],
    );
    let reg = MemoryRegistry::new();
    let record = ServiceRecord {
        name: "node".into(),
        nodes: vec![Node {
            id: "child".into(),
            address: node.address.clone(),
            ..Default::default()
        }],
        ..Default::default()
    };
    reg.register(&record, Duration::from_secs(600))
        .await
        .unwrap();
    let client = Client::with_registry(Arc::new(reg)).unwrap();
    (node, client)
}

async fn stats(streams: &StreamsClient) -> StreamStats {
    streams.stream_stats().await.unwrap()
}

/// Waits until the node has counted `n` cancelled streams; returns how long it took.
async fn cancelled(streams: &StreamsClient, n: u64) -> Duration {
    let start = Instant::now();
    wait_until(
        &format!("the node to see cancel #{n}"),
        Duration::from_secs(2),
        || async { stats(streams).await.cancelled >= n },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shape_with_errors_across_processes() {
    let (_node, client) = node().await;
    let streams = StreamsClient::new(&client);

    let down = streams.countdown(5, 0, None).await.unwrap();
    assert_eq!(down.collect_all().await.unwrap(), vec![5, 4, 3, 2, 1]);

    let mut failing = streams.countdown(5, 0, Some(3)).await.unwrap();
    assert_eq!(failing.message().await.unwrap(), Some(5));
    assert_eq!(failing.message().await.unwrap(), Some(4));
    let e = failing.message().await.unwrap_err();
    assert_eq!((e.code, e.detail.as_str()), (409, "refused to count 3"));
    assert_eq!(failing.message().await.unwrap(), None);

    assert_eq!(
        streams.sum(Streaming::iter(1..=1000)).await.unwrap(),
        500_500
    );
    let e = streams
        .sum(Streaming::iter([1, 2, -3, 4]))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.detail.as_str()), (400, "negative number -3"));

    let (tx, lines) = Streaming::channel(2);
    let mut echoes = streams.chat(lines).await.unwrap();
    for line in ["one", "two", "three"] {
        tx.send(line.to_string()).await.unwrap();
        assert_eq!(
            echoes.message().await.unwrap().unwrap(),
            line.to_uppercase()
        );
    }
    drop(tx);
    assert_eq!(echoes.message().await.unwrap(), None);

    wait_until(
        "every handler to finish",
        Duration::from_secs(2),
        || async { stats(&streams).await.running == 0 },
    )
    .await;
    assert_eq!(stats(&streams).await.cancelled, 0, "nothing was cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_handler_in_the_other_process() {
    let (_node, client) = node().await;
    let streams = StreamsClient::new(&client);

    // Server streaming: drop the stream after one item.
    let mut down = streams.countdown(1_000, 10, None).await.unwrap();
    assert_eq!(down.message().await.unwrap(), Some(1_000));
    drop(down);
    let took = cancelled(&streams, 1).await;
    println!("server streaming: cancel seen after {took:?}");

    // Client streaming: give up on the call while the items still flow.
    let (tx, nums) = Streaming::channel(1);
    let call = tokio::spawn({
        let streams = streams.clone();
        async move { streams.sum(nums).await }
    });
    tx.send(1).await.unwrap();
    wait_until("the sum handler to run", Duration::from_secs(2), || async {
        stats(&streams).await.running == 1
    })
    .await;
    call.abort();
    let took = cancelled(&streams, 2).await;
    println!("client streaming: cancel seen after {took:?}");

    // Bidirectional: drop the replies while the input is still open.
    let (tx, lines) = Streaming::channel(1);
    let mut echoes = streams.chat(lines).await.unwrap();
    tx.send("hi".to_string()).await.unwrap();
    assert_eq!(echoes.message().await.unwrap().unwrap(), "HI");
    drop(echoes);
    let took = cancelled(&streams, 3).await;
    println!("bidirectional: cancel seen after {took:?}");
    drop(tx);

    wait_until("no handler left", Duration::from_secs(2), || async {
        stats(&streams).await.running == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_bounds_the_senders_memory_and_unary_calls_go_on() {
    const ITEM: u32 = 64 * 1024;
    const GIB_OF_ITEMS: u64 = (1 << 30) / ITEM as u64;
    let (node, client) = node().await;
    let streams = StreamsClient::new(&client);
    let info = NodeInfoClient::new(&client);
    // Warm the connection and the node's allocator up, then measure.
    info.whoami().await.unwrap();
    let before = rss_bytes(node.pid());

    let mut flood = streams.flood(ITEM, GIB_OF_ITEMS).await.unwrap();
    let mut peak = 0;
    let mut read = 0u64;
    for i in 0..200 {
        let item = flood.message().await.unwrap().unwrap();
        assert_eq!(item.len(), ITEM as usize);
        read += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        peak = peak.max(rss_bytes(node.pid()));
        if i == 100 {
            // A unary call on the same connection is not stuck behind the stream.
            let start = Instant::now();
            let pid = tokio::time::timeout(Duration::from_secs(2), info.whoami())
                .await
                .expect("a unary call completes while the stream is held back")
                .unwrap();
            assert_eq!(pid, node.pid());
            println!(
                "unary call during the held-back stream: {:?}",
                start.elapsed()
            );
        }
    }
    let produced = stats(&streams).await.produced;
    let growth = peak.saturating_sub(before);
    println!(
        "read {read} of {GIB_OF_ITEMS} items of {ITEM} B; the node produced {produced}; \
         its RSS grew by {:.1} MiB",
        growth as f64 / (1 << 20) as f64
    );
    assert!(
        produced <= read + 16,
        "the producer ran {} items ahead of the reader",
        produced - read
    );
    assert!(
        growth < 64 << 20,
        "the sender's memory grew by {growth} bytes"
    );
    drop(flood);
    cancelled(&streams, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_going_away_ends_the_stream_with_an_error() {
    let (node, client) = node().await;
    let streams = StreamsClient::new(&client);
    let mut down = streams.countdown(1_000, 10, None).await.unwrap();
    assert_eq!(down.message().await.unwrap(), Some(1_000));
    node.signal(Signal::SIGKILL);
    let e = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match down.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended cleanly although its server died"),
                Err(e) => break e,
            }
        }
    })
    .await
    .expect("the stream ends soon after its server dies");
    assert_eq!(e.code, 503, "{e}");
}
