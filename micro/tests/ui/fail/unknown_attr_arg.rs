#[micro::service(nme = "greeter")]
trait Greeter {
    async fn hello(&self) -> micro::Result<()>;
}

fn main() {}
