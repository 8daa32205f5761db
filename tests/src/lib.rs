//! Helpers for the multi-process integration tests: a test service contract,
//! node processes, a loopback-only network namespace, and condition waits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The contract of the `micro-test-node` processes.
#[micro::service(name = "node")]
pub trait NodeInfo {
    /// The pid of the process that served the call.
    async fn whoami(&self) -> micro::Result<u32>;
    /// Sleeps `ms` milliseconds, then answers with the pid.
    async fn sleep(&self, ms: u64) -> micro::Result<u32>;
}

/// Counters of the `Streams` handlers of one node process.
#[micro::message]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Streams whose handler (or output) is still alive.
    pub running: u64,
    /// Streams dropped before their end: cancelled by the caller or cut off.
    pub cancelled: u64,
    /// Items the `flood` streams produced.
    pub produced: u64,
}

/// Streaming endpoints of the `micro-test-node` processes.
#[micro::service(name = "node")]
pub trait Streams {
    /// Counts down from `from` to 1, an item every `every_ms`; fails with a 409
    /// instead of sending `fail_at`, when given.
    async fn countdown(
        &self,
        from: u32,
        every_ms: u64,
        fail_at: Option<u32>,
    ) -> micro::Result<micro::Streaming<u32>>;
    /// The sum of the numbers sent; fails with a 400 on a negative one.
    async fn sum(&self, nums: micro::Streaming<i64>) -> micro::Result<i64>;
    /// Echoes each line back in upper case.
    async fn chat(
        &self,
        lines: micro::Streaming<String>,
    ) -> micro::Result<micro::Streaming<String>>;
    /// `count` items of `size` bytes each, as fast as the reader takes them.
    async fn flood(&self, size: u32, count: u64) -> micro::Result<micro::Streaming<String>>;
    /// The counters of this process's stream handlers.
    async fn stream_stats(&self) -> micro::Result<StreamStats>;
}

/// The environment variable set inside the namespace, so the test body runs there.
const IN_NETNS: &str = "MICRO_TEST_IN_NETNS";

/// Runs the calling test inside a fresh network namespace that has only `lo`,
/// when that is possible (root and `unshare`): the test binary re-executes
/// itself for `test_name` there, and this returns `true` once it passed (the
/// caller then returns). Inside the namespace, or where it is not possible, it
/// returns `false` and the caller runs its body; mDNS is then confined to `lo`
/// by micro's default interface set.
pub fn reexec_in_loopback_netns(test_name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() || !nix::unistd::Uid::effective().is_root() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status();
    match status {
        Ok(s) => {
            assert!(
                s.success(),
                "{test_name} failed inside the loopback-only namespace: {s}"
            );
            true
        }
        Err(e) => panic!("cannot run unshare for {test_name}: {e}"),
    }
}

/// Whether this process runs inside the loopback-only namespace.
pub fn in_netns() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

/// A `micro-test-node` child process, killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    /// The child.
    pub child: Child,
    /// Its address as registered.
    pub address: String,
}

impl NodeProcess {
    /// Starts a node with `env` and waits for its `READY` line.
    pub fn start(exe: &str, env: &[(&str, String)]) -> NodeProcess {
        let mut cmd = Command::new(exe);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn micro-test-node");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("node printed nothing")
            .expect("read node stdout");
        let address = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected line: {line}"))
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess { child, address }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Waits for the child to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit within {timeout:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `timeout` passes; panics naming `what` then.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of process `pid`, in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// A UDP port for an mDNS test of its own, so parallel tests do not hear each other.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The message of the pub/sub and event-stream tests: a numbered message.
#[micro::message]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    /// Its number, unique within a test run.
    pub id: u64,
}

/// Appends `id` as a line to `file` (opened with `append`) in one `write`, so
/// a process killed at any point leaves whole lines only.
pub fn append_id(mut file: &std::fs::File, id: u64) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(format!("{id}\n").as_bytes())
}

/// The ids a file of [`append_id`] lines holds, in file order (none if the
/// file does not exist).
pub fn read_ids(path: &std::path::Path) -> Vec<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| {
                l.parse()
                    .unwrap_or_else(|_| panic!("bad line {l:?} in {}", path.display()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}
