#[micro::service]
trait Greeter {
    async fn hello(name: String) -> micro::Result<String>;
}

fn main() {}
