#[micro::service]
trait Greeter {
    async fn hello(&self) -> micro::Result<()>;
}

struct MyGreeter;

#[micro::handler(name = "greeter")]
impl Greeter for MyGreeter {
    async fn hello(&self) -> micro::Result<()> {
        Ok(())
    }
}

fn main() {}
