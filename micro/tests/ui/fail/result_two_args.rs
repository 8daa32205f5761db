#[micro::service]
trait Greeter {
    async fn hello(&self) -> Result<String, std::io::Error>;
}

fn main() {}
