#[micro::service]
trait Stats {
    async fn sum(&self, nums: micro::Streaming<i64>, scale: i64) -> micro::Result<i64>;
}

fn main() {}
