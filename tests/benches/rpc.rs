//! Unary RPC between two processes over loopback: micro against a raw baseline.
//!
//! `cargo bench -p micro-tests --bench rpc`
//!
//! The bench binary re-executes itself as the server process (`--serve-micro`
//! or `--serve-raw`): the child binds `127.0.0.1:0`, prints its port on stdout,
//! and exits when its stdin closes. The parent then measures, for each
//! implementation and in alternating rounds (so machine noise hits both alike):
//!
//! * latency with one call in flight (p50 and p99 over ~20k sequential calls),
//! * throughput with 64 calls in flight on one connection (calls/s).
//!
//! The request is `{ name: String }` (16 bytes of name), the reply
//! `{ message: String }`, both MessagePack with named fields (micro's default).
//!
//! The raw baseline is what a competent hand-rolled multiplexed RPC looks like:
//! tokio TCP, `LengthDelimitedCodec` frames of `u32 id | msgpack body`, one
//! writer task per connection fed by a channel (batching queued frames into one
//! flush), a reader task dispatching replies to `oneshot`s, and a task per
//! request on the server. It has none of micro's features (deadlines, metadata,
//! trace ids, discovery, retries, cancellation, draining), which is the point:
//! the ratio is what those features cost per call.
//!
//! Results are printed as a table and written to `target/bench-rpc.json`.
//! Without `--bench` (e.g. `cargo test --benches`) it runs a short smoke version.
//! Environment knobs: `BENCH_ROUNDS` (default 3), `BENCH_CALLS` (latency calls
//! per round, default 20000), `BENCH_SECS` (throughput seconds per round, default 3),
//! `BENCH_WARMUP_MS` (default 2000; the throughput warm-up is half of it) and
//! `BENCH_ONLY` (`micro` or `raw`: measure one side only, e.g. under a profiler).

mod common;
use common::*;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use micro::server::{unary, EndpointDef, Handler, Route};
use micro::{CallOptions, Client, MemoryRegistry, Service};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Calls in flight for the throughput measurement.
const CONCURRENCY: usize = 64;
/// The service name and endpoint of the micro server.
const ENDPOINT: &str = "Bench.Echo";

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
            rounds: env_or("BENCH_ROUNDS", 3),
            calls: env_or("BENCH_CALLS", 20_000),
            secs: env_or("BENCH_SECS", 3) as f64,
            warmup: Duration::from_millis(env_or("BENCH_WARMUP_MS", 2000) as u64),
        }
    } else {
        // Smoke run (cargo test --benches): prove it works, fast.
        Config {
            rounds: 1,
            calls: 500,
            secs: 0.3,
            warmup: Duration::from_millis(200),
        }
    };
    let only = std::env::var("BENCH_ONLY").ok();
    run(&cfg, only.as_deref());
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Config {
    rounds: usize,
    calls: usize,
    secs: f64,
    warmup: Duration,
}

// ---------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------

struct Bench;

impl Handler for Bench {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![unary(
            EndpointDef {
                name: ENDPOINT,
                request: "EchoRequest",
                response: "EchoReply",
                doc: "Greets.",
            },
            self,
            |_this: Arc<Bench>, req: EchoRequest| async move { Ok(reply_to(req)) },
        )]
    }
}

async fn serve_micro() {
    // The server registers in its own in-process registry; the client, in the
    // other process, is told the address through its own registry (below).
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

/// One raw server connection: a task per request, replies through one writer task.
async fn raw_serve_conn(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(write_frames(
        FramedWrite::new(w, LengthDelimitedCodec::new()),
        rx,
    ));
    let mut frames = FramedRead::new(r, LengthDelimitedCodec::new());
    while let Some(Ok(mut frame)) = frames.next().await {
        if frame.len() < 4 {
            return;
        }
        let id = frame.get_u32();
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(req) = rmp_serde::from_slice::<EchoRequest>(&frame) else {
                return;
            };
            let _ = tx.send(encode_frame(id, &reply_to(req)));
        });
    }
}

/// The writer task of a raw connection: feeds whatever is queued, flushes when
/// the queue is empty, so concurrent replies share a write.
async fn write_frames(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, LengthDelimitedCodec>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    while let Some(first) = rx.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        while let Ok(next) = rx.try_recv() {
            if sink.feed(next).await.is_err() {
                return;
            }
        }
        if SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------

type Waiters = Mutex<HashMap<u32, oneshot::Sender<Bytes>>>;

/// A multiplexed raw client on one connection.
#[derive(Clone)]
struct RawClient {
    inner: Arc<RawInner>,
}

struct RawInner {
    tx: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Waiters>,
    next_id: AtomicU32,
}

impl RawClient {
    async fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(
            FramedWrite::new(w, LengthDelimitedCodec::new()),
            rx,
        ));
        let pending: Arc<Waiters> = Arc::default();
        let waiters = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut frames = FramedRead::new(r, LengthDelimitedCodec::new());
            while let Some(Ok(mut frame)) = frames.next().await {
                if frame.len() < 4 {
                    break;
                }
                let id = frame.get_u32();
                let waiter = waiters.lock().unwrap().remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(frame.freeze());
                }
            }
            // Dropping the senders fails every call still waiting.
            waiters.lock().unwrap().clear();
        });
        Ok(Self {
            inner: Arc::new(RawInner {
                tx,
                pending,
                next_id: AtomicU32::new(1),
            }),
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        req: &Req,
    ) -> Result<Resp, String> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.pending.lock().unwrap().insert(id, tx);
        if inner.tx.send(encode_frame(id, req)).is_err() {
            inner.pending.lock().unwrap().remove(&id);
            return Err("connection closed".into());
        }
        let body = rx.await.map_err(|_| "connection closed".to_string())?;
        rmp_serde::from_slice(&body).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------
// The parent: spawn servers, measure, report
// ---------------------------------------------------------------------------

/// What one implementation looks like to the measuring loops.
#[derive(Clone)]
enum Caller {
    Micro(Client),
    Raw(RawClient),
}

impl Caller {
    async fn call(&self, req: &EchoRequest, opts: &CallOptions) -> EchoReply {
        match self {
            Caller::Micro(c) => c
                .call::<EchoRequest, EchoReply>(SERVICE, ENDPOINT, req, opts)
                .await
                .expect("micro call"),
            Caller::Raw(c) => c
                .call::<EchoRequest, EchoReply>(req)
                .await
                .expect("raw call"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    calls_per_s: f64,
    /// CPU time (both processes, user + system) per call in the throughput run.
    cpu_us_per_call: f64,
}

async fn connect(which: &str, port: u16) -> Caller {
    let addr = format!("127.0.0.1:{port}");
    match which {
        // The server lives in another process, so it cannot share an in-memory
        // registry with us: `micro_client` registers its node in one of our own.
        // The client still resolves the service by name through its cache,
        // selector and pool.
        "micro" => Caller::Micro(micro_client(port).await),
        _ => Caller::Raw(RawClient::connect(&addr).await.expect("raw connect")),
    }
}

/// Latency with one call in flight, for every caller at once: calls go in small
/// blocks taking turns, so both implementations see the same machine state (on a
/// shared or virtual machine, wake-up latency drifts by several times over seconds).
/// Returns (p50, p99) in µs per caller.
async fn latency(callers: &[Caller], cfg: &Config) -> Vec<(f64, f64)> {
    const BLOCK: usize = 250;
    let req = request();
    let opts = CallOptions::new();
    for c in callers {
        let check = c.call(&req, &opts).await;
        assert_eq!(check.message, "Hello, bench-client-0001");
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
            let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
            (pct(0.50), pct(0.99))
        })
        .collect()
}

/// Throughput with CONCURRENCY calls in flight on the caller's one connection:
/// (calls/s, CPU µs per call of both processes).
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
    let cpu = || Some(cpu_time(std::process::id())? + cpu_time(server_pid)?);
    tokio::time::sleep(cfg.warmup / 2).await;
    let (c0, t0, cpu0) = (total(), Instant::now(), cpu());
    tokio::time::sleep(Duration::from_secs_f64(cfg.secs)).await;
    let (c1, t1, cpu1) = (total(), Instant::now(), cpu());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("caller task");
    }
    let cpu_us_per_call = match (cpu0, cpu1) {
        (Some(a), Some(b)) if c1 > c0 => (b - a).as_secs_f64() * 1e6 / (c1 - c0) as f64,
        _ => f64::NAN,
    };
    ((c1 - c0) as f64 / (t1 - t0).as_secs_f64(), cpu_us_per_call)
}

fn run(cfg: &Config, only: Option<&str>) {
    let names: Vec<&str> = match only {
        Some("micro") => vec!["micro"],
        Some("raw") => vec!["raw"],
        _ => vec!["micro", "raw"],
    };
    let servers: Vec<ServerProc> = names
        .iter()
        .map(|n| {
            ServerProc::spawn(if *n == "micro" {
                "--serve-micro"
            } else {
                "--serve-raw"
            })
        })
        .collect();
    let rt = runtime();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); names.len()];
    let started = Instant::now();
    for round in 0..cfg.rounds {
        // Fresh clients (and connections) per round.
        let callers: Vec<Caller> = rt.block_on(async {
            let mut v = Vec::new();
            for (n, s) in names.iter().zip(&servers) {
                v.push(connect(n, s.port).await);
            }
            v
        });
        let lat = rt.block_on(latency(&callers, cfg));
        // Alternate the order each round so drift (other load, thermal) hits both alike.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..names.len()).collect()
        } else {
            (0..names.len()).rev().collect()
        };
        let mut tput = vec![(0.0, 0.0); names.len()];
        for i in order {
            tput[i] = rt.block_on(throughput(&callers[i], servers[i].child.id(), cfg));
        }
        for i in 0..names.len() {
            let s = Sample {
                p50_us: lat[i].0,
                p99_us: lat[i].1,
                calls_per_s: tput[i].0,
                cpu_us_per_call: tput[i].1,
            };
            eprintln!(
                "round {}: {:<5} p50 {:>7.1} µs  p99 {:>7.1} µs  {:>9.0} calls/s @{CONCURRENCY}  {:>5.1} µs CPU/call",
                round + 1,
                names[i],
                s.p50_us,
                s.p99_us,
                s.calls_per_s,
                s.cpu_us_per_call
            );
            samples[i].push(s);
        }
    }
    drop(rt);
    drop(servers);

    let med: Vec<Sample> = samples
        .iter()
        .map(|v| Sample {
            p50_us: median(v.iter().map(|s| s.p50_us).collect()),
            p99_us: median(v.iter().map(|s| s.p99_us).collect()),
            calls_per_s: median(v.iter().map(|s| s.calls_per_s).collect()),
            cpu_us_per_call: median(v.iter().map(|s| s.cpu_us_per_call).collect()),
        })
        .collect();

    println!();
    println!(
        "unary RPC, 2 processes over 127.0.0.1, msgpack, median of {} round(s) ({:.0} s)",
        cfg.rounds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<8} {:>10} {:>10} {:>14} {:>14}",
        "", "p50 µs", "p99 µs", "calls/s @64", "CPU µs/call"
    );
    for (n, s) in names.iter().zip(&med) {
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>14.0} {:>14.1}",
            n, s.p50_us, s.p99_us, s.calls_per_s, s.cpu_us_per_call
        );
    }
    let mut json = serde_json::json!({
        "bench": "rpc",
        "transport": "tcp 127.0.0.1, two processes",
        "codec": "msgpack",
        "concurrency": CONCURRENCY,
        "rounds": cfg.rounds,
        "latency_calls_per_round": cfg.calls,
        "throughput_secs_per_round": cfg.secs,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    for (n, (s, all)) in names.iter().zip(med.iter().zip(&samples)) {
        json[*n] = serde_json::json!({
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "calls_per_s": s.calls_per_s,
            "cpu_us_per_call": s.cpu_us_per_call,
            "rounds": all.iter().map(|s| serde_json::json!({
                "p50_us": s.p50_us, "p99_us": s.p99_us, "calls_per_s": s.calls_per_s,
                "cpu_us_per_call": s.cpu_us_per_call,
            })).collect::<Vec<_>>(),
        });
    }
    if let [m, r] = med[..] {
        let (p50, p99, tput) = (
            m.p50_us / r.p50_us,
            m.p99_us / r.p99_us,
            m.calls_per_s / r.calls_per_s,
        );
        let cpu = m.cpu_us_per_call / r.cpu_us_per_call;
        println!(
            "{:<8} {:>9.2}x {:>9.2}x {:>13.2}x {:>13.2}x",
            "ratio", p50, p99, tput, cpu
        );
        println!();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "target: micro throughput >= 0.80x raw: {:.2}x {}",
            tput,
            verdict(tput >= 0.8)
        );
        println!(
            "target: micro p50 <= 1.15x raw:        {:.2}x {}",
            p50,
            verdict(p50 <= 1.15)
        );
        json["ratio"] = serde_json::json!({ "p50": p50, "p99": p99, "calls_per_s": tput, "cpu_us_per_call": cpu });
        json["targets"] = serde_json::json!({
            "throughput_min_ratio": 0.8, "throughput_met": tput >= 0.8,
            "p50_max_ratio": 1.15, "p50_met": p50 <= 1.15,
        });
    }
    write_results("bench-rpc.json", &json);
}
