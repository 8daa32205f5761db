//! Streaming endpoints, all three shapes, against one service: a countdown
//! (server streaming), a sum (client streaming) and a chat (bidirectional).
//!
//! `cargo run --example streaming`

use micro::prelude::*;
use std::time::Duration;

/// One chat line.
#[micro::message]
#[derive(Debug, Clone)]
struct Line {
    from: String,
    text: String,
}

#[micro::service(name = "streams")]
trait Streams {
    /// Counts down from `from` to 1, one number every `every_ms`.
    async fn countdown(&self, from: u32, every_ms: u64) -> micro::Result<Streaming<u32>>;
    /// Adds up every number the caller sends.
    async fn sum(&self, nums: Streaming<i64>) -> micro::Result<i64>;
    /// Answers each line as it arrives.
    async fn chat(&self, inbound: Streaming<Line>) -> micro::Result<Streaming<Line>>;
}

struct MyStreams;

#[micro::handler]
impl Streams for MyStreams {
    async fn countdown(&self, from: u32, every_ms: u64) -> micro::Result<Streaming<u32>> {
        // A handler can produce its output from a channel fed by a task...
        let (tx, numbers) = Streaming::channel(1);
        micro::tokio::spawn(async move {
            for n in (1..=from).rev() {
                if tx.send(n).await.is_err() {
                    return; // the caller went away
                }
                micro::tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
        });
        Ok(numbers)
    }

    async fn sum(&self, mut nums: Streaming<i64>) -> micro::Result<i64> {
        let mut total = 0;
        while let Some(n) = nums.message().await? {
            total += n;
        }
        Ok(total)
    }

    async fn chat(&self, inbound: Streaming<Line>) -> micro::Result<Streaming<Line>> {
        // ... or from any `Stream`, here by mapping the inbound one.
        Ok(Streaming::try_new(inbound.map(|line| {
            let line = line?;
            Ok(Line {
                from: "server".into(),
                text: format!("{} said {:?}", line.from, line.text),
            })
        })))
    }
}

#[micro::main]
async fn main() -> micro::Result<()> {
    let service = Service::new("streams").handler(MyStreams).start().await?;
    let client = StreamsClient::new(&service.client());

    let mut countdown = client.countdown(3, 100).await?;
    while let Some(n) = countdown.message().await? {
        println!("countdown: {n}");
    }

    let total = client.sum(Streaming::iter(1..=100)).await?;
    println!("sum: {total}");

    let (lines, outbound) = Streaming::channel(8);
    let mut replies = client.chat(outbound).await?;
    for text in ["hello", "how are you?"] {
        lines
            .send(Line {
                from: "alice".into(),
                text: text.into(),
            })
            .await?;
        if let Some(reply) = replies.message().await? {
            println!("chat: {}", reply.text);
        }
    }
    drop(lines); // ends the chat: the server's stream ends too
    assert!(replies.message().await?.is_none());

    service.stop().await
}
