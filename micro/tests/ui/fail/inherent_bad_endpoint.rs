struct Counter;

#[micro::handler]
impl Counter {
    pub async fn connect(url: String) -> micro::Result<Self> {
        let _ = url;
        Ok(Counter)
    }
}

fn main() {}
