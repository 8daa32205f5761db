//! What the bench binaries share: the echo messages, the server child
//! process that prints its port and lives until its stdin closes, CPU time
//! from `/proc`, a micro client aimed at a port, and where results go.
#![allow(dead_code)] // each bench uses its own part

use bytes::{BufMut, Bytes, BytesMut};
use micro::registry::{Node, ServiceRecord};
use micro::{Client, MemoryRegistry, Registry};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service name of the micro bench server.
pub const SERVICE: &str = "bench";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoReply {
    pub message: String,
}

pub fn reply_to(req: EchoRequest) -> EchoReply {
    EchoReply {
        message: format!("Hello, {}", req.name),
    }
}

pub fn request() -> EchoRequest {
    EchoRequest {
        name: "bench-client-0001".into(),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Prints the port for the parent, then waits until the parent closes our stdin.
pub async fn announce_and_wait(port: u16) {
    println!("{port}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

/// `u32 id | msgpack body` (the length prefix is added by the codec).
pub fn encode_frame<T: Serialize>(id: u32, value: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32(id);
    let mut w = (&mut buf).writer();
    rmp_serde::encode::write_named(&mut w, value).expect("encodes");
    buf.freeze()
}

/// A server child process; closing its stdin (on drop) tells it to exit.
pub struct ServerProc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
}

impl ServerProc {
    pub fn spawn(flag: &str) -> ServerProc {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .arg(flag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server process");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server {flag} printed {line:?}, not a port"));
        ServerProc { child, stdin, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) consumed so far by process `pid`, from `/proc` (Linux);
/// `None` elsewhere. Ticks are taken as 1/100 s, the Linux `USER_HZ`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of this process and the server's.
pub fn both_cpu(server_pid: u32) -> Option<Duration> {
    Some(cpu_time(std::process::id())? + cpu_time(server_pid)?)
}

/// A micro client that reaches the server at `port` through its own registry
/// (the server lives in another process, so it cannot share an in-memory
/// one), with one connection per node: every call and stream multiplexed on it.
pub async fn micro_client(port: u16) -> Client {
    let registry = MemoryRegistry::new();
    let record = ServiceRecord {
        name: SERVICE.into(),
        version: "bench".into(),
        nodes: vec![Node {
            id: format!("{SERVICE}-remote"),
            address: format!("127.0.0.1:{port}"),
            ..Default::default()
        }],
        ..Default::default()
    };
    registry
        .register(&record, Duration::from_secs(24 * 3600))
        .await
        .expect("register");
    Client::builder()
        .registry(Arc::new(registry))
        .pool_size(1)
        .build()
        .expect("client")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The cargo target directory: a bench runs as `<target>/<profile>/deps/<bench>-<hash>`.
pub fn target_dir() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|p| p.to_path_buf()))
        .filter(|p| p.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Writes `json` to `<target>/<file>` and says where.
pub fn write_results(file: &str, json: &serde_json::Value) {
    let path = target_dir().join(file);
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(json).expect("json") + "\n",
    ) {
        Ok(()) => println!("results written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
