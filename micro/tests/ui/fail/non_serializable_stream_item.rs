use micro::Streaming;

struct NotSerde;

#[micro::service]
trait Stats {
    async fn sum(&self, nums: Streaming<NotSerde>) -> micro::Result<i64>;
}

fn main() {}
