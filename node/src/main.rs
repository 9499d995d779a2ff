//! `btcfi-node`: the validator daemon of the btcfi bridge.
use clap::Parser;

/// The btcfi bridge validator daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> eyre::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
