use micro::Streaming;

#[micro::service]
trait Stats {
    async fn sum(&self, nums: Streaming) -> micro::Result<i64>;
    async fn pairs(&self) -> micro::Result<Streaming<u8, u8>>;
}

fn main() {}
