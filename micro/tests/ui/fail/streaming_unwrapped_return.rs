#[micro::service]
trait Counter {
    async fn countdown(&self, from: u32) -> micro::Streaming<u32>;
}

fn main() {}
