#[micro::service]
trait Greeter {
    async fn hello(&self, name: String);
}

fn main() {}
