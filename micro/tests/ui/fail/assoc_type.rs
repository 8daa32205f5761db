#[micro::service]
trait Greeter {
    type Name;
    async fn hello(&self) -> micro::Result<()>;
}

fn main() {}
