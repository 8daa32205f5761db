//! A test service process: serves `NodeInfo` under the name `node`, prints
//! `READY <address>` once registered, and exits gracefully on SIGINT/SIGTERM.
//! Configured by the `MICRO_*` environment variables.

use micro::prelude::*;
use micro_tests::{NodeInfo, StreamStats, Streams};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Node;

#[derive(Default)]
struct Counters {
    running: AtomicU64,
    cancelled: AtomicU64,
    produced: AtomicU64,
}

/// Lives as long as a stream's handler or output: counts it running, and
/// cancelled when dropped before the stream was done.
struct Tracked {
    counters: Arc<Counters>,
    done: bool,
}

impl Tracked {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.running.fetch_add(1, Ordering::SeqCst);
        Self {
            counters: Arc::clone(counters),
            done: false,
        }
    }
}

impl Tracked {
    /// The stream reached its end: not a cancel.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counters.running.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone, Default)]
struct StreamNode(Arc<Counters>);

#[micro::handler]
impl Streams for StreamNode {
    async fn countdown(
        &self,
        from: u32,
        every_ms: u64,
        fail_at: Option<u32>,
    ) -> micro::Result<Streaming<u32>> {
        let tracked = Tracked::new(&self.0);
        let (tx, out) = Streaming::channel(1);
        tokio::spawn(async move {
            for n in (1..=from).rev() {
                if Some(n) == fail_at {
                    let _ = tx
                        .fail(Error::conflict("node", format!("refused to count {n}")))
                        .await;
                    return tracked.finish();
                }
                if tx.send(n).await.is_err() {
                    return; // cancelled: `tracked` counts it
                }
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
            tracked.finish();
        });
        Ok(out)
    }

    async fn sum(&self, mut nums: Streaming<i64>) -> micro::Result<i64> {
        let tracked = Tracked::new(&self.0);
        let mut total = 0;
        while let Some(n) = nums.message().await? {
            if n < 0 {
                tracked.finish();
                return Err(Error::bad_request("node", format!("negative number {n}")));
            }
            total += n;
        }
        tracked.finish();
        Ok(total)
    }

    async fn chat(&self, lines: Streaming<String>) -> micro::Result<Streaming<String>> {
        let tracked = Tracked::new(&self.0);
        let echo =
            futures_util::stream::unfold((lines, tracked), |(mut lines, tracked)| async move {
                match lines.next().await {
                    Some(line) => Some((line.map(|l| l.to_uppercase()), (lines, tracked))),
                    None => {
                        tracked.finish();
                        None
                    }
                }
            });
        Ok(Streaming::try_new(echo))
    }

    async fn flood(&self, size: u32, count: u64) -> micro::Result<Streaming<String>> {
        let mut tracked = Some(Tracked::new(&self.0));
        let counters = Arc::clone(&self.0);
        let item = "x".repeat(size as usize);
        let mut left = count;
        Ok(Streaming::new(futures_util::stream::poll_fn(move |_| {
            if left == 0 {
                if let Some(t) = tracked.take() {
                    t.finish();
                }
                return std::task::Poll::Ready(None);
            }
            left -= 1;
            counters.produced.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(Some(item.clone()))
        })))
    }

    async fn stream_stats(&self) -> micro::Result<StreamStats> {
        Ok(StreamStats {
            running: self.0.running.load(Ordering::SeqCst),
            cancelled: self.0.cancelled.load(Ordering::SeqCst),
            produced: self.0.produced.load(Ordering::SeqCst),
        })
    }
}

#[micro::handler]
impl NodeInfo for Node {
    async fn whoami(&self) -> micro::Result<u32> {
        Ok(std::process::id())
    }

    async fn sleep(&self, ms: u64) -> micro::Result<u32> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(std::process::id())
    }
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let service = Service::new("node")
        .handler(Node)
        .handler(StreamNode::default())
        .start()
        .await?;
    println!("READY {}", service.node().address);
    std::io::stdout().flush()?;
    micro::shutdown_signal().await;
    service.stop().await
}
