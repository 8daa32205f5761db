struct NotSerde;

#[micro::service]
trait Greeter {
    async fn hello(&self, name: String, who: NotSerde) -> micro::Result<String>;
}

fn main() {}
