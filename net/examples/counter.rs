//! Embedding the client: call the example counter of a node started with a plain
//! `statefun serve` in this directory.
//!
//! `cargo run -p statefun-net --example counter -- alice 5`

use statefun_core::{Address, TypeName, TypedValue};
use statefun_net::client::{Client, ClientConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (id, delta) = (args.next().unwrap_or_else(|| "alice".into()), args.next().unwrap_or_else(|| "1".into()));
    let client = Client::connect(ClientConfig::dev("127.0.0.1:8071".parse()?, "data".as_ref())?).await?;
    let counter = Address::new(TypeName::parse("example/counter")?, &id)?;
    let total = client.call(&counter, &TypedValue::new(TypeName::parse("example/delta")?, delta)).await?;
    #[allow(clippy::print_stdout)]
    {
        println!("{id}: {}", total.as_text()?);
    }
    Ok(())
}
