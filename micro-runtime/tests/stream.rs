//! Streams over real TCP on loopback: the three shapes, errors, cancellation,
//! idle timeouts and flow control, with hand-written routes (the macro path is
//! tested in the `micro` crate, the cross-process one in `tests/`).

mod common;
use common::{settled, wait_until};

use futures_util::StreamExt;
use micro_runtime::server::{
    bidi_streaming, client_streaming, server_streaming, unary, EndpointDef, Handler, Route,
};
use micro_runtime::stream::WINDOW;
use micro_runtime::{CallOptions, Error, MemoryRegistry, Service, Streaming};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Probe {
    produced: AtomicUsize,
    dropped: AtomicUsize,
    consumed: AtomicUsize,
}

struct OnDrop(Arc<Probe>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

struct Svc(Arc<Probe>);

fn def(name: &'static str) -> EndpointDef {
    EndpointDef {
        name,
        request: "",
        response: "",
        doc: "",
    }
}

const BIG: usize = 64 * 1024;

impl Handler for Svc {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            server_streaming(
                def("Svc.Countdown"),
                Arc::clone(&self),
                |_s, from: u32| async move { Ok(Streaming::iter((1..=from).rev())) },
            ),
            server_streaming(
                def("Svc.Explode"),
                Arc::clone(&self),
                |_s, (): ()| async move {
                    let items: Vec<micro_runtime::Result<u32>> =
                        vec![Ok(1), Ok(2), Err(Error::conflict("svc", "went wrong at 3"))];
                    Ok(Streaming::try_new(futures_util::stream::iter(items)))
                },
            ),
            server_streaming(
                def("Svc.Refuse"),
                Arc::clone(&self),
                |_s, (): ()| async move {
                    Err::<Streaming<u32>, _>(Error::forbidden("svc", "not for you"))
                },
            ),
            client_streaming(
                def("Svc.Sum"),
                Arc::clone(&self),
                |_s, mut nums: Streaming<i64>| async move {
                    let mut total = 0;
                    while let Some(n) = nums.message().await? {
                        total += n;
                    }
                    Ok(total)
                },
            ),
            client_streaming(
                def("Svc.SlowSink"),
                Arc::clone(&self),
                |s, mut items: Streaming<Vec<u8>>| async move {
                    // Takes one item, then waits (for the test's cancel).
                    items.message().await?;
                    s.0.consumed.fetch_add(1, Ordering::SeqCst);
                    let _guard = OnDrop(Arc::clone(&s.0));
                    std::future::pending::<()>().await;
                    Ok(())
                },
            ),
            bidi_streaming(
                def("Svc.Chat"),
                Arc::clone(&self),
                |_s, inbound: Streaming<String>| async move {
                    Ok(Streaming::try_new(
                        inbound.map(|line| line.map(|l| format!("echo: {l}"))),
                    ))
                },
            ),
            server_streaming(
                def("Svc.Flood"),
                Arc::clone(&self),
                |s, (): ()| async move {
                    let probe = Arc::clone(&s.0);
                    let guard = OnDrop(Arc::clone(&probe));
                    // Would send far more than a gibibyte if nobody held it back.
                    Ok(Streaming::new(
                        futures_util::stream::iter(0..1_000_000u64).map(move |_| {
                            let _keep = &guard;
                            probe.produced.fetch_add(1, Ordering::SeqCst);
                            vec![7u8; BIG]
                        }),
                    ))
                },
            ),
            server_streaming(
                def("Svc.Silent"),
                Arc::clone(&self),
                |s, (): ()| async move {
                    let guard = OnDrop(Arc::clone(&s.0));
                    Ok(Streaming::new(futures_util::stream::pending::<u32>().map(
                        move |x| {
                            let _keep = &guard;
                            x
                        },
                    )))
                },
            ),
            unary(
                def("Svc.Ping"),
                self,
                |_s, (): ()| async move { Ok("pong") },
            ),
        ]
    }
}

async fn start(
    reg: &MemoryRegistry,
    grace: Duration,
) -> (micro_runtime::RunningService, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let svc = Service::new("svc")
        .address("127.0.0.1:0")
        .registry(Arc::new(reg.clone()))
        .grace_period(grace)
        .handler(Svc(Arc::clone(&probe)))
        .start()
        .await
        .unwrap();
    (svc, probe)
}

#[tokio::test]
async fn the_three_shapes_end_to_end() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();
    let o = CallOptions::new();

    let down: Streaming<u32> = client
        .server_stream("svc", "Svc.Countdown", &3u32, &o)
        .await
        .unwrap();
    assert_eq!(down.collect_all().await.unwrap(), vec![3, 2, 1]);

    let total: i64 = client
        .client_stream("svc", "Svc.Sum", Streaming::iter(1..=10_000i64), &o)
        .await
        .unwrap();
    assert_eq!(total, 50_005_000);
    let empty: i64 = client
        .client_stream("svc", "Svc.Sum", Streaming::<i64>::empty(), &o)
        .await
        .unwrap();
    assert_eq!(empty, 0);

    let (tx, lines) = Streaming::channel(4);
    let mut echoes: Streaming<String> = client
        .bidi_stream("svc", "Svc.Chat", lines, &o)
        .await
        .unwrap();
    for word in ["a", "b", "c"] {
        tx.send(word.to_string()).await.unwrap();
        assert_eq!(
            echoes.message().await.unwrap().unwrap(),
            format!("echo: {word}")
        );
    }
    drop(tx);
    assert_eq!(
        echoes.message().await.unwrap(),
        None,
        "the end of the input ends the chat"
    );
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn errors_before_and_during_a_stream_arrive_typed() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();
    let o = CallOptions::new();

    let mut s: Streaming<u32> = client
        .server_stream("svc", "Svc.Explode", &(), &o)
        .await
        .unwrap();
    assert_eq!(s.message().await.unwrap(), Some(1));
    assert_eq!(s.message().await.unwrap(), Some(2));
    let e = s.message().await.unwrap_err();
    assert_eq!((e.code, e.detail.as_str()), (409, "went wrong at 3"));
    assert_eq!(s.message().await.unwrap(), None);

    let e = client
        .server_stream::<_, u32>("svc", "Svc.Refuse", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 403);

    // A client stream that fails reaches the handler as an error.
    let items: Vec<micro_runtime::Result<i64>> =
        vec![Ok(1), Err(Error::bad_request("me", "bad input"))];
    let e = client
        .client_stream::<_, i64>(
            "svc",
            "Svc.Sum",
            Streaming::try_new(futures_util::stream::iter(items)),
            &o,
        )
        .await
        .unwrap_err();
    assert_eq!((e.code, e.detail.as_str()), (400, "bad input"));

    // Shapes must match: a unary endpoint is not a stream, and the reverse.
    let e = client
        .server_stream::<_, u32>("svc", "Svc.Ping", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 400, "{e}");
    let e = client
        .call::<_, u32>("svc", "Svc.Countdown", &3u32, &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 400, "{e}");
    let e = client
        .server_stream::<_, u32>("svc", "Svc.Nope", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);

    // The connection still serves.
    let pong: String = client.call("svc", "Svc.Ping", &(), &o).await.unwrap();
    assert_eq!(pong, "pong");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_cancels_the_handler() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();
    let o = CallOptions::new();

    let mut flood: Streaming<Vec<u8>> = client
        .server_stream("svc", "Svc.Flood", &(), &o)
        .await
        .unwrap();
    assert_eq!(flood.message().await.unwrap().unwrap().len(), BIG);
    drop(flood);
    wait_until("the server-streaming handler to be dropped", || {
        probe.dropped.load(Ordering::SeqCst) == 1
    })
    .await;

    // Client streaming: the caller giving up cancels the handler too.
    let items = Streaming::new(futures_util::stream::repeat(vec![1u8; 16]));
    let call = client.client_stream::<_, ()>("svc", "Svc.SlowSink", items, &o);
    let consumed = &probe.consumed;
    tokio::select! {
        r = call => panic!("the sink never answers, yet: {r:?}"),
        () = wait_until("the sink to take an item", || consumed.load(Ordering::SeqCst) == 1) => {}
    }
    wait_until("the client-streaming handler to be dropped", || {
        probe.dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_reader_holds_the_writer_back_and_other_calls_go_on() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();
    let o = CallOptions::new();

    let mut flood: Streaming<Vec<u8>> = client
        .server_stream("svc", "Svc.Flood", &(), &o)
        .await
        .unwrap();
    flood.message().await.unwrap().unwrap();
    let held = settled(&probe.produced).await;
    // The window, one item over it, and the item the writer holds while waiting.
    let bound = WINDOW / BIG + 3;
    assert!(
        held <= bound,
        "{held} items produced for a reader that took 1 (bound {bound})"
    );

    // The same connection still answers unary calls at once.
    let pong: String = client
        .call(
            "svc",
            "Svc.Ping",
            &(),
            &o.clone().timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(pong, "pong");

    // Reading on lets the writer go on.
    for _ in 0..20 {
        flood.message().await.unwrap().unwrap();
    }
    let later = settled(&probe.produced).await;
    assert!(
        later >= 21 && later <= 21 + bound,
        "{later} produced after 21 read"
    );
    drop(flood);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_server_holds_the_client_back() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let items = Streaming::new(futures_util::stream::repeat(()).map(move |()| {
        counter.fetch_add(1, Ordering::SeqCst);
        vec![1u8; BIG]
    }));
    let o = CallOptions::new();
    let call = client.client_stream::<_, ()>("svc", "Svc.SlowSink", items, &o);
    tokio::select! {
        r = call => panic!("the sink never answers, yet: {r:?}"),
        held = async {
            wait_until("the sink to take an item", || probe.consumed.load(Ordering::SeqCst) == 1).await;
            settled(&pulled).await
        } => {
            let bound = WINDOW / BIG + 3;
            assert!(held <= bound, "the client pulled {held} items for a server that took 1");
        }
    }
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn idle_streams_time_out_and_unary_timeouts_do_not_cut_streams() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg, Duration::from_secs(1)).await;
    let client = svc.client();

    // The call timeout bounds the opening only.
    let o = CallOptions::new()
        .timeout(Duration::from_millis(100))
        .idle_timeout(Duration::from_secs(10));
    let (tx, lines) = Streaming::<String>::channel(1);
    let mut echoes: Streaming<String> = client
        .bidi_stream("svc", "Svc.Chat", lines, &o)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send("still here".into()).await.unwrap();
    assert_eq!(echoes.message().await.unwrap().unwrap(), "echo: still here");
    drop(tx);

    let o = CallOptions::new().idle_timeout(Duration::from_millis(200));
    let mut silent: Streaming<u32> = client
        .server_stream("svc", "Svc.Silent", &(), &o)
        .await
        .unwrap();
    let e = silent.message().await.unwrap_err();
    assert_eq!(e.code, 408, "{e}");
    wait_until("the idle stream's handler to be cancelled", || {
        probe.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_going_away_ends_the_stream_with_an_error() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg, Duration::from_millis(100)).await;
    let client = svc.client();
    let mut silent: Streaming<u32> = client
        .server_stream("svc", "Svc.Silent", &(), &CallOptions::new())
        .await
        .unwrap();
    svc.stop().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), silent.message())
        .await
        .expect("the stream ends when its server goes")
        .unwrap_err();
    assert_eq!(e.code, 503, "{e}");
}
