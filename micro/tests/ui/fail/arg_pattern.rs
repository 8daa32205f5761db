#[micro::service]
trait Calc {
    async fn add(&self, (a, b): (i32, i32)) -> micro::Result<i32> {
        Ok(a + b)
    }
}

fn main() {}
