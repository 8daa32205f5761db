#[micro::handler]
async fn hello() -> micro::Result<()> {
    Ok(())
}

fn main() {}
