#[micro::service]
struct Greeter;

fn main() {}
