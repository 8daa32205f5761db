struct NotSerde;

#[micro::subscriber(topic = "a")]
async fn on_it(_event: NotSerde) -> micro::Result<()> {
    Ok(())
}

fn main() {}
