#[micro::service]
trait Greeter {
    async fn say_hello(&self) -> micro::Result<()>;
    #[allow(non_snake_case)]
    async fn sayHello(&self) -> micro::Result<()>;
}

fn main() {}
