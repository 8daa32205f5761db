struct NotSerde;

#[micro::service]
trait Greeter {
    async fn hello(&self) -> micro::Result<NotSerde>;
}

fn main() {}
