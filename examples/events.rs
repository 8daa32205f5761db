//! Durable events on the embedded log: an order is handled, one fails once
//! and succeeds on its retry, one keeps failing and lands in the dead-letter
//! topic.
//!
//! `cargo run --example events`
//!
//! The log lives in `MICRO_EVENTS_DIR` (default `./.micro/events`). The same
//! code runs on NATS JetStream with `MICRO_EVENTS=nats`, or on Redis Streams
//! with `MICRO_EVENTS=redis` (`MICRO_EVENTS_ADDRESS` names the server when it
//! is not on its default local port).

use micro::events::{self, ConsumeOptions, StartAt, DEAD_ATTEMPTS_KEY, DEAD_ERROR_KEY};
use micro::prelude::*;
use std::time::Duration;

#[micro::message]
#[derive(Debug, Clone)]
struct OrderPlaced {
    id: u64,
    item: String,
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let events = events::from_env().await?;
    println!("events backend: {}", events.name());

    // Consumer groups start at the end of the topic the first time and
    // resume where they left off afterwards.
    let opts = ConsumeOptions::new("billing")
        .start(StartAt::Latest)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(200));
    let mut billing = events.consume("orders", opts).await?;
    let mut dead = events
        .consume(
            "orders.dead",
            ConsumeOptions::new("ops").start(StartAt::Latest),
        )
        .await?;

    let orders = [(1, "book"), (2, "lamp"), (3, "piano")];
    let run = rand_run();
    for (n, item) in orders {
        let order = OrderPlaced {
            id: run * 10 + n,
            item: item.into(),
        };
        let id = events::publish_typed(&*events, "orders", &order).await?;
        println!("published order {} ({item}) as event {id}", order.id);
    }

    // Bill orders and watch the dead letters until two orders are billed
    // and one is dead-lettered.
    let work = async {
        let (mut billed, mut dead_lettered) = (0, 0);
        while billed < 2 || dead_lettered < 1 {
            micro::tokio::select! {
                delivery = billing.next_delivery() => {
                    let Some(delivery) = delivery? else { break };
                    let order: OrderPlaced = delivery.event().decode()?;
                    let attempt = delivery.event().attempt;
                    match (order.id % 10, attempt) {
                        (2, 1) => {
                            println!("order {}: payment service timed out (attempt {attempt}), retrying", order.id);
                            delivery.nack_with("payment service timed out").await?;
                        }
                        (3, _) => {
                            println!("order {}: card declined (attempt {attempt})", order.id);
                            delivery.nack_with("card declined").await?;
                        }
                        _ => {
                            println!("order {}: billed {} (attempt {attempt})", order.id, order.item);
                            delivery.ack().await?;
                            billed += 1;
                        }
                    }
                }
                letter = dead.next_delivery() => {
                    let Some(letter) = letter? else { break };
                    let order: OrderPlaced = letter.event().decode()?;
                    let md = &letter.event().metadata;
                    println!(
                        "dead letter: order {} after {} attempts: {}",
                        order.id,
                        md.get(DEAD_ATTEMPTS_KEY).map_or("?", String::as_str),
                        md.get(DEAD_ERROR_KEY).map_or("?", String::as_str)
                    );
                    letter.ack().await?;
                    dead_lettered += 1;
                }
            }
        }
        Ok::<_, Error>(())
    };
    micro::tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| Error::timeout("events", "the example did not finish within 30 s"))?
}

/// A number for this run, so that reruns on a kept log are told apart.
fn rand_run() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 100_000)
}
