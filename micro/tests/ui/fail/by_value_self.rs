#[micro::service]
trait Greeter {
    async fn hello(self) -> micro::Result<String>;
}

fn main() {}
