#[micro::main]
fn main() {}
