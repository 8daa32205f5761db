#[micro::service]
trait Greeter {
    async fn hello(&self, name: &str) -> micro::Result<String>;
}

fn main() {}
