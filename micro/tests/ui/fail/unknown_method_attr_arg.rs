#[micro::service]
trait Greeter {
    #[micro(rename = "Hi")]
    async fn hello(&self) -> micro::Result<()>;
}

fn main() {}
