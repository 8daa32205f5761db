#[micro::service]
trait Greeter {
    async fn hello(&mut self) -> micro::Result<String>;
}

fn main() {}
