#[micro::subscriber]
async fn no_topic(_event: u64) -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "user/created", queue = "mail er")]
async fn bad_names(_event: u64) -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "a", group = "b")]
async fn unknown_key(_event: u64) -> micro::Result<()> {
    Ok(())
}

#[micro::subscriber(topic = "a")]
struct NotAFunction;

fn main() {}
