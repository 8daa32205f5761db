struct Mailer;

impl Mailer {
    #[micro::subscriber(topic = "a")]
    async fn forgot_the_impl_attribute(&self, _event: u64) -> micro::Result<()> {
        Ok(())
    }
}

struct Audit;

#[micro::subscriber]
impl Audit {
    #[subscriber(topic = "b")]
    async fn by_value(self, _event: u64) -> micro::Result<()> {
        Ok(())
    }
}

struct Empty;

#[micro::subscriber]
impl Empty {
    async fn not_marked(&self, _event: u64) -> micro::Result<()> {
        Ok(())
    }
}

fn main() {}
