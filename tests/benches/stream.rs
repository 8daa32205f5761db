//! Server streaming and HTTP/JSON between two processes over loopback: micro
//! against raw baselines measured in the same run.
//!
//! `cargo bench -p micro-tests --bench stream`
//!
//! The bench binary re-executes itself as the server processes (`--serve-micro`
//! and `--serve-raw`): each child binds `127.0.0.1:0`, prints its port on
//! stdout, and exits when its stdin closes. The parent then measures, in
//! rounds that alternate which side goes first (so machine noise hits both
//! alike), and reports the median of the rounds:
//!
//! 1. **Server-streaming throughput** (items/s, and MB/s of item payload, 1 MB
//!    = 10^6 bytes) for items of 64 B and 64 KiB, with 1 stream and with 16
//!    concurrent streams on one connection. The client asks for
//!    `(size, u64::MAX)`: the server sends items until the client drops the
//!    stream. Each measurement uses a fresh client and connection, reads for
//!    `BENCH_WARMUP_MS`, counts the items read in the next `BENCH_SECS`, then
//!    drops its streams (which cancels them). Every item is a
//!    `serde_bytes::ByteBuf` of `size` bytes of `'x'` (MessagePack `bin`),
//!    built once per stream and cloned per item on the server, decoded into a
//!    `ByteBuf` on the client, on both sides.
//!
//!    micro: the server serves `Bench.Flood` with `server_streaming`; the client
//!    reads `Client::server_stream` with `Streaming::message`.
//!
//!    raw: what a competent hand-rolled multiplexed streaming protocol looks
//!    like on tokio: one TCP connection, `LengthDelimitedCodec` frames of
//!    `u32 stream id | msgpack` (the client opens stream `id` with
//!    `msgpack (size, count)` and cancels it with an empty body; the server
//!    ends it with an empty body), a writer task per connection fed by a
//!    bounded channel (256 frames, micro's writer batch) from a producer task
//!    per stream, which also gathers queued frames into one write, and on the
//!    client a reader task dispatching to a bounded channel per stream, sized to
//!    micro's stream window (256 KiB of payload). Memory stays bounded on both
//!    sides; the raw side has no per-stream flow control (a stalled consumer
//!    stalls its connection), no deadlines, metadata, errors or draining.
//!
//! 2. **HTTP/JSON against native unary calls** on the same micro server: the
//!    server sniffs HTTP on its port, and `POST /Bench.Echo` with a JSON body
//!    answers the JSON reply. HTTP/1.1 goes through hyper-util's pooled
//!    keep-alive client (64 requests in flight take up to 64 connections);
//!    native calls go through `Client::call` with 64 in flight on one
//!    connection. Reported: calls/s, and p50 latency with one call in flight
//!    (calls in alternating blocks, as in `rpc.rs`). Any answer but `200`
//!    with the expected JSON fails the bench loudly.
//!
//! Results are printed as a table and written to `target/bench-stream.json`.
//! Without `--bench` (e.g. `cargo test --benches`) it runs a short smoke version.
//! Environment knobs: `BENCH_ROUNDS` (default 3), `BENCH_SECS` (seconds counted
//! per measurement, default 1.5), `BENCH_WARMUP_MS` (default 500), `BENCH_CALLS`
//! (latency calls per side and round, default 5000), `BENCH_ONLY` (`micro` or
//! `raw`: one side of the stream cases only, e.g. under a profiler; `raw`
//! skips HTTP), `BENCH_PART` (`stream` or `http`), `BENCH_SIZE` (64 or 65536)
//! and `BENCH_STREAMS` (1 or 16) to run some stream cases only.

mod common;
use common::*;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro::server::{server_streaming, unary, EndpointDef, Handler, Route};
use micro::{CallOptions, Client, MemoryRegistry, Service, Streaming};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// The service name and endpoints of the micro server.
const FLOOD: &str = "Bench.Flood";
const ECHO: &str = "Bench.Echo";
/// Item sizes and stream counts of the streaming cases.
const SIZES: [usize; 2] = [64, 64 * 1024];
const STREAMS: [usize; 2] = [1, 16];
/// Unary calls in flight for the calls/s measurement (HTTP and native).
const CONCURRENCY: usize = 64;
/// Frames the raw writer queue holds, and takes at once (micro's `MAX_BATCH`).
const RAW_QUEUE: usize = 256;
/// Bytes the raw writer gathers before it must write (micro's `BATCH_BYTES`).
const RAW_BATCH_BYTES: usize = 256 * 1024;
/// Payload bytes a raw stream's client channel holds: micro's stream window.
const RAW_WINDOW: usize = micro::stream::WINDOW;
/// A stream reader not done this long after the stop has stalled.
const STALL: Duration = Duration::from_secs(10);
/// The target: micro's stream throughput against raw.
const TARGET: f64 = 0.8;

const EXPECTED: &str = "Hello, bench-client-0001";

/// The item every stream repeats: `size` bytes of `'x'`.
fn item(size: usize) -> ByteBuf {
    ByteBuf::from(vec![b'x'; size])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; other unknown arguments are ignored.
    if args.iter().any(|a| a == "--serve-micro") {
        return runtime().block_on(serve_micro());
    }
    if args.iter().any(|a| a == "--serve-raw") {
        return runtime().block_on(serve_raw());
    }
    let full = args.iter().any(|a| a == "--bench");
    let cfg = if full {
        Config {
            rounds: env_or("BENCH_ROUNDS", 3.0) as usize,
            secs: env_or("BENCH_SECS", 1.5),
            warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_MS", 500.0) / 1000.0),
            calls: env_or("BENCH_CALLS", 5000.0) as usize,
            smoke: false,
        }
    } else {
        // Smoke run (cargo test --benches): prove it works, fast.
        Config {
            rounds: 1,
            secs: 0.15,
            warmup: Duration::from_millis(50),
            calls: 200,
            smoke: true,
        }
    };
    let var = |k: &str| std::env::var(k).ok();
    let sel = Selection {
        only: var("BENCH_ONLY"),
        part: var("BENCH_PART"),
        size: var("BENCH_SIZE").and_then(|v| v.parse().ok()),
        streams: var("BENCH_STREAMS").and_then(|v| v.parse().ok()),
    };
    if !run(&cfg, &sel) {
        std::process::exit(1);
    }
}

fn env_or(key: &str, default: f64) -> f64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Config {
    rounds: usize,
    secs: f64,
    warmup: Duration,
    calls: usize,
    smoke: bool,
}

/// What to measure (environment knobs).
struct Selection {
    only: Option<String>,
    part: Option<String>,
    size: Option<usize>,
    streams: Option<usize>,
}

impl Selection {
    fn sides(&self) -> Vec<Side> {
        match self.only.as_deref() {
            Some("micro") => vec![Side::Micro],
            Some("raw") => vec![Side::Raw],
            _ => vec![Side::Micro, Side::Raw],
        }
    }

    fn cases(&self) -> Vec<Case> {
        if self.part.as_deref().is_some_and(|p| p != "stream") {
            return Vec::new();
        }
        let mut cases = Vec::new();
        for size in SIZES {
            for streams in STREAMS {
                if self.size.is_none_or(|s| s == size) && self.streams.is_none_or(|s| s == streams)
                {
                    cases.push(Case { size, streams });
                }
            }
        }
        cases
    }

    fn http(&self) -> bool {
        self.part.as_deref().is_none_or(|p| p == "http") && self.only.as_deref() != Some("raw")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Micro,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Micro => "micro",
            Side::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    size: usize,
    streams: usize,
}

impl Case {
    fn label(self) -> String {
        let size = if self.size >= 1024 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        format!("{size} x{}", self.streams)
    }
}

// ---------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------

struct Bench;

impl Handler for Bench {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            server_streaming(
                EndpointDef {
                    name: FLOOD,
                    request: "(u32, u64)",
                    response: "bytes",
                    doc: "Streams `count` items of `size` bytes.",
                },
                Arc::clone(&self),
                |_this: Arc<Bench>, (size, count): (u32, u64)| async move {
                    let item = item(size as usize);
                    Ok(Streaming::new(
                        futures_util::stream::repeat(item).take(count as usize),
                    ))
                },
            ),
            unary(
                EndpointDef {
                    name: ECHO,
                    request: "EchoRequest",
                    response: "EchoReply",
                    doc: "Greets.",
                },
                self,
                |_this: Arc<Bench>, req: EchoRequest| async move { Ok(reply_to(req)) },
            ),
        ]
    }
}

async fn serve_micro() {
    // The server registers in its own in-process registry; the client, in the
    // other process, is told the address through its own registry.
    let svc = Service::new(SERVICE)
        .address("127.0.0.1:0")
        .registry(Arc::new(MemoryRegistry::new()))
        .handler(Bench)
        .start()
        .await
        .expect("micro server starts");
    announce_and_wait(svc.local_addr().port()).await;
    std::process::exit(0);
}

async fn serve_raw() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(raw_serve_conn(stream));
        }
    });
    announce_and_wait(port).await;
    std::process::exit(0);
}

/// One raw server connection: a producer task per stream, every frame through
/// one writer task behind a bounded queue.
async fn raw_serve_conn(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(RAW_QUEUE);
    tokio::spawn(write_frames(w, rx));
    let mut producers: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    let mut frames = FramedRead::new(r, LengthDelimitedCodec::new());
    while let Some(Ok(mut frame)) = frames.next().await {
        if frame.len() < 4 {
            break;
        }
        let id = frame.get_u32();
        if frame.is_empty() {
            // Cancel.
            if let Some(p) = producers.remove(&id) {
                p.abort();
            }
            continue;
        }
        let Ok((size, count)) = rmp_serde::from_slice::<(u32, u64)>(&frame) else {
            break;
        };
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            let item = item(size as usize);
            for _ in 0..count {
                // Cloned per item, as the micro handler's stream does.
                if tx.send(encode_frame(id, &item.clone())).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Bytes::copy_from_slice(&id.to_be_bytes())).await;
        });
        producers.retain(|_, p| !p.is_finished());
        producers.insert(id, task.abort_handle());
    }
    for p in producers.values() {
        p.abort();
    }
}

/// The writer task of a raw connection: takes whatever is queued (up to
/// `RAW_QUEUE` frames), gathers it into one buffer and writes it; shuts the
/// socket's write side down once every sender is gone.
async fn write_frames(w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut sink = FramedWrite::new(w, LengthDelimitedCodec::new());
    sink.set_backpressure_boundary(RAW_BATCH_BYTES);
    let mut batch = Vec::with_capacity(RAW_QUEUE);
    while rx.recv_many(&mut batch, RAW_QUEUE).await > 0 {
        for f in batch.drain(..) {
            if sink.feed(f).await.is_err() {
                return;
            }
        }
        if SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
            return;
        }
    }
    let _ = SinkExt::<Bytes>::close(&mut sink).await;
}

// ---------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------

type Streams = Mutex<HashMap<u32, mpsc::Sender<Bytes>>>;

/// A multiplexed raw streaming client on one connection.
struct RawClient {
    conn: Arc<RawConn>,
}

struct RawConn {
    tx: mpsc::Sender<Bytes>,
    streams: Arc<Streams>,
    next_id: AtomicU32,
}

impl RawClient {
    async fn connect(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::channel(RAW_QUEUE);
        tokio::spawn(write_frames(w, rx));
        let streams: Arc<Streams> = Arc::default();
        tokio::spawn(raw_read_loop(r, Arc::clone(&streams)));
        Ok(Self {
            conn: Arc::new(RawConn {
                tx,
                streams,
                next_id: AtomicU32::new(1),
            }),
        })
    }

    /// Opens a stream of `count` items of `size` bytes.
    async fn flood(&self, size: usize, count: u64) -> Result<RawStream, String> {
        let conn = &self.conn;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        // Room for micro's window of payload, in items.
        let (tx, rx) = mpsc::channel((RAW_WINDOW / size).clamp(4, 4096));
        conn.streams.lock().unwrap().insert(id, tx);
        conn.tx
            .send(encode_frame(id, &(size as u32, count)))
            .await
            .map_err(|_| "connection closed".to_string())?;
        Ok(RawStream {
            id,
            rx,
            conn: Arc::clone(conn),
            done: false,
        })
    }
}

/// The reader task of a raw client connection: hands each item to its stream.
async fn raw_read_loop(r: tokio::net::tcp::OwnedReadHalf, streams: Arc<Streams>) {
    let mut frames = FramedRead::new(r, LengthDelimitedCodec::new());
    while let Some(Ok(mut frame)) = frames.next().await {
        if frame.len() < 4 {
            break;
        }
        let id = frame.get_u32();
        let end = frame.is_empty();
        // Fast path: room in the stream's channel, under the lock; else wait
        // outside it (a full stream holds up the connection: no flow control).
        let waiting = {
            let mut map = streams.lock().unwrap();
            let Some(tx) = map.get(&id) else {
                continue; // a stream the client dropped
            };
            match tx.try_send(frame.freeze()) {
                Ok(()) => None,
                Err(TrySendError::Full(frame)) => Some((tx.clone(), frame)),
                Err(TrySendError::Closed(_)) => {
                    map.remove(&id);
                    None
                }
            }
        };
        if let Some((tx, frame)) = waiting {
            if tx.send(frame).await.is_err() {
                streams.lock().unwrap().remove(&id);
            }
        }
        if end {
            streams.lock().unwrap().remove(&id);
        }
    }
    // Dropping the senders ends every stream still open with an error.
    streams.lock().unwrap().clear();
}

/// One raw stream; dropping it before its end cancels it.
struct RawStream {
    id: u32,
    rx: mpsc::Receiver<Bytes>,
    conn: Arc<RawConn>,
    done: bool,
}

impl RawStream {
    async fn message(&mut self) -> Result<Option<ByteBuf>, String> {
        match self.rx.recv().await {
            Some(f) if f.is_empty() => {
                self.done = true;
                Ok(None)
            }
            Some(f) => rmp_serde::from_slice(&f)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Err("connection lost".into()),
        }
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.conn.streams.lock().unwrap().remove(&self.id);
        let cancel = Bytes::copy_from_slice(&self.id.to_be_bytes());
        if let Err(TrySendError::Full(cancel)) = self.conn.tx.try_send(cancel) {
            let tx = self.conn.tx.clone();
            tokio::spawn(async move { tx.send(cancel).await });
        }
    }
}

// ---------------------------------------------------------------------------
// The parent: spawn servers, measure, report
// ---------------------------------------------------------------------------

// --- streaming -------------------------------------------------------------

/// One open stream of either side.
enum Flood {
    Micro(Streaming<ByteBuf>),
    Raw(RawStream),
}

impl Flood {
    /// The next item, which must be there (the streams are endless). No
    /// timeout here, to keep timers out of the measured path: `flood` notices
    /// a stall.
    async fn item(&mut self) -> ByteBuf {
        let next = match self {
            Flood::Micro(s) => s.message().await.map_err(|e| e.to_string()),
            Flood::Raw(s) => s.message().await,
        };
        match next {
            Ok(Some(item)) => item,
            Ok(None) => panic!("stream ended early"),
            Err(e) => panic!("stream failed: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct StreamSample {
    items_per_s: f64,
    mb_per_s: f64,
    /// CPU time (both processes, user + system) per item.
    cpu_ns_per_item: f64,
}

/// Throughput of `case` against one server, on a fresh connection.
async fn flood(side: Side, port: u16, server_pid: u32, case: Case, cfg: &Config) -> StreamSample {
    let micro = match side {
        Side::Micro => Some(micro_client(port).await),
        Side::Raw => None,
    };
    let raw = match side {
        Side::Raw => Some(RawClient::connect(port).await.expect("raw connect")),
        Side::Micro => None,
    };
    let mut streams = Vec::with_capacity(case.streams);
    for _ in 0..case.streams {
        let args = (case.size as u32, u64::MAX);
        streams.push(match (&micro, &raw) {
            (Some(c), _) => Flood::Micro(
                c.server_stream::<_, ByteBuf>(SERVICE, FLOOD, &args, &CallOptions::new())
                    .await
                    .expect("micro stream opens"),
            ),
            (_, Some(c)) => Flood::Raw(
                c.flood(case.size, u64::MAX)
                    .await
                    .expect("raw stream opens"),
            ),
            _ => unreachable!(),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..case.streams)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(&counters)
        .map(|(mut s, n)| {
            let (stop, n, size) = (Arc::clone(&stop), Arc::clone(n), case.size);
            tokio::spawn(async move {
                // Every stream is read at once: on the raw side, a stream left
                // unread stalls the others (no per-stream flow control).
                assert_eq!(
                    s.item().await,
                    item(size),
                    "{} sent a wrong item",
                    side.name()
                );
                while !stop.load(Ordering::Relaxed) {
                    let item = s.item().await;
                    assert_eq!(item.len(), size);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                // Dropping the stream cancels it.
            })
        })
        .collect();
    let total = || {
        counters
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    tokio::time::sleep(cfg.warmup).await;
    let (n0, t0, cpu0) = (total(), Instant::now(), both_cpu(server_pid));
    tokio::time::sleep(Duration::from_secs_f64(cfg.secs)).await;
    let (n1, t1, cpu1) = (total(), Instant::now(), both_cpu(server_pid));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        match tokio::time::timeout(STALL, t).await {
            Ok(done) => done.expect("reader task"),
            Err(_) => panic!("{} stream stalled: no item within {STALL:?}", side.name()),
        }
    }
    assert!(n1 > n0, "{} streams delivered nothing", side.name());
    drop((micro, raw));
    let items = (n1 - n0) as f64;
    let items_per_s = items / (t1 - t0).as_secs_f64();
    let cpu_ns_per_item = match (cpu0, cpu1) {
        (Some(a), Some(b)) if n1 > n0 => (b - a).as_secs_f64() * 1e9 / items,
        _ => f64::NAN,
    };
    StreamSample {
        items_per_s,
        mb_per_s: items_per_s * case.size as f64 / 1e6,
        cpu_ns_per_item,
    }
}

// --- HTTP/JSON against native ------------------------------------------------

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// What the unary measuring loops call.
#[derive(Clone)]
enum Caller {
    Native(Client),
    Http(HttpClient, hyper::Uri),
}

impl Caller {
    fn name(&self) -> &'static str {
        match self {
            Caller::Native(_) => "native",
            Caller::Http(..) => "http/json",
        }
    }

    async fn call(&self, req: &EchoRequest, opts: &CallOptions) -> EchoReply {
        match self {
            Caller::Native(c) => c
                .call::<EchoRequest, EchoReply>(SERVICE, ECHO, req, opts)
                .await
                .expect("native call"),
            Caller::Http(c, uri) => {
                let body = serde_json::to_vec(req).expect("json");
                let request = hyper::Request::post(uri.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("http request");
                let resp = c.request(request).await.expect("http request fails");
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .expect("http body")
                    .to_bytes();
                assert!(
                    status == hyper::StatusCode::OK,
                    "HTTP/JSON: POST {uri} answered {status} (not 200): {:?}",
                    String::from_utf8_lossy(&body)
                );
                serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "HTTP/JSON: POST {uri} answered 200 with a body that is not the reply ({e}): {:?}",
                        String::from_utf8_lossy(&body)
                    )
                })
            }
        }
    }
}

fn http_client(port: u16) -> Caller {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build(connector);
    let uri = format!("http://127.0.0.1:{port}/{ECHO}")
        .parse()
        .expect("uri");
    Caller::Http(client, uri)
}

#[derive(Debug, Clone, Copy, Default)]
struct UnarySample {
    p50_us: f64,
    calls_per_s: f64,
    /// CPU time (both processes, user + system) per call in the calls/s run.
    cpu_us_per_call: f64,
}

/// p50 latency with one call in flight, for every caller at once: calls go in
/// small blocks taking turns, so both see the same machine state.
async fn latency(callers: &[Caller], cfg: &Config) -> Vec<f64> {
    const BLOCK: usize = 100;
    let req = request();
    let opts = CallOptions::new();
    for c in callers {
        assert_eq!(c.call(&req, &opts).await.message, EXPECTED, "{}", c.name());
    }
    let warm_end = Instant::now() + cfg.warmup;
    while Instant::now() < warm_end {
        for c in callers {
            for _ in 0..BLOCK {
                c.call(&req, &opts).await;
            }
        }
    }
    let mut lat: Vec<Vec<u64>> = vec![Vec::with_capacity(cfg.calls); callers.len()];
    let cap = Instant::now() + Duration::from_secs(15);
    let mut turn = 0;
    while lat[0].len() < cfg.calls && Instant::now() < cap {
        turn += 1;
        for k in 0..callers.len() {
            // Alternate which goes first, in case going first matters.
            let i = if turn % 2 == 0 {
                k
            } else {
                callers.len() - 1 - k
            };
            for _ in 0..BLOCK {
                let t = Instant::now();
                callers[i].call(&req, &opts).await;
                lat[i].push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    lat.into_iter()
        .map(|mut l| {
            l.sort_unstable();
            l[l.len() / 2] as f64 / 1000.0
        })
        .collect()
}

/// Calls/s with CONCURRENCY calls in flight, and CPU µs per call of both processes.
async fn throughput(caller: &Caller, server_pid: u32, cfg: &Config) -> (f64, f64) {
    let req = request();
    let opts = CallOptions::new();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..CONCURRENCY)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let tasks: Vec<_> = counters
        .iter()
        .map(|n| {
            let (caller, stop, n, req, opts) = (
                caller.clone(),
                Arc::clone(&stop),
                Arc::clone(n),
                req.clone(),
                opts.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    caller.call(&req, &opts).await;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let total = || {
        counters
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    tokio::time::sleep(cfg.warmup).await;
    let (c0, t0, cpu0) = (total(), Instant::now(), both_cpu(server_pid));
    tokio::time::sleep(Duration::from_secs_f64(cfg.secs)).await;
    let (c1, t1, cpu1) = (total(), Instant::now(), both_cpu(server_pid));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if let Err(e) = t.await {
            // A failed call (e.g. an HTTP status other than 200) fails the bench.
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let cpu_us_per_call = match (cpu0, cpu1) {
        (Some(a), Some(b)) if c1 > c0 => (b - a).as_secs_f64() * 1e6 / (c1 - c0) as f64,
        _ => f64::NAN,
    };
    ((c1 - c0) as f64 / (t1 - t0).as_secs_f64(), cpu_us_per_call)
}

// --- the run -----------------------------------------------------------------

/// Runs what `sel` asks for; `false` when HTTP/JSON failed (a missed target
/// is reported, not an error).
fn run(cfg: &Config, sel: &Selection) -> bool {
    let sides = sel.sides();
    let cases = sel.cases();
    let http = sel.http();
    let micro_server = (http || (!cases.is_empty() && sides.contains(&Side::Micro)))
        .then(|| ServerProc::spawn("--serve-micro"));
    let raw_server =
        (!cases.is_empty() && sides.contains(&Side::Raw)).then(|| ServerProc::spawn("--serve-raw"));
    let server = |side: Side| match side {
        Side::Micro => micro_server.as_ref().expect("micro server"),
        Side::Raw => raw_server.as_ref().expect("raw server"),
    };
    let rt = runtime();
    let started = Instant::now();

    // samples[case][side][round]
    let mut streams: Vec<Vec<Vec<StreamSample>>> = vec![vec![Vec::new(); sides.len()]; cases.len()];
    // unary[0] native, unary[1] http: per round
    let mut unary: [Vec<UnarySample>; 2] = [Vec::new(), Vec::new()];
    let mut http_error: Option<String> = None;
    for round in 0..cfg.rounds {
        for (c, case) in cases.iter().enumerate() {
            // Alternate which side goes first so drift hits both alike.
            let order: Vec<usize> = if (round + c) % 2 == 0 {
                (0..sides.len()).collect()
            } else {
                (0..sides.len()).rev().collect()
            };
            for i in order {
                let side = sides[i];
                let s = server(side);
                let sample = rt.block_on(flood(side, s.port, s.pid(), *case, cfg));
                eprintln!(
                    "round {}: {:<10} {:<5} {:>11.0} items/s {:>9.1} MB/s {:>8.0} ns CPU/item",
                    round + 1,
                    case.label(),
                    side.name(),
                    sample.items_per_s,
                    sample.mb_per_s,
                    sample.cpu_ns_per_item
                );
                streams[c][i].push(sample);
            }
        }
        if http && http_error.is_none() {
            let s = server(Side::Micro);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(unary_round(s.port, s.pid(), round, cfg))
            }));
            match result {
                Ok(samples) => {
                    for (k, sample) in samples.into_iter().enumerate() {
                        eprintln!(
                            "round {}: {:<10} p50 {:>7.1} µs  {:>9.0} calls/s @{CONCURRENCY}  {:>5.1} µs CPU/call",
                            round + 1,
                            ["native", "http/json"][k],
                            sample.p50_us,
                            sample.calls_per_s,
                            sample.cpu_us_per_call
                        );
                        unary[k].push(sample);
                    }
                }
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    http_error = Some(why);
                }
            }
        }
    }
    drop(rt);
    drop((micro_server, raw_server));
    report(
        cfg, &sides, &cases, &streams, http, &unary, http_error, started,
    )
}

/// One round of HTTP/JSON against native: latency with both taking turns,
/// then calls/s of each (in alternating order), each on fresh clients.
async fn unary_round(port: u16, server_pid: u32, round: usize, cfg: &Config) -> [UnarySample; 2] {
    let callers = [Caller::Native(micro_client(port).await), http_client(port)];
    let p50 = latency(&callers, cfg).await;
    drop(callers);
    let mut tput = [(0.0, 0.0); 2];
    let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
    for k in order {
        let caller = if k == 0 {
            Caller::Native(micro_client(port).await)
        } else {
            http_client(port)
        };
        tput[k] = throughput(&caller, server_pid, cfg).await;
    }
    [0, 1].map(|k| UnarySample {
        p50_us: p50[k],
        calls_per_s: tput[k].0,
        cpu_us_per_call: tput[k].1,
    })
}

#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &Config,
    sides: &[Side],
    cases: &[Case],
    streams: &[Vec<Vec<StreamSample>>],
    http: bool,
    unary: &[Vec<UnarySample>; 2],
    http_error: Option<String>,
    started: Instant,
) -> bool {
    let mut ok = true;
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let mut json = serde_json::json!({
        "bench": "stream",
        "transport": "tcp 127.0.0.1, two processes",
        "codec": "msgpack",
        "item": "serde_bytes::ByteBuf of 'x' (msgpack bin)",
        "rounds": cfg.rounds,
        "secs_per_measurement": cfg.secs,
        "warmup_ms": cfg.warmup.as_millis() as u64,
        "smoke": cfg.smoke,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });

    println!();
    println!(
        "server streaming, 2 processes over 127.0.0.1, msgpack bin items, median of {} round(s) ({:.0} s in all)",
        cfg.rounds,
        started.elapsed().as_secs_f64()
    );
    if !cases.is_empty() {
        print!("{:<12}", "case");
        for side in sides {
            print!(" {:>13} {:>10}", format!("{} items/s", side.name()), "MB/s");
        }
        for side in sides {
            print!(" {:>11}", format!("{} ns/item", side.name()));
        }
        if sides.len() == 2 {
            print!(" {:>11}", "micro/raw");
        }
        println!();
    }
    let mut cases_json = Vec::new();
    let mut targets = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let med: Vec<StreamSample> = streams[c]
            .iter()
            .map(|v| StreamSample {
                items_per_s: median(v.iter().map(|s| s.items_per_s).collect()),
                mb_per_s: median(v.iter().map(|s| s.mb_per_s).collect()),
                cpu_ns_per_item: median(v.iter().map(|s| s.cpu_ns_per_item).collect()),
            })
            .collect();
        print!("{:<12}", case.label());
        for m in &med {
            print!(" {:>13.0} {:>10.1}", m.items_per_s, m.mb_per_s);
        }
        for m in &med {
            print!(" {:>11.0}", m.cpu_ns_per_item);
        }
        let mut entry = serde_json::json!({
            "case": case.label(), "size": case.size, "streams": case.streams,
        });
        for (i, side) in sides.iter().enumerate() {
            entry[side.name()] = serde_json::json!({
                "items_per_s": med[i].items_per_s,
                "mb_per_s": med[i].mb_per_s,
                "cpu_ns_per_item": med[i].cpu_ns_per_item,
                "rounds": streams[c][i].iter().map(|s| serde_json::json!({
                    "items_per_s": s.items_per_s, "mb_per_s": s.mb_per_s,
                    "cpu_ns_per_item": s.cpu_ns_per_item,
                })).collect::<Vec<_>>(),
            });
        }
        if let [m, r] = med[..] {
            let ratio = m.items_per_s / r.items_per_s;
            print!(" {:>10.2}x", ratio);
            entry["ratio"] = serde_json::json!(ratio);
            entry["cpu_ratio"] = serde_json::json!(m.cpu_ns_per_item / r.cpu_ns_per_item);
            entry["target_min_ratio"] = serde_json::json!(TARGET);
            entry["target_met"] = serde_json::json!(ratio >= TARGET);
            targets.push(format!(
                "target: stream throughput >= {TARGET:.2}x raw, {:<10} {:.3}x {}",
                case.label(),
                ratio,
                verdict(ratio >= TARGET)
            ));
        }
        println!();
        cases_json.push(entry);
    }
    if !targets.is_empty() {
        println!();
        for t in &targets {
            println!("{t}");
        }
    }
    json["streaming"] = serde_json::json!(cases_json);

    if http {
        println!();
        println!(
            "unary calls on the micro server: HTTP/1.1 JSON (pooled keep-alive) against native"
        );
        if let Some(e) = &http_error {
            println!("HTTP/JSON FAILED: {e}");
            json["http"] = serde_json::json!({ "error": e });
            ok = false;
        } else {
            let med: Vec<UnarySample> = unary
                .iter()
                .map(|v| UnarySample {
                    p50_us: median(v.iter().map(|s| s.p50_us).collect()),
                    calls_per_s: median(v.iter().map(|s| s.calls_per_s).collect()),
                    cpu_us_per_call: median(v.iter().map(|s| s.cpu_us_per_call).collect()),
                })
                .collect();
            println!(
                "{:<18} {:>14} {:>10} {:>14}",
                "", "calls/s @64", "p50 µs @1", "CPU µs/call"
            );
            for (name, s) in ["native", "http/json"].iter().zip(&med) {
                println!(
                    "{:<18} {:>14.0} {:>10.1} {:>14.1}",
                    name, s.calls_per_s, s.p50_us, s.cpu_us_per_call
                );
            }
            let (n, h) = (med[0], med[1]);
            let (tput, p50, cpu) = (
                h.calls_per_s / n.calls_per_s,
                h.p50_us / n.p50_us,
                h.cpu_us_per_call / n.cpu_us_per_call,
            );
            println!(
                "{:<18} {:>13.2}x {:>9.2}x {:>13.2}x",
                "ratio http/native", tput, p50, cpu
            );
            let side = |s: &UnarySample, all: &Vec<UnarySample>| {
                serde_json::json!({
                    "calls_per_s": s.calls_per_s, "p50_us": s.p50_us,
                    "cpu_us_per_call": s.cpu_us_per_call,
                    "rounds": all.iter().map(|s| serde_json::json!({
                        "calls_per_s": s.calls_per_s, "p50_us": s.p50_us,
                        "cpu_us_per_call": s.cpu_us_per_call,
                    })).collect::<Vec<_>>(),
                })
            };
            json["http"] = serde_json::json!({
                "concurrency": CONCURRENCY,
                "latency_calls_per_round": cfg.calls,
                "native": side(&n, &unary[0]),
                "http_json": side(&h, &unary[1]),
                "ratio_http_native": { "calls_per_s": tput, "p50": p50, "cpu_us_per_call": cpu },
            });
        }
    }

    write_results("bench-stream.json", &json);
    ok
}
