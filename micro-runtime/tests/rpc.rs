//! End-to-end calls over real TCP on loopback, with hand-written routes and the
//! in-memory registry (the macro-generated path is tested in the `micro` crate).

mod common;
use common::wait_until;

use micro_runtime::server::{unary, EndpointDef, Handler, Route};
use micro_runtime::transport::frame::{self, flags, Frame, RequestHead};
use micro_runtime::transport::FrameReader;
use micro_runtime::{
    CallOptions, Client, ContentType, Context, Error, MemoryRegistry, Registry, Service,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Hello {
    name: String,
}

#[derive(Default)]
struct Probe {
    slow_started: AtomicUsize,
    slow_dropped: AtomicUsize,
    slow_finished: AtomicUsize,
}

struct DropCounter<'a>(&'a AtomicUsize);
impl Drop for DropCounter<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Svc(Arc<Probe>);

fn def(name: &'static str) -> EndpointDef {
    EndpointDef {
        name,
        request: "Hello",
        response: "String",
        doc: "",
    }
}

impl Handler for Svc {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            unary(
                def("Svc.Hello"),
                Arc::clone(&self),
                |_s, req: Hello| async move { Ok(format!("Hello, {}", req.name)) },
            ),
            unary(
                def("Svc.Fail"),
                Arc::clone(&self),
                |_s, (): ()| async move { Err::<(), _>(Error::conflict("svc", "already exists")) },
            ),
            unary(
                def("Svc.Panic"),
                Arc::clone(&self),
                |_s, (): ()| async move {
                    if true {
                        panic!("boom");
                    }
                    Ok(())
                },
            ),
            unary(
                def("Svc.Meta"),
                Arc::clone(&self),
                |_s, key: String| async move {
                    let ctx = Context::current();
                    let value = match key.as_str() {
                        "trace" => Some(ctx.trace_id().to_string()),
                        key => ctx.get(key).map(str::to_owned),
                    };
                    Ok((value, ctx.remaining().map(|d| d.as_millis() as u64)))
                },
            ),
            unary(def("Svc.Slow"), self, |s, ms: u64| async move {
                let probe = Arc::clone(&s.0);
                probe.slow_started.fetch_add(1, Ordering::SeqCst);
                let _guard = DropCounter(&probe.slow_dropped);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                probe.slow_finished.fetch_add(1, Ordering::SeqCst);
                Ok(ms)
            }),
        ]
    }
}

async fn start(reg: &MemoryRegistry) -> (micro_runtime::RunningService, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let svc = Service::new("svc")
        .address("127.0.0.1:0")
        .registry(Arc::new(reg.clone()))
        .grace_period(Duration::from_secs(5))
        .handler(Svc(Arc::clone(&probe)))
        .start()
        .await
        .unwrap();
    (svc, probe)
}

#[tokio::test]
async fn unary_calls_errors_and_panics() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg).await;
    let client = svc.client();
    let o = CallOptions::new();
    let r: String = client
        .call(
            "svc",
            "Svc.Hello",
            &Hello {
                name: "Alice".into(),
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(r, "Hello, Alice");
    let json = o.clone().content_type(ContentType::Json);
    let r: String = client
        .call("svc", "Svc.Hello", &Hello { name: "Bob".into() }, &json)
        .await
        .unwrap();
    assert_eq!(r, "Hello, Bob");

    let e = client
        .call::<_, ()>("svc", "Svc.Fail", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e, Error::conflict("svc", "already exists"));

    let e = client
        .call::<_, ()>("svc", "Svc.Panic", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 500);
    assert!(e.detail.contains("panicked: boom"), "{e}");
    // The server goes on serving after a panic.
    let r: String = client
        .call("svc", "Svc.Hello", &Hello { name: "C".into() }, &o)
        .await
        .unwrap();
    assert_eq!(r, "Hello, C");

    let e = client
        .call::<_, ()>("svc", "Svc.Nope", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);
    assert!(
        e.detail.contains("Svc.Nope") && e.detail.contains("Svc.Hello"),
        "{e}"
    );
    let e = client
        .call::<_, ()>("nosuch", "X.Y", &(), &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);
    assert!(e.detail.contains("nosuch"), "{e}");

    // A body that does not fit the endpoint's type.
    let e = client
        .call::<_, String>("svc", "Svc.Hello", &42u32, &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 400, "{e}");

    let health: micro_runtime::Health = client.call("svc", "Debug.Health", &(), &o).await.unwrap();
    assert_eq!(health.status, "ok");
    let stats: micro_runtime::Stats = client.call("svc", "Debug.Stats", &(), &o).await.unwrap();
    assert!(stats.requests >= 8 && stats.errors >= 4, "{stats:?}");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn metadata_and_deadline_reach_the_handler() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg).await;
    let client = svc.client();
    let o = CallOptions::new()
        .metadata("user", "u1")
        .timeout(Duration::from_secs(2));
    let (v, remaining): (Option<String>, Option<u64>) =
        client.call("svc", "Svc.Meta", "user", &o).await.unwrap();
    assert_eq!(v.as_deref(), Some("u1"));
    let remaining = remaining.unwrap();
    assert!(remaining > 0 && remaining <= 2000, "{remaining}");
    let (trace, _): (Option<String>, Option<u64>) =
        client.call("svc", "Svc.Meta", "trace", &o).await.unwrap();
    let trace = trace.unwrap();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, "0".repeat(32), "every call gets a trace id");
    let bad = o.clone().metadata("Micro-Trace-Id", "not-hex");
    let e = client
        .call::<_, (Option<String>, Option<u64>)>("svc", "Svc.Meta", "trace", &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.detail.contains("invalid trace id"), "{e}");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn expired_deadline_cancels_the_handler() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg).await;
    let client = svc.client();
    let o = CallOptions::new().timeout(Duration::from_millis(100));
    let e = client
        .call::<_, u64>("svc", "Svc.Slow", &10_000u64, &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 408, "{e}");
    wait_until("the handler to be dropped", || {
        probe.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(probe.slow_finished.load(Ordering::SeqCst), 0);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_a_call_cancels_the_handler() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg).await;
    let client = svc.client();
    let call = tokio::spawn(async move {
        client
            .call::<_, u64>(
                "svc",
                "Svc.Slow",
                &10_000u64,
                &CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
    });
    wait_until("the handler to start", || {
        probe.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    call.abort();
    wait_until("the handler to be dropped", || {
        probe.slow_dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(probe.slow_finished.load(Ordering::SeqCst), 0);
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn many_concurrent_calls_share_one_connection() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg).await;
    let client = svc.client();
    let calls = (0..500).map(|i| {
        let c = client.clone();
        async move {
            let r: String = c
                .call(
                    "svc",
                    "Svc.Hello",
                    &Hello {
                        name: i.to_string(),
                    },
                    &CallOptions::new(),
                )
                .await
                .unwrap();
            assert_eq!(r, format!("Hello, {i}"));
        }
    });
    futures_join_all(calls).await;
    assert_eq!(svc.stats().connections, 1);
    svc.stop().await.unwrap();
}

async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn graceful_stop_finishes_in_flight_calls_and_deregisters() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg).await;
    let client = svc.client();
    let call = tokio::spawn(async move {
        client
            .call::<_, u64>("svc", "Svc.Slow", &300u64, &CallOptions::new())
            .await
    });
    wait_until("the handler to start", || {
        probe.slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopping = tokio::spawn(svc.stop());
    wait_until("deregistration", || {
        futures_now(reg.get_service("svc")).is_some_and(|r| r.unwrap().is_empty())
    })
    .await;
    assert_eq!(call.await.unwrap().unwrap(), 300);
    stopping.await.unwrap().unwrap();
    assert_eq!(probe.slow_finished.load(Ordering::SeqCst), 1);
}

/// Polls a future once (the memory registry answers without waiting).
fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test]
async fn bad_bytes_close_only_that_connection() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg).await;
    let addr = svc.local_addr();
    let client = svc.client();
    let hello = |c: Client| async move {
        c.call::<_, String>(
            "svc",
            "Svc.Hello",
            &Hello { name: "ok".into() },
            &CallOptions::new(),
        )
        .await
        .unwrap()
    };
    assert_eq!(hello(client.clone()).await, "Hello, ok");

    async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("server closed")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
    // Garbage instead of the preface.
    assert!(exchange(addr, b"\x16\x03\x01garbage")
        .await
        .contains("bad preface"));
    // An oversized length prefix.
    let mut big = b"MICRO/1\n".to_vec();
    big.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 1]);
    assert!(exchange(addr, &big).await.contains("exceeds the limit"));
    // An unknown frame kind.
    let mut unknown = b"MICRO/1\n".to_vec();
    unknown.extend_from_slice(&[0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 1]);
    assert!(exchange(addr, &unknown)
        .await
        .contains("unknown frame kind"));
    // A truncated frame.
    let mut trunc = b"MICRO/1\n".to_vec();
    trunc.extend_from_slice(&[0, 0, 0, 50, 1, 0, 0, 0, 0, 1, 1, 2, 3]);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&trunc).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).contains("truncated frame"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A request head that is not msgpack: the framing is intact, so only that
    // call fails (400) and the connection goes on serving.
    let mut bad_head = b"MICRO/1\n".to_vec();
    bad_head.extend_from_slice(&[0, 0, 0, 6, 1, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xc1, 0xc1]);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&bad_head).await.unwrap();
    let mut frames = micro_runtime::transport::FrameReader::new(&mut s, 1 << 20);
    let f = frames.next().await.unwrap().unwrap();
    let e = micro_runtime::transport::frame::decode_error(&f.payload);
    assert_eq!((f.stream, e.code), (1, 400));
    assert!(e.detail.contains("not valid msgpack"), "{e}");
    drop(frames);
    let ping = micro_runtime::transport::frame::frame(
        micro_runtime::transport::frame::Kind::Ping,
        0,
        0,
        &[b"12345678"],
    );
    s.write_all(&ping).await.unwrap();
    let pong = micro_runtime::transport::FrameReader::new(&mut s, 1 << 20)
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong.payload[..], b"12345678");

    // The existing client connection and a new one still work.
    assert_eq!(hello(client).await, "Hello, ok");
    assert_eq!(
        hello(Client::with_registry(Arc::new(reg.clone())).unwrap()).await,
        "Hello, ok"
    );
    svc.stop().await.unwrap();
}

/// Sends one request on a connection of its own, without any client logic
/// (no cancel, no deadline of its own), and reads the first frame back.
async fn raw_call(addr: std::net::SocketAddr, head: &RequestHead<'_>, body: &[u8]) -> Frame {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = frame::PREFACE.to_vec();
    bytes.extend(frame::request(1, flags::END_STREAM, head, body));
    s.write_all(&bytes).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        FrameReader::new(&mut s, 1 << 20).next(),
    )
    .await
    .expect("the server answers")
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn malformed_bodies_and_unknown_content_types_get_clear_errors() {
    let reg = MemoryRegistry::new();
    let (svc, _) = start(&reg).await;
    let client = svc.client();
    let o = CallOptions::new();
    let e = client
        .call_raw("svc", "Svc.Hello", ContentType::Json, b"{\"name\": ", &o)
        .await
        .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.detail.contains("malformed json"), "{e}");
    let e = client
        .call_raw(
            "svc",
            "Svc.Hello",
            ContentType::MsgPack,
            &[0x81, 0xc1, 0xff],
            &o,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.detail.contains("malformed msgpack"), "{e}");

    // A content type micro does not speak, sent by hand on a raw connection.
    let head = RequestHead {
        service: "svc",
        endpoint: "Svc.Hello",
        content_type: "text/plain",
        ..Default::default()
    };
    let f = raw_call(svc.local_addr(), &head, b"hi").await;
    assert_eq!(f.stream, 1);
    assert_ne!(f.flags & flags::ERROR, 0);
    let e = frame::decode_error(&f.payload);
    assert_eq!(e.code, 415);
    assert!(
        e.detail.contains("text/plain") && e.detail.contains("application/msgpack"),
        "{e}"
    );

    // Every one of those left the service serving.
    let r: String = client
        .call(
            "svc",
            "Svc.Hello",
            &Hello {
                name: "still".into(),
            },
            &o,
        )
        .await
        .unwrap();
    assert_eq!(r, "Hello, still");
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn the_server_enforces_the_deadline_on_its_own() {
    let reg = MemoryRegistry::new();
    let (svc, probe) = start(&reg).await;
    // A hand-made client that never sends a cancel: only the server's own timer can stop the call.
    let head = RequestHead {
        service: "svc",
        endpoint: "Svc.Slow",
        content_type: "application/json",
        timeout_us: 50_000,
        ..Default::default()
    };
    let reply = raw_call(svc.local_addr(), &head, b"60000").await;
    let e = frame::decode_error(&reply.payload);
    assert_eq!(e.code, 408, "{e}");
    assert!(e.detail.contains("Svc.Slow"), "{e}");
    assert_eq!(
        probe.slow_dropped.load(Ordering::SeqCst),
        1,
        "the handler was dropped"
    );
    assert_eq!(probe.slow_finished.load(Ordering::SeqCst), 0);
    svc.stop().await.unwrap();
}
