//! Streaming endpoints of every shape, with `Streaming` written in each
//! accepted way, in a `#[service]` trait and an inherent `#[handler]`.

use micro::prelude::*;
use micro::server::Handler;
use std::sync::Arc;

#[micro::message]
pub struct Line {
    pub text: String,
}

#[micro::service]
pub trait Streams {
    /// Server streaming, no argument.
    async fn numbers(&self) -> micro::Result<Streaming<u32>>;
    /// Server streaming, several arguments.
    async fn range(&self, from: u32, to: u32) -> micro::Result<micro::Streaming<u32>>;
    /// Client streaming.
    async fn sum(&self, nums: ::micro::Streaming<i64>) -> micro::Result<i64>;
    /// Bidirectional.
    async fn chat(&self, lines: Streaming<Line>) -> Result<Streaming<Line>>;
    /// Unary.
    async fn ping(&self) -> micro::Result<()>;
}

struct MyStreams;

#[micro::handler]
impl Streams for MyStreams {
    async fn numbers(&self) -> micro::Result<Streaming<u32>> {
        Ok(Streaming::iter([1, 2]))
    }
    async fn range(&self, from: u32, to: u32) -> micro::Result<micro::Streaming<u32>> {
        Ok(Streaming::iter(from..to))
    }
    async fn sum(&self, nums: ::micro::Streaming<i64>) -> micro::Result<i64> {
        Ok(nums.collect_all().await?.into_iter().sum())
    }
    async fn chat(&self, lines: Streaming<Line>) -> Result<Streaming<Line>> {
        Ok(lines)
    }
    async fn ping(&self) -> micro::Result<()> {
        Ok(())
    }
}

struct Echo;

#[micro::handler]
impl Echo {
    /// Bidirectional, in an inherent impl.
    pub async fn echo(&self, items: Streaming<String>) -> micro::Result<Streaming<String>> {
        Ok(items)
    }
    /// Client streaming, in an inherent impl.
    pub async fn count(&self, items: Streaming<Vec<u8>>) -> micro::Result<usize> {
        Ok(items.collect_all().await?.len())
    }
}

fn main() {
    let routes = Handler::routes(Arc::new(MyStreams));
    let streams: Vec<Option<&str>> = routes
        .iter()
        .map(|r| r.endpoint.metadata.get("stream").map(String::as_str))
        .collect();
    assert_eq!(
        streams,
        [
            Some("server"),
            Some("server"),
            Some("client"),
            Some("bidi"),
            None
        ]
    );
    let routes = Handler::routes(Arc::new(Echo));
    assert_eq!(routes.len(), 2);
    fn _client_api(client: &micro::Client) {
        let streams = StreamsClient::new(client);
        let _numbers = streams.numbers();
        let _range = streams.range(1, 3);
        let _sum = streams.sum(Streaming::iter(vec![1, 2]));
        let _chat = streams.chat(Streaming::empty());
        let echo = EchoClient::new(client);
        let _echo = echo.echo(Streaming::iter(vec![String::new()]));
        let _count = echo.count(Streaming::empty());
    }
}
