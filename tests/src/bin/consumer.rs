//! A test consumer process: consumes a topic of a durable event stream in a
//! consumer group, appends the id of each event's [`Numbered`] as a line to a
//! file, then acks it. A process killed between the write and the ack leaves a
//! line for an event that will be delivered again (a duplicate), never an event
//! acked but not written.
//!
//! Prints `READY <group>` once its consumer is created. Configured by the
//! environment:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `MICRO_EVENTS`, `MICRO_EVENTS_ADDRESS` | the backend (`nats` or `redis`), see `micro::events::from_env` |
//! | `MICRO_TEST_TOPIC` | the topic (required) |
//! | `MICRO_TEST_GROUP` | the consumer group (required) |
//! | `MICRO_TEST_OUT` | the file to append the ids to (required) |
//! | `MICRO_TEST_ACK_WAIT_MS` | the consumer's `ack_wait` (default 2000) |
//! | `MICRO_TEST_HANDLE_MS` | how long handling takes after the write (default 0) |
//! | `MICRO_TEST_MAX_ATTEMPTS` | the consumer's `max_attempts` (default 1000: an event held by many killed consumers in a row is not dead-lettered) |
//!
//! A new group starts at the earliest event.

use micro::events::{self, ConsumeOptions, StartAt};
use micro::prelude::*;
use micro_tests::{append_id, Numbered};
use std::io::Write;
use std::time::Duration;

fn required(name: &str) -> micro::Result<String> {
    std::env::var(name)
        .map_err(|_| Error::bad_request("micro-test-consumer", format!("{name} is not set")))
}

fn millis(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let topic = required("MICRO_TEST_TOPIC")?;
    let group = required("MICRO_TEST_GROUP")?;
    let out = required("MICRO_TEST_OUT")?;
    let ack_wait = millis("MICRO_TEST_ACK_WAIT_MS", 2000);
    let handle = millis("MICRO_TEST_HANDLE_MS", 0);
    let max_attempts: u32 = std::env::var("MICRO_TEST_MAX_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)?;

    let events = events::from_env().await?;
    let opts = ConsumeOptions::new(group.as_str())
        .start(StartAt::Earliest)
        .ack_wait(ack_wait)
        .max_attempts(max_attempts);
    let mut consumer = events.consume(&topic, opts).await?;
    println!("READY {group}");
    std::io::stdout().flush()?;

    let work = async {
        loop {
            let delivery = match consumer.next_delivery().await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Err(Error::internal("micro-test-consumer", "the consumer ended"))
                }
                Err(e) => {
                    // The stream goes on after an error.
                    eprintln!("micro-test-consumer {}: {e}", std::process::id());
                    continue;
                }
            };
            let msg: Numbered = delivery.event().decode()?;
            append_id(&file, msg.id)?;
            if !handle.is_zero() {
                tokio::time::sleep(handle).await;
            }
            if let Err(e) = delivery.ack().await {
                eprintln!(
                    "micro-test-consumer {}: ack of {}: {e}",
                    std::process::id(),
                    msg.id
                );
            }
        }
    };
    tokio::select! {
        r = work => r,
        _ = micro::shutdown_signal() => Ok(()),
    }
}
