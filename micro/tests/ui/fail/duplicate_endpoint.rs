#[micro::service]
trait Greeter {
    async fn hello(&self) -> micro::Result<()>;
    #[micro(name = "Hello")]
    async fn hello_again(&self) -> micro::Result<()>;
}

fn main() {}
