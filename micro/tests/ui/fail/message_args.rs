#[micro::message(rename_all = "camelCase")]
struct Greeting {
    text: String,
}

fn main() {}
