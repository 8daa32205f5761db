//! A test service process: serves `NodeInfo` under the name `node`, prints
//! `READY <address>` once registered, and exits gracefully on SIGINT/SIGTERM.
//! Configured by the `MICRO_*` environment variables.

use micro::prelude::*;
use micro_tests::NodeInfo;
use std::io::Write;
use std::time::Duration;

struct Node;

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
    let service = Service::new("node").handler(Node).start().await?;
    println!("READY {}", service.node().address);
    std::io::stdout().flush()?;
    micro::shutdown_signal().await;
    service.stop().await
}
