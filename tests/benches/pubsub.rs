//! Publish-to-delivery throughput and latency of micro's brokers and durable
//! event backends, each remote one beside the bare client doing the same work
//! in the same run.
//!
//! `cargo bench -p micro-tests --bench pubsub`
//!
//! Everything runs in this process (publisher and subscriber alike), so that
//! publish and delivery times come from one clock. Remote backends talk to the
//! servers at `BENCH_NATS` (default `nats://127.0.0.1:4222`, with JetStream)
//! and `BENCH_REDIS` (default `redis://127.0.0.1:6379`).
//!
//! # Workload
//!
//! The message is `Msg { id: u64, sent_at_nanos: u64, body: String }` with a
//! body of 64 bytes, MessagePack with named fields (micro's default) on both
//! sides. One publisher (one connection, one broker or client) and one
//! subscriber (a connection of its own where the backend has connections).
//! The load is a closed loop of [`CONCURRENCY`] messages in flight: 64
//! publishing tasks share 64 credits; a task takes a credit, stamps the
//! message with the time and publishes it (awaiting what the backend awaits),
//! and the subscriber gives the credit back when the message is delivered. So
//! a backend whose `publish` returns before delivery (NATS core, Redis
//! pub/sub) cannot run ahead of its subscriber, and micro and bare run exactly
//! the same concurrency.
//!
//! * **throughput**: messages delivered / elapsed, over `BENCH_SECS`, after
//!   `BENCH_WARMUP_MS` of warm-up, with 64 in flight;
//! * **latency @64**: p50 and p99 of (delivery time - publish time) over the
//!   same window (with 64 in flight this is mostly queueing: ~64 / throughput);
//! * **latency @1**: p50 and p99 with one message in flight, over
//!   `BENCH_LAT_SECS`, on the same connections right after;
//! * **CPU µs/msg**: CPU time (user + system) of this process plus, for remote
//!   backends, of the local `nats-server` or `redis-server` process (found by
//!   name in `/proc`), per delivered message, over the throughput window; the
//!   `server` column is the server's part. On a machine with few cores the
//!   throughput is mostly CPU per message: this says on which side it goes.
//!
//! # What is compared
//!
//! | backend | micro | bare baseline |
//! | --- | --- | --- |
//! | `memory` | `MemoryBroker` | — |
//! | `native` | `NativeBroker` (publisher and subscriber brokers sharing a `MemoryRegistry`; `publish` waits for the subscriber's ack) | a micro unary call carrying the same message (`Client::call` to a `Service` in this process) |
//! | `nats` | `NatsBroker` | `async-nats` core publish / subscribe |
//! | `redis` | `RedisBroker` | `redis` `PUBLISH` / `SUBSCRIBE` (multiplexed connection, pipelined by the client) |
//! | `file` | `FileEvents` (in a directory under the target dir) | — |
//! | `jetstream` | `JetStreamEvents` | `async-nats` JetStream publish awaiting the `PubAck`, durable pull consumer with explicit ack (`messages()`, `ack()` each) |
//! | `redis-events` | `RedisEvents` | `redis` `XADD`; `XREADGROUP COUNT 64 BLOCK`, then one `XACK` of the batch |
//!
//! micro brokers are driven with `broker::publish` and subscribed with a
//! `broker::typed` handler (default `SubscribeOptions`); micro event backends
//! with `events::publish_typed` and a consumer loop of `next_delivery`,
//! `decode`, `ack().await` (as in the `events` module docs, default
//! `ConsumeOptions`). Bare subscribers decode the same struct themselves.
//!
//! Rounds alternate which side of a pair goes first (machine noise hits both
//! alike); the table shows the median of `BENCH_ROUNDS` rounds. Every
//! measurement uses fresh connections and a fresh topic / stream / key named
//! `bench-pubsub-<run>-...`; what a measurement created is deleted after it
//! (JetStream streams and Redis keys whose names hold the run id), and the
//! file log directory at the end.
//!
//! Results are printed as a table and written to `target/bench-pubsub.json`
//! (under `CARGO_TARGET_DIR` if set). Without `--bench` (e.g. `cargo test
//! --benches`) it runs a short smoke version, which skips the remote backends
//! whose server does not answer (a full run reports them as failed). Knobs: `BENCH_ROUNDS` (default
//! 3), `BENCH_SECS` (default 3), `BENCH_LAT_SECS` (default 0.5),
//! `BENCH_WARMUP_MS` (default 500), `BENCH_ONLY` (a comma-separated list of
//! backends: `memory`, `native`, `nats`, `redis`, `file`, `jetstream`,
//! `redis-events`), `BENCH_SIDE` (`micro` or `bare`: one side of the pairs
//! only, e.g. under a profiler).

mod common;
use common::*;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use micro::broker::{self, Broker, MessageHandler, NatsBroker, RedisBroker, SubscribeOptions};
use micro::events::{self, ConsumeOptions, Events, FileEvents, JetStreamEvents, RedisEvents};
use micro::server::{unary, EndpointDef, Handler, Route};
use micro::{CallOptions, Client, MemoryBroker, MemoryRegistry, NativeBroker, Service};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, Semaphore};

/// Messages in flight (publish to delivery) in the throughput measurement.
const CONCURRENCY: usize = 64;
/// Bytes of the message body.
const BODY_LEN: usize = 64;
/// The target: a remote micro backend's throughput against its bare client.
const TARGET: f64 = 0.8;
/// A measurement's phase that does not drain within this has lost messages.
const DRAIN: Duration = Duration::from_secs(10);
/// Setup and teardown steps taking longer than this fail the measurement.
const STEP: Duration = Duration::from_secs(15);
/// The consumer group of the event backends.
const GROUP: &str = "bench";
/// The sink service and endpoint of the native baseline (a micro RPC).
const SINK: &str = "bench-sink";
const SINK_ENDPOINT: &str = "Sink.Take";

/// The message published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg {
    id: u64,
    sent_at_nanos: u64,
    body: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; other unknown arguments are ignored.
    let full = args.iter().any(|a| a == "--bench");
    let cfg = if full {
        Config {
            rounds: env_or("BENCH_ROUNDS", 3.0) as usize,
            secs: env_or("BENCH_SECS", 3.0),
            lat_secs: env_or("BENCH_LAT_SECS", 0.5),
            warmup: Duration::from_secs_f64(env_or("BENCH_WARMUP_MS", 500.0) / 1000.0),
            smoke: false,
        }
    } else {
        // Smoke run (cargo test --benches): prove it works, fast.
        Config {
            rounds: 1,
            secs: 0.3,
            lat_secs: 0.1,
            warmup: Duration::from_millis(100),
            smoke: true,
        }
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mut backends: Vec<Backend> = match var("BENCH_ONLY") {
        Some(only) => {
            let names: Vec<&str> = only.split(',').map(str::trim).collect();
            for n in &names {
                if !Backend::ALL.iter().any(|b| b.name() == *n) {
                    eprintln!(
                        "BENCH_ONLY: unknown backend `{n}`; expected some of {}",
                        Backend::ALL.map(Backend::name).join(", ")
                    );
                    std::process::exit(2);
                }
            }
            Backend::ALL
                .into_iter()
                .filter(|b| names.contains(&b.name()))
                .collect()
        }
        None => Backend::ALL.to_vec(),
    };
    let sides = match var("BENCH_SIDE").as_deref() {
        Some("micro") => vec![Side::Micro],
        Some("bare") => vec![Side::Bare],
        None => vec![Side::Micro, Side::Bare],
        Some(other) => {
            eprintln!("BENCH_SIDE: `{other}`: expected micro or bare");
            std::process::exit(2);
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ctx = Ctx {
        nats: var("BENCH_NATS").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        redis: var("BENCH_REDIS").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        // Unique per run: the names of everything created on the servers hold it.
        run: format!(
            "{:x}{:04x}",
            now.as_secs() & 0xff_ffff,
            (std::process::id() ^ now.subsec_nanos()) & 0xffff
        ),
        file_dir: target_dir(),
        nats_pid: pid_of("nats-server"),
        redis_pid: pid_of("redis-server"),
    };
    let ctx = Ctx {
        file_dir: ctx.file_dir.join(format!("bench-pubsub-{}", ctx.run)),
        ..ctx
    };
    if cfg.smoke {
        // A smoke run proves the bench works where the servers are; it does
        // not fail for want of them (a full run does).
        backends.retain(|b| match b.server(&ctx) {
            Some(url) if !reachable(url) => {
                eprintln!("smoke run: skipping {} ({url} is not reachable)", b.name());
                false
            }
            _ => true,
        });
    }
    if !run(&cfg, &ctx, &backends, &sides) {
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
    lat_secs: f64,
    warmup: Duration,
    smoke: bool,
}

/// Where the servers are, and what this run names its things.
struct Ctx {
    nats: String,
    redis: String,
    run: String,
    file_dir: std::path::PathBuf,
    nats_pid: Option<u32>,
    redis_pid: Option<u32>,
}

/// Whether a TCP connection to the `host:port` of `url` opens within a second.
fn reachable(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let host_port = url.rsplit("://").next().unwrap_or(url);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    host_port
        .trim_end_matches('/')
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
}

/// The pid of the (first) process named `name`, from `/proc/<pid>/comm`.
fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Native,
    Nats,
    Redis,
    File,
    JetStream,
    RedisEvents,
}

impl Backend {
    const ALL: [Backend; 7] = [
        Backend::Memory,
        Backend::Native,
        Backend::Nats,
        Backend::Redis,
        Backend::File,
        Backend::JetStream,
        Backend::RedisEvents,
    ];

    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Native => "native",
            Backend::Nats => "nats",
            Backend::Redis => "redis",
            Backend::File => "file",
            Backend::JetStream => "jetstream",
            Backend::RedisEvents => "redis-events",
        }
    }

    /// What the micro side is.
    fn micro(self) -> &'static str {
        match self {
            Backend::Memory => "MemoryBroker",
            Backend::Native => "NativeBroker",
            Backend::Nats => "NatsBroker",
            Backend::Redis => "RedisBroker",
            Backend::File => "FileEvents",
            Backend::JetStream => "JetStreamEvents",
            Backend::RedisEvents => "RedisEvents",
        }
    }

    /// What the bare side is, if there is one.
    fn bare(self) -> Option<&'static str> {
        match self {
            Backend::Memory | Backend::File => None,
            Backend::Native => Some("micro rpc"),
            Backend::Nats => Some("async-nats core"),
            Backend::Redis => Some("redis pub/sub"),
            Backend::JetStream => Some("async-nats js"),
            Backend::RedisEvents => Some("redis streams"),
        }
    }

    /// Whether the ratio to the bare side has the 0.8x target (the remote
    /// backends; for native the baseline is another micro path, for information).
    fn has_target(self) -> bool {
        matches!(
            self,
            Backend::Nats | Backend::Redis | Backend::JetStream | Backend::RedisEvents
        )
    }

    /// The address of the server a remote backend needs.
    fn server(self, ctx: &Ctx) -> Option<&str> {
        match self {
            Backend::Nats | Backend::JetStream => Some(&ctx.nats),
            Backend::Redis | Backend::RedisEvents => Some(&ctx.redis),
            _ => None,
        }
    }

    fn server_pid(self, ctx: &Ctx) -> Option<u32> {
        match self {
            Backend::Nats | Backend::JetStream => ctx.nats_pid,
            Backend::Redis | Backend::RedisEvents => ctx.redis_pid,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Micro,
    Bare,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Micro => "micro",
            Side::Bare => "bare",
        }
    }
}

// ---------------------------------------------------------------------------
// The probe: credits, timestamps, and what was delivered
// ---------------------------------------------------------------------------

/// What publishers and the subscriber of one measurement share.
struct Probe {
    /// The clock: publish and delivery times are nanoseconds since this.
    base: Instant,
    /// One per message allowed in flight: taken to publish, given back on delivery.
    credits: Semaphore,
    next_id: AtomicU64,
    recording: AtomicBool,
    /// Latencies (ns) of the messages delivered while recording.
    latencies: Mutex<Vec<u64>>,
    delivered: AtomicU64,
    error: Mutex<Option<String>>,
    body: String,
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            base: Instant::now(),
            credits: Semaphore::new(CONCURRENCY),
            next_id: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            latencies: Mutex::new(Vec::with_capacity(1 << 20)),
            delivered: AtomicU64::new(0),
            error: Mutex::new(None),
            body: "0123456789abcdef".repeat(BODY_LEN / 16),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A fresh message stamped with the current time.
    fn message(&self) -> Msg {
        Msg {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            body: self.body.clone(),
            sent_at_nanos: self.now(),
        }
    }

    /// The subscriber got `msg`.
    fn delivered(&self, msg: &Msg) {
        let latency = self.now().saturating_sub(msg.sent_at_nanos);
        if self.recording.load(Ordering::Relaxed) {
            self.latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.credits.add_permits(1);
    }

    /// Records the first error; the measurement fails with it.
    fn fail(&self, why: impl std::fmt::Display) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            *e = Some(why.to_string());
        }
    }

    fn check(&self) -> Result<(), String> {
        match &*self.error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn start_recording(&self) {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    fn stop_recording(&self) -> Vec<u64> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sleeps `d`, failing early with the probe's error.
    async fn sleep(&self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }
}

type PublishFn = Arc<dyn Fn(Msg) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

fn publish_fn<F, Fut>(f: F) -> PublishFn
where
    F: Fn(Msg) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |m| Box::pin(f(m)))
}

/// A measurement's publisher, and how to tear down what was set up.
struct Rig {
    publish: PublishFn,
    teardown: Vec<BoxFuture<'static, ()>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    msgs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p50_us_at1: f64,
    p99_us_at1: f64,
    cpu_us_per_msg: f64,
    /// The part of `cpu_us_per_msg` spent by the server process.
    server_cpu_us_per_msg: f64,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// One phase of a measurement: `inflight` messages in flight, warm-up, then
/// `secs` recorded; returns (msgs/s, sorted latencies, CPU µs/msg of this
/// process and of the server).
#[allow(clippy::type_complexity)]
async fn phase(
    probe: &Arc<Probe>,
    publish: &PublishFn,
    inflight: usize,
    warmup: Duration,
    secs: f64,
    server_pid: Option<u32>,
) -> Result<(f64, Vec<u64>, (f64, f64)), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (probe, publish, stop) =
                (Arc::clone(probe), Arc::clone(publish), Arc::clone(&stop));
            tokio::spawn(async move {
                while let Ok(credit) = probe.credits.acquire().await {
                    if stop.load(Ordering::Relaxed) {
                        break; // the credit goes back
                    }
                    credit.forget();
                    if let Err(e) = publish(probe.message()).await {
                        probe.fail(format!("publish: {e}"));
                        break;
                    }
                }
            })
        })
        .collect();
    let cpu = || -> (Option<Duration>, Option<Duration>) {
        (
            cpu_time(std::process::id()),
            server_pid.map_or(Some(Duration::ZERO), cpu_time),
        )
    };
    let outcome = async {
        probe.sleep(warmup).await?;
        let (d0, t0, cpu0) = (
            probe.delivered.load(Ordering::SeqCst),
            Instant::now(),
            cpu(),
        );
        probe.start_recording();
        probe.sleep(Duration::from_secs_f64(secs)).await?;
        let mut lat = probe.stop_recording();
        let (d1, t1, cpu1) = (
            probe.delivered.load(Ordering::SeqCst),
            Instant::now(),
            cpu(),
        );
        if d1 == d0 {
            return Err(format!(
                "no message delivered in {secs} s ({inflight} in flight)"
            ));
        }
        lat.sort_unstable();
        let per_msg = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e6 / (d1 - d0) as f64,
            _ => f64::NAN,
        };
        let cpu_us = (per_msg(cpu0.0, cpu1.0), per_msg(cpu0.1, cpu1.1));
        Ok(((d1 - d0) as f64 / (t1 - t0).as_secs_f64(), lat, cpu_us))
    }
    .await;
    // Stop, and let what is in flight arrive: all credits back.
    stop.store(true, Ordering::SeqCst);
    let drained = tokio::time::timeout(DRAIN, async {
        for t in tasks {
            let _ = t.await;
        }
        while probe.credits.available_permits() < inflight {
            probe.check()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok::<_, String>(())
    })
    .await;
    let result = outcome?;
    probe.check()?;
    match drained {
        Ok(Ok(())) => Ok(result),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "{} of {inflight} messages in flight not delivered within {DRAIN:?} of the stop",
            inflight - probe.credits.available_permits().min(inflight)
        )),
    }
}

/// Throughput and latency with 64 in flight, then latency with 1.
async fn measure(
    probe: &Arc<Probe>,
    publish: &PublishFn,
    cfg: &Config,
    server_pid: Option<u32>,
) -> Result<Sample, String> {
    let (msgs_per_s, lat, (own_cpu, server_cpu)) = phase(
        probe,
        publish,
        CONCURRENCY,
        cfg.warmup,
        cfg.secs,
        server_pid,
    )
    .await?;
    // Keep one credit of the 64 (all back after the drain).
    probe
        .credits
        .acquire_many(CONCURRENCY as u32 - 1)
        .await
        .map_err(|e| e.to_string())?
        .forget();
    let (_, lat1, _) = phase(probe, publish, 1, cfg.warmup / 4, cfg.lat_secs, server_pid).await?;
    Ok(Sample {
        msgs_per_s,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p50_us_at1: percentile(&lat1, 0.5),
        p99_us_at1: percentile(&lat1, 0.99),
        cpu_us_per_msg: own_cpu + server_cpu,
        server_cpu_us_per_msg: server_cpu,
    })
}

/// Sets up, measures, tears down, and deletes what the servers hold for it.
async fn run_one(
    backend: Backend,
    side: Side,
    round: usize,
    cfg: &Config,
    ctx: &Ctx,
) -> Result<Sample, String> {
    let topic = format!(
        "bench-pubsub-{}-{}-{}-{}",
        ctx.run,
        backend.name(),
        side.name(),
        round
    );
    let probe = Probe::new();
    let rig = within(
        "setup",
        setup(backend, side, &topic, Arc::clone(&probe), ctx),
    )
    .await;
    let result = match rig {
        Ok(rig) => {
            let result = measure(&probe, &rig.publish, cfg, backend.server_pid(ctx)).await;
            for t in rig.teardown {
                if tokio::time::timeout(STEP, t).await.is_err() {
                    eprintln!("{} {}: a teardown step hung", backend.name(), side.name());
                }
            }
            result
        }
        Err(e) => Err(e),
    };
    if let Err(e) = cleanup(backend, ctx).await {
        eprintln!("{} {}: cleanup: {e}", backend.name(), side.name());
    }
    result
}

async fn within<T>(what: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| Err(format!("{what} took over {STEP:?}")))
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------

async fn setup(
    backend: Backend,
    side: Side,
    topic: &str,
    probe: Arc<Probe>,
    ctx: &Ctx,
) -> Result<Rig, String> {
    let topic = topic.to_owned();
    match (backend, side) {
        (Backend::Memory, _) => {
            let broker = Arc::new(MemoryBroker::new());
            micro_broker(broker.clone(), broker, topic, probe).await
        }
        (Backend::Native, Side::Micro) => {
            let registry = Arc::new(MemoryRegistry::new());
            let sub = NativeBroker::with_bind(registry.clone(), "127.0.0.1:0")
                .map_err(|e| err("native subscriber broker")(&e))?;
            let publ = NativeBroker::with_bind(registry, "127.0.0.1:0")
                .map_err(|e| err("native publisher broker")(&e))?;
            micro_broker(Arc::new(publ), Arc::new(sub), topic, probe).await
        }
        (Backend::Native, Side::Bare) => micro_rpc(probe).await,
        (Backend::Nats, Side::Micro) => {
            let sub = NatsBroker::connect(&ctx.nats)
                .await
                .map_err(|e| err("NatsBroker::connect")(&e))?;
            let publ = NatsBroker::connect(&ctx.nats)
                .await
                .map_err(|e| err("NatsBroker::connect")(&e))?;
            micro_broker(Arc::new(publ), Arc::new(sub), topic, probe).await
        }
        (Backend::Nats, Side::Bare) => bare_nats(&ctx.nats, topic, probe).await,
        (Backend::Redis, Side::Micro) => {
            let sub = RedisBroker::connect(&ctx.redis)
                .await
                .map_err(|e| err("RedisBroker::connect")(&e))?;
            let publ = RedisBroker::connect(&ctx.redis)
                .await
                .map_err(|e| err("RedisBroker::connect")(&e))?;
            micro_broker(Arc::new(publ), Arc::new(sub), topic, probe).await
        }
        (Backend::Redis, Side::Bare) => bare_redis(&ctx.redis, topic, probe).await,
        (Backend::File, _) => {
            let dir = ctx.file_dir.join(&topic);
            let events = tokio::task::spawn_blocking(move || FileEvents::open(dir))
                .await
                .map_err(|e| err("FileEvents::open")(&e))?
                .map_err(|e| err("FileEvents::open")(&e))?;
            let events = Arc::new(events);
            micro_events(events.clone(), events, topic, probe).await
        }
        (Backend::JetStream, Side::Micro) => {
            let sub = JetStreamEvents::connect(&ctx.nats)
                .await
                .map_err(|e| err("JetStreamEvents::connect")(&e))?;
            let publ = JetStreamEvents::connect(&ctx.nats)
                .await
                .map_err(|e| err("JetStreamEvents::connect")(&e))?;
            micro_events(Arc::new(publ), Arc::new(sub), topic, probe).await
        }
        (Backend::JetStream, Side::Bare) => bare_jetstream(&ctx.nats, topic, probe).await,
        (Backend::RedisEvents, Side::Micro) => {
            let sub = RedisEvents::connect(&ctx.redis)
                .await
                .map_err(|e| err("RedisEvents::connect")(&e))?;
            let publ = RedisEvents::connect(&ctx.redis)
                .await
                .map_err(|e| err("RedisEvents::connect")(&e))?;
            micro_events(Arc::new(publ), Arc::new(sub), topic, probe).await
        }
        (Backend::RedisEvents, Side::Bare) => bare_redis_streams(&ctx.redis, topic, probe).await,
    }
}

/// A micro broker: `broker::publish` on `publ`, a typed handler on `sub`.
async fn micro_broker(
    publ: Arc<dyn Broker>,
    sub: Arc<dyn Broker>,
    topic: String,
    probe: Arc<Probe>,
) -> Result<Rig, String> {
    let handler: MessageHandler = {
        let probe = Arc::clone(&probe);
        broker::typed(move |m: Msg| {
            probe.delivered(&m);
            std::future::ready(Ok(()))
        })
    };
    let subscription = sub
        .subscribe(&topic, SubscribeOptions::new(), handler)
        .await
        .map_err(|e| err("subscribe")(&e))?;
    let publish = {
        let (publ, topic) = (Arc::clone(&publ), Arc::new(topic));
        publish_fn(move |m: Msg| {
            let (publ, topic) = (Arc::clone(&publ), Arc::clone(&topic));
            async move {
                broker::publish(&*publ, &topic, &m)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    };
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            subscription.unsubscribe().await;
            sub.shutdown(Duration::from_millis(500)).await;
            publ.shutdown(Duration::from_millis(500)).await;
        })],
    })
}

/// A micro event backend: `events::publish_typed` on `publ`; on `sub`, a
/// consumer loop of `next_delivery`, `decode`, `ack`.
async fn micro_events(
    publ: Arc<dyn Events>,
    sub: Arc<dyn Events>,
    topic: String,
    probe: Arc<Probe>,
) -> Result<Rig, String> {
    let mut consumer = sub
        .consume(&topic, ConsumeOptions::new(GROUP))
        .await
        .map_err(|e| err("consume")(&e))?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = {
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    d = consumer.next_delivery() => d,
                    _ = &mut stopped => break,
                };
                match delivery {
                    Ok(Some(d)) => match d.event().decode::<Msg>() {
                        Ok(m) => {
                            probe.delivered(&m);
                            if let Err(e) = d.ack().await {
                                probe.fail(format!("ack: {e}"));
                            }
                        }
                        Err(e) => probe.fail(format!("decode: {e}")),
                    },
                    Ok(None) => break,
                    Err(e) => {
                        probe.fail(format!("next_delivery: {e}"));
                        break;
                    }
                }
            }
            drop(consumer);
            drop(sub);
        })
    };
    let publish = {
        let topic = Arc::new(topic);
        publish_fn(move |m: Msg| {
            let (publ, topic) = (Arc::clone(&publ), Arc::clone(&topic));
            async move {
                events::publish_typed(&*publ, &topic, &m)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    };
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            let _ = stop.send(());
            let _ = task.await;
        })],
    })
}

/// The sink of the native baseline: a unary endpoint taking the message.
struct Sink {
    probe: Arc<Probe>,
}

impl Handler for Sink {
    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![unary(
            EndpointDef {
                name: SINK_ENDPOINT,
                request: "Msg",
                response: "()",
                doc: "Takes a message.",
            },
            self,
            |this: Arc<Sink>, m: Msg| async move {
                this.probe.delivered(&m);
                Ok(())
            },
        )]
    }
}

/// The native baseline: a micro unary call carrying the message, to a
/// service in this process (over TCP loopback, like the native broker).
async fn micro_rpc(probe: Arc<Probe>) -> Result<Rig, String> {
    let registry = Arc::new(MemoryRegistry::new());
    let svc = Service::new(SINK)
        .address("127.0.0.1:0")
        .registry(registry.clone())
        .handler(Sink { probe })
        .start()
        .await
        .map_err(|e| err("sink service")(&e))?;
    let client = Client::with_registry(registry).map_err(|e| err("client")(&e))?;
    let opts = Arc::new(CallOptions::new());
    let publish = publish_fn(move |m: Msg| {
        let (client, opts) = (client.clone(), Arc::clone(&opts));
        async move {
            client
                .call::<Msg, ()>(SINK, SINK_ENDPOINT, &m, &opts)
                .await
                .map_err(|e| e.to_string())
        }
    });
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            let _ = svc.stop().await;
        })],
    })
}

fn encode(m: &Msg) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(m).map_err(|e| format!("encode: {e}"))
}

fn decode(payload: &[u8]) -> Result<Msg, String> {
    rmp_serde::from_slice(payload).map_err(|e| format!("decode: {e}"))
}

/// Bare NATS core: `publish` (the client flushes on its own) on one
/// connection, `subscribe` on another.
async fn bare_nats(addr: &str, subject: String, probe: Arc<Probe>) -> Result<Rig, String> {
    let sub_client = async_nats::connect(addr)
        .await
        .map_err(|e| err("nats connect")(&e))?;
    let mut sub = sub_client
        .subscribe(subject.clone())
        .await
        .map_err(|e| err("nats subscribe")(&e))?;
    sub_client
        .flush()
        .await
        .map_err(|e| err("nats flush")(&e))?;
    let task = {
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match decode(&msg.payload) {
                    Ok(m) => probe.delivered(&m),
                    Err(e) => probe.fail(e),
                }
            }
        })
    };
    let client = async_nats::connect(addr)
        .await
        .map_err(|e| err("nats connect")(&e))?;
    let subject: async_nats::Subject = subject.into();
    let publish = publish_fn(move |m: Msg| {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let payload = Bytes::from(encode(&m)?);
            client
                .publish(subject, payload)
                .await
                .map_err(|e| e.to_string())
        }
    });
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            task.abort();
            let _ = task.await;
            drop(sub_client);
        })],
    })
}

/// Bare Redis pub/sub: `PUBLISH` on a multiplexed connection (concurrent
/// commands are pipelined), `SUBSCRIBE` on a pub/sub connection.
async fn bare_redis(url: &str, channel: String, probe: Arc<Probe>) -> Result<Rig, String> {
    let client = redis::Client::open(url).map_err(|e| err("redis client")(&e))?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| err("redis pubsub")(&e))?;
    pubsub
        .subscribe(&channel)
        .await
        .map_err(|e| err("redis subscribe")(&e))?;
    let mut messages = pubsub.into_on_message();
    let task = {
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                match decode(msg.get_payload_bytes()) {
                    Ok(m) => probe.delivered(&m),
                    Err(e) => probe.fail(e),
                }
            }
        })
    };
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err("redis connect")(&e))?;
    let channel = Arc::new(channel);
    let publish = publish_fn(move |m: Msg| {
        let (mut conn, channel) = (conn.clone(), Arc::clone(&channel));
        async move {
            let payload = encode(&m)?;
            redis::cmd("PUBLISH")
                .arg(&*channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    });
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            task.abort();
            let _ = task.await;
        })],
    })
}

/// Bare JetStream: a stream of one subject; publish awaiting the `PubAck` on
/// one connection; a durable pull consumer with explicit acks, read with
/// `messages()` and acked one by one, on another.
async fn bare_jetstream(addr: &str, name: String, probe: Arc<Probe>) -> Result<Rig, String> {
    let sub_js = jetstream::new(
        async_nats::connect(addr)
            .await
            .map_err(|e| err("nats connect")(&e))?,
    );
    let stream = sub_js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![name.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| err("create stream")(&e))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(GROUP.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| err("create consumer")(&e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| err("consumer messages")(&e))?;
    let task = {
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) => {
                        probe.fail(format!("jetstream messages: {e}"));
                        break;
                    }
                };
                match decode(&msg.payload) {
                    Ok(m) => probe.delivered(&m),
                    Err(e) => probe.fail(e),
                }
                if let Err(e) = msg.ack().await {
                    probe.fail(format!("ack: {e}"));
                }
            }
        })
    };
    let js = jetstream::new(
        async_nats::connect(addr)
            .await
            .map_err(|e| err("nats connect")(&e))?,
    );
    let subject: async_nats::Subject = name.into();
    let publish = publish_fn(move |m: Msg| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let payload = Bytes::from(encode(&m)?);
            js.publish(subject, payload)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    });
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            task.abort();
            let _ = task.await;
            drop(sub_js);
        })],
    })
}

/// Bare Redis Streams: `XADD` on a multiplexed connection (concurrent
/// commands are pipelined); a consumer group read with `XREADGROUP COUNT 64
/// BLOCK 100`, each batch acked with one `XACK`, on another connection.
async fn bare_redis_streams(url: &str, key: String, probe: Arc<Probe>) -> Result<Rig, String> {
    let client = redis::Client::open(url).map_err(|e| err("redis client")(&e))?;
    let mut sub_conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err("redis connect")(&e))?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(&mut sub_conn)
        .await
        .map_err(|e| err("XGROUP CREATE")(&e))?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = {
        let (probe, key) = (Arc::clone(&probe), key.clone());
        tokio::spawn(async move {
            let opts = redis::streams::StreamReadOptions::default()
                .group(GROUP, "c1")
                .count(CONCURRENCY)
                .block(100);
            loop {
                if stopped.try_recv().is_ok() {
                    break;
                }
                let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                    redis::cmd("XREADGROUP")
                        .arg(&opts)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(&mut sub_conn)
                        .await;
                let reply = match reply {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        probe.fail(format!("XREADGROUP: {e}"));
                        break;
                    }
                };
                let mut ids = Vec::new();
                for k in reply.keys {
                    for entry in k.ids {
                        match entry.get::<Vec<u8>>("p").map(|p| decode(&p)) {
                            Some(Ok(m)) => probe.delivered(&m),
                            Some(Err(e)) => probe.fail(e),
                            None => probe.fail("an entry without `p`"),
                        }
                        ids.push(entry.id);
                    }
                }
                if !ids.is_empty() {
                    let acked = redis::cmd("XACK")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(&ids)
                        .query_async::<i64>(&mut sub_conn)
                        .await;
                    if let Err(e) = acked {
                        probe.fail(format!("XACK: {e}"));
                        break;
                    }
                }
            }
        })
    };
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err("redis connect")(&e))?;
    let key = Arc::new(key);
    let publish = publish_fn(move |m: Msg| {
        let (mut conn, key) = (conn.clone(), Arc::clone(&key));
        async move {
            let payload = encode(&m)?;
            redis::cmd("XADD")
                .arg(&*key)
                .arg("*")
                .arg("p")
                .arg(payload)
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    });
    Ok(Rig {
        publish,
        teardown: vec![Box::pin(async move {
            let _ = stop.send(());
            let mut task = task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        })],
    })
}

/// Deletes what the servers hold for this run: JetStream streams and Redis
/// keys whose names hold the run id (whatever the backend named them).
async fn cleanup(backend: Backend, ctx: &Ctx) -> Result<(), String> {
    match backend {
        Backend::Nats | Backend::JetStream => cleanup_nats(ctx).await,
        Backend::Redis | Backend::RedisEvents => cleanup_redis(ctx).await,
        _ => Ok(()),
    }
}

async fn cleanup_nats(ctx: &Ctx) -> Result<(), String> {
    let js = jetstream::new(
        async_nats::connect(&ctx.nats)
            .await
            .map_err(|e| err("nats connect")(&e))?,
    );
    let mut names = js.stream_names();
    let mut ours = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| err("stream names")(&e))?;
        if name.to_ascii_lowercase().contains(&ctx.run) {
            ours.push(name);
        }
    }
    for name in ours {
        js.delete_stream(&name)
            .await
            .map_err(|e| err("delete stream")(&e))?;
    }
    Ok(())
}

async fn cleanup_redis(ctx: &Ctx) -> Result<(), String> {
    let client = redis::Client::open(ctx.redis.as_str()).map_err(|e| err("redis client")(&e))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err("redis connect")(&e))?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{}*", ctx.run))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("SCAN")(&e))?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| err("DEL")(&e))?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Runs every backend and side, in rounds; `false` if a measurement failed.
fn run(cfg: &Config, ctx: &Ctx, backends: &[Backend], sides: &[Side]) -> bool {
    let rt = runtime();
    let started = Instant::now();
    // results[backend][side][round]
    let mut results: Vec<Vec<Vec<Result<Sample, String>>>> =
        vec![vec![Vec::new(); 2]; backends.len()];
    for round in 0..cfg.rounds {
        for (b, &backend) in backends.iter().enumerate() {
            let mut order: Vec<Side> = sides
                .iter()
                .copied()
                .filter(|s| *s == Side::Micro || backend.bare().is_some())
                .collect();
            // Alternate which side goes first so drift hits both alike.
            if (round + b) % 2 == 1 {
                order.reverse();
            }
            for side in order {
                let r = rt.block_on(run_one(backend, side, round, cfg, ctx));
                match &r {
                    Ok(s) => eprintln!(
                        "round {}: {:<12} {:<5} {:>9.0} msg/s  p50 {:>8.1} µs  p99 {:>8.1} µs @{CONCURRENCY}  p50 {:>7.1} µs  p99 {:>7.1} µs @1  {:>6.1} µs CPU/msg ({:.1} server)",
                        round + 1,
                        backend.name(),
                        side.name(),
                        s.msgs_per_s,
                        s.p50_us,
                        s.p99_us,
                        s.p50_us_at1,
                        s.p99_us_at1,
                        s.cpu_us_per_msg,
                        s.server_cpu_us_per_msg
                    ),
                    Err(e) => eprintln!(
                        "round {}: {:<12} {:<5} FAILED: {e}",
                        round + 1,
                        backend.name(),
                        side.name()
                    ),
                }
                results[b][side as usize].push(r);
            }
        }
    }
    if backends.contains(&Backend::File) {
        let _ = std::fs::remove_dir_all(&ctx.file_dir);
    }
    drop(rt);
    report(cfg, ctx, backends, &results, started)
}

/// The median of the rounds that succeeded, and the first error if any failed.
fn summarize(rounds: &[Result<Sample, String>]) -> (Option<Sample>, Option<String>) {
    let ok: Vec<Sample> = rounds
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let error = rounds.iter().find_map(|r| r.as_ref().err().cloned());
    if ok.is_empty() {
        return (None, error);
    }
    let med = |f: fn(&Sample) -> f64| median(ok.iter().map(f).collect());
    (
        Some(Sample {
            msgs_per_s: med(|s| s.msgs_per_s),
            p50_us: med(|s| s.p50_us),
            p99_us: med(|s| s.p99_us),
            p50_us_at1: med(|s| s.p50_us_at1),
            p99_us_at1: med(|s| s.p99_us_at1),
            cpu_us_per_msg: med(|s| s.cpu_us_per_msg),
            server_cpu_us_per_msg: med(|s| s.server_cpu_us_per_msg),
        }),
        error,
    )
}

fn sample_json(s: &Sample) -> serde_json::Value {
    serde_json::json!({
        "msgs_per_s": s.msgs_per_s,
        "p50_us": s.p50_us,
        "p99_us": s.p99_us,
        "p50_us_at1": s.p50_us_at1,
        "p99_us_at1": s.p99_us_at1,
        "cpu_us_per_msg": s.cpu_us_per_msg,
        "server_cpu_us_per_msg": s.server_cpu_us_per_msg,
    })
}

fn report(
    cfg: &Config,
    ctx: &Ctx,
    backends: &[Backend],
    results: &[Vec<Vec<Result<Sample, String>>>],
    started: Instant,
) -> bool {
    let mut ok = true;
    println!();
    println!(
        "pub/sub, publish -> delivery in one process, msgpack {{id, sent_at, {BODY_LEN} B body}}, \
         1 publisher, 1 subscriber; median of {} round(s) of {} s @{CONCURRENCY} + {} s @1 ({:.0} s in all)",
        cfg.rounds,
        cfg.secs,
        cfg.lat_secs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<13} {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "backend", "side", "msgs/s", "p50 µs", "p99 µs", "p50 µs", "p99 µs", "CPU µs", "server"
    );
    println!(
        "{:<13} {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        "",
        format!("@{CONCURRENCY}"),
        format!("@{CONCURRENCY}"),
        format!("@{CONCURRENCY}"),
        "@1",
        "@1",
        "/msg",
        "µs/msg"
    );
    let mut json_backends = Vec::new();
    let mut targets = Vec::new();
    for (b, backend) in backends.iter().enumerate() {
        let mut entry = serde_json::json!({
            "backend": backend.name(),
            "micro": backend.micro(),
            "bare": backend.bare(),
        });
        let mut med: [Option<Sample>; 2] = [None, None];
        for side in [Side::Micro, Side::Bare] {
            let rounds = &results[b][side as usize];
            if rounds.is_empty() {
                continue;
            }
            let label = match side {
                Side::Micro => backend.micro(),
                Side::Bare => backend.bare().unwrap_or("bare"),
            };
            let (m, error) = summarize(rounds);
            let first = if side == Side::Micro {
                backend.name()
            } else {
                ""
            };
            match &m {
                Some(s) => println!(
                    "{:<13} {:<16} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}{}",
                    first,
                    label,
                    s.msgs_per_s,
                    s.p50_us,
                    s.p99_us,
                    s.p50_us_at1,
                    s.p99_us_at1,
                    s.cpu_us_per_msg,
                    s.server_cpu_us_per_msg,
                    if error.is_some() {
                        "  (some rounds FAILED)"
                    } else {
                        ""
                    }
                ),
                None => println!("{first:<13} {label:<16} FAILED"),
            }
            if let Some(e) = &error {
                println!("{:<13}   error: {e}", "");
                ok = false;
            }
            let mut side_json = m.as_ref().map(sample_json).unwrap_or(serde_json::json!({}));
            side_json["name"] = serde_json::json!(label);
            side_json["error"] = serde_json::json!(error);
            side_json["rounds"] = serde_json::json!(rounds
                .iter()
                .map(|r| match r {
                    Ok(s) => sample_json(s),
                    Err(e) => serde_json::json!({ "error": e }),
                })
                .collect::<Vec<_>>());
            entry[side.name()] = side_json;
            med[side as usize] = m;
        }
        if let [Some(m), Some(r)] = med {
            let tput = m.msgs_per_s / r.msgs_per_s;
            let ratios = serde_json::json!({
                "msgs_per_s": tput,
                "p50": m.p50_us / r.p50_us,
                "p99": m.p99_us / r.p99_us,
                "p50_at1": m.p50_us_at1 / r.p50_us_at1,
                "p99_at1": m.p99_us_at1 / r.p99_us_at1,
                "cpu_us_per_msg": m.cpu_us_per_msg / r.cpu_us_per_msg,
                "server_cpu_us_per_msg": m.server_cpu_us_per_msg / r.server_cpu_us_per_msg,
            });
            let server_ratio = if r.server_cpu_us_per_msg > 0.0 {
                format!(
                    "{:>8.2}x",
                    m.server_cpu_us_per_msg / r.server_cpu_us_per_msg
                )
            } else {
                format!("{:>9}", "")
            };
            println!(
                "{:<13} {:<16} {:>9.2}x {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x {server_ratio}",
                "",
                "micro/bare",
                tput,
                m.p50_us / r.p50_us,
                m.p99_us / r.p99_us,
                m.p50_us_at1 / r.p50_us_at1,
                m.p99_us_at1 / r.p99_us_at1,
                m.cpu_us_per_msg / r.cpu_us_per_msg
            );
            entry["ratio_micro_bare"] = ratios;
            if backend.has_target() {
                let met = tput >= TARGET;
                entry["target_min_ratio"] = serde_json::json!(TARGET);
                entry["target_met"] = serde_json::json!(met);
                targets.push(format!(
                    "target: {:<12} throughput >= {TARGET:.2}x bare: {tput:.2}x {}",
                    backend.name(),
                    if met { "met" } else { "MISSED" }
                ));
            }
        }
        json_backends.push(entry);
    }
    if !targets.is_empty() {
        println!();
        for t in &targets {
            println!("{t}");
        }
    }
    println!();
    println!(
        "CPU µs/msg: this process{} over the @{CONCURRENCY} window (server: that process's part); \
         ratios are micro / bare (throughput: higher is better; latency, CPU: lower is better)",
        match (ctx.nats_pid, ctx.redis_pid) {
            (None, None) => "",
            _ => " + the nats-server or redis-server process for remote backends",
        }
    );
    let json = serde_json::json!({
        "bench": "pubsub",
        "message": format!("msgpack {{id: u64, sent_at_nanos: u64, body: {BODY_LEN} B string}}"),
        "inflight": CONCURRENCY,
        "rounds": cfg.rounds,
        "secs_per_measurement": cfg.secs,
        "latency_secs_at1": cfg.lat_secs,
        "warmup_ms": cfg.warmup.as_millis() as u64,
        "smoke": cfg.smoke,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "nats": ctx.nats,
        "redis": ctx.redis,
        "run": ctx.run,
        "backends": json_backends,
    });
    write_results("bench-pubsub.json", &json);
    ok
}
