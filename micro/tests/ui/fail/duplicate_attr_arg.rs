#[micro::service(name = "greeter", name = "greeter2")]
trait Greeter {
    async fn hello(&self) -> micro::Result<()>;
}

fn main() {}
