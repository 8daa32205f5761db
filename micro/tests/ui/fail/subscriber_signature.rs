#[micro::message]
pub struct UserCreated {
    pub id: u64,
}

#[micro::subscriber(topic = "a")]
fn not_async(_event: UserCreated) -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "b")]
async fn two_args(_event: UserCreated, _extra: u8) -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "c")]
async fn no_args() -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "d")]
async fn not_result(_event: UserCreated) -> bool {
    true
}

#[micro::subscriber(topic = "e")]
async fn generic<T>(_event: T) -> micro::Result<()> {
    Ok(())
}

fn main() {}
