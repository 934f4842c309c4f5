//! `funcscale-sim`: arguments in, report out ([`funcscale_sim::cli`]).

use clap::{CommandFactory, Parser, error::ErrorKind};
use funcscale_sim::cli::{Args, simulate};

fn main() {
    let args = Args::parse();
    match simulate(&args) {
        Ok(out) => print!("{out}"),
        Err(e) => Args::command().error(ErrorKind::ValueValidation, e).exit(),
    }
}
