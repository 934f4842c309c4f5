//! `funcscale-worker`: argument parsing and wiring; the logic lives in the library.

use clap::Parser;
use funcscale_worker::cli::{Cli, execute, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    execute(Cli::parse()).await
}
