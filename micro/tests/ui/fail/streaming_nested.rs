use micro::Streaming;

#[micro::service]
trait Stats {
    async fn all(&self, streams: Vec<Streaming<i64>>) -> micro::Result<i64>;
    async fn maybe(&self) -> micro::Result<Option<Streaming<i64>>>;
    async fn nested(&self, s: Streaming<Streaming<i64>>) -> micro::Result<()>;
}

struct Counter;

#[micro::handler]
impl Counter {
    pub async fn pair(&self) -> micro::Result<(u8, micro::Streaming<u8>)> {
        unimplemented!()
    }
}

fn main() {}
