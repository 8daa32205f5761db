#[micro::service]
trait Greeter {
    async fn hello<T>(&self, value: T) -> micro::Result<()>;
}

fn main() {}
