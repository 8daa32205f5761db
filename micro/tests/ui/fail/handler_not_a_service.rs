#[derive(Debug)]
struct MyGreeter;

#[micro::handler]
impl Clone for MyGreeter {
    fn clone(&self) -> Self {
        MyGreeter
    }
}

fn main() {}
