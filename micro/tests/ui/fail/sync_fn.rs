#[micro::service]
trait Greeter {
    fn hello(&self) -> micro::Result<String>;
}

fn main() {}
