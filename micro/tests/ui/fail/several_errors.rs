// Every mistake in one trait is reported at once, each at its own span.
#[micro::service(version = "")]
trait Greeter {
    fn a(&self) -> micro::Result<()>;
    async fn b(self) -> micro::Result<()>;
    async fn c(&self, _: u8) -> micro::Result<()>;
}

fn main() {}
