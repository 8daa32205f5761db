#[micro::service]
trait Greeter {
    async fn new(&self) -> micro::Result<()>;
}

fn main() {}
