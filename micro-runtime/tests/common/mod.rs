//! Helpers shared by the integration tests of this crate.
#![allow(dead_code)] // each test binary uses its own part

use bytes::Bytes;
use micro_runtime::events::{ConsumeOptions, Consumer, Delivery, Events, StartAt};
use micro_runtime::Metadata;
use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `cond` every 5 ms until it holds; panics naming `what` after 5 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `counter` stops moving for 200 ms, and returns its value.
pub async fn settled(counter: &AtomicUsize) -> usize {
    let mut last = counter.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

// ---------------------------------------------------------------------------
// Files

/// A fresh directory of the test's own, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "micro-test-{name}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Events

/// How long an events test waits for something that should happen (a
/// delivery, a private server to listen).
pub const WAIT: Duration = Duration::from_secs(20);

/// Metadata of `(key, value)` pairs.
pub fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Publishes a text event without metadata; its id.
pub async fn publish(events: &dyn Events, topic: &str, payload: &str) -> String {
    events
        .publish(topic, Bytes::from(payload.to_owned()), Metadata::new())
        .await
        .unwrap()
}

/// The next delivery, failing the test if none comes within [`WAIT`].
pub async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next_delivery())
        .await
        .expect("no delivery in time")
        .expect("delivery failed")
        .expect("the consumer ended")
}

/// Asserts that no delivery comes within `d`.
pub async fn none_within(consumer: &mut Consumer, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, consumer.next_delivery()).await {
        panic!(
            "unexpected delivery: {:?}",
            r.map(|d| d.map(|d| d.event().clone()))
        );
    }
}

/// The payload of a delivery, as text.
pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.event().payload.to_vec()).unwrap()
}

/// The options of a consumer of `group` starting at the earliest event.
pub fn earliest(group: &str) -> ConsumeOptions {
    ConsumeOptions::new(group).start(StartAt::Earliest)
}

/// Acks everything `consumer` gets, recording the payloads under `name`,
/// until `total` events were recorded under all names together.
pub fn drain(
    name: &'static str,
    mut consumer: Consumer,
    seen: Arc<Mutex<Vec<(&'static str, String)>>>,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if seen.lock().unwrap().len() >= total {
                return;
            }
            let Ok(d) =
                tokio::time::timeout(Duration::from_millis(50), consumer.next_delivery()).await
            else {
                continue;
            };
            let d = d.unwrap().unwrap();
            seen.lock().unwrap().push((name, text(&d)));
            d.ack().await.unwrap();
            tokio::task::yield_now().await;
        }
    })
}

// ---------------------------------------------------------------------------
// Servers

/// Where no server listens.
pub const DOWN_ADDRESS: &str = "127.0.0.1:1";

/// Asserts that `connecting` to [`DOWN_ADDRESS`] fails within 5 s with a 503
/// naming the address.
pub async fn refused_in_time<T>(connecting: impl Future<Output = micro_runtime::Result<T>>) {
    let connected = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .expect("connect returned within 5 s");
    let Err(e) = connected else {
        panic!("connected to {DOWN_ADDRESS}, where no server listens");
    };
    assert_eq!(e.code, 503, "{e}");
    assert!(e.detail.contains(DOWN_ADDRESS), "{e}");
}

/// A port nothing listens on (yet).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Tries `attempt` until it gives a value; fails the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private server process of the test's own, on 127.0.0.1: killed when
/// dropped.
pub struct Server {
    program: String,
    args: Vec<String>,
    /// The port it listens on.
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `program` with `args`, and waits until it listens on `port`.
    pub async fn start(program: &str, args: Vec<String>, port: u16) -> Self {
        let mut server = Self {
            program: program.to_owned(),
            args,
            port,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Starts the server (again), and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}` (is it installed?): {e}", self.program));
        self.child = Some(child);
        let port = self.port;
        eventually("the server to listen", WAIT, || async move {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        })
        .await;
    }

    /// Kills the server, if it runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private nats-server on a free port, with `extra` arguments (such as
/// `-js`).
pub async fn nats_server(extra: &[&str]) -> Server {
    let port = free_port();
    let program = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let mut args = vec!["-a".to_owned(), "127.0.0.1".to_owned()];
    args.extend(["-p".to_owned(), port.to_string()]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::start(program, args, port).await
}

/// A private redis-server on a free port, that keeps nothing on disk.
pub async fn redis_server() -> Server {
    let port = free_port();
    let dir = std::env::temp_dir();
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .map(str::to_owned);
    Server::start("redis-server", args.to_vec(), port).await
}
