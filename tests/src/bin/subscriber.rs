//! A test subscriber process: a service subscribed to one topic, alone
//! (broadcast) or in a queue group, that appends the id of each message it
//! handles as a line to a file, then acknowledges it. A process killed between
//! the write and the ack leaves a line for a message that will be delivered
//! again (a duplicate), never a message acknowledged but not written.
//!
//! Prints `READY <address>` once subscribed, and exits gracefully on
//! SIGINT/SIGTERM. Configured by the environment:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `MICRO_TEST_TOPIC` | the topic (required) |
//! | `MICRO_TEST_QUEUE` | the queue group; unset or empty: broadcast |
//! | `MICRO_TEST_OUT` | the file to append the ids to (required) |
//! | `MICRO_TEST_HANDLE_MS` | how long handling takes after the write (default 0) |
//! | `MICRO_*` | the registry and service settings, as for any service |
//!
//! With `MICRO_BROKER` unset it uses the native broker with its listener on
//! `127.0.0.1`.

use micro::broker::{topic_handler, Broker, NativeBroker};
use micro::prelude::*;
use micro_tests::{append_id, Numbered};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn required(name: &str) -> micro::Result<String> {
    std::env::var(name)
        .map_err(|_| Error::bad_request("micro-test-subscriber", format!("{name} is not set")))
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let topic = required("MICRO_TEST_TOPIC")?;
    let queue = std::env::var("MICRO_TEST_QUEUE")
        .ok()
        .filter(|q| !q.is_empty());
    let out = required("MICRO_TEST_OUT")?;
    let handle_ms: u64 = std::env::var("MICRO_TEST_HANDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)?,
    );

    let handler = topic_handler(&topic, queue.as_deref(), move |msg: Numbered| {
        let file = Arc::clone(&file);
        async move {
            append_id(&file, msg.id)?;
            if handle_ms > 0 {
                tokio::time::sleep(Duration::from_millis(handle_ms)).await;
            }
            Ok(())
        }
    });

    let registry = micro::registry::from_env()?;
    let mut service = Service::new("subscriber")
        .registry(Arc::clone(&registry))
        .subscribe(handler);
    // The native broker's listener on loopback, like the service's; a broker
    // named by MICRO_BROKER otherwise.
    let own_broker = if std::env::var_os("MICRO_BROKER").is_none() {
        let broker: Arc<dyn Broker> = Arc::new(NativeBroker::with_bind(registry, "127.0.0.1:0")?);
        service = service.broker(Arc::clone(&broker));
        Some(broker)
    } else {
        None
    };
    let service = service.start().await?;
    println!("READY {}", service.node().address);
    std::io::stdout().flush()?;
    micro::shutdown_signal().await;
    service.stop().await?;
    if let Some(broker) = own_broker {
        broker.shutdown(Duration::from_secs(10)).await;
    }
    Ok(())
}
