use clap::{CommandFactory, Parser, error::ErrorKind};
use funcscale_operator::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            if let Err(e) = funcscale_operator::cli_run::block_on(*args) {
                eprintln!("funcscale-operator: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Crd => print!("{}", funcscale_operator::crd::crds_yaml()),
        Command::Capacity(args) => or_usage_error("capacity", cli::capacity(&args)),
    }
}

/// Print a subcommand's output, or its usage error the way clap reports one (exit code 2).
fn or_usage_error(subcommand: &str, result: Result<String, cli::UsageError>) {
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            let mut cmd = Cli::command();
            let sub = cmd
                .find_subcommand_mut(subcommand)
                .expect("a subcommand of the CLI");
            sub.error(ErrorKind::ValueValidation, e).exit()
        }
    }
}
