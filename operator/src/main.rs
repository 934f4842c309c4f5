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
        Command::Simulate(args) => print!("{}", cli::simulate(&args)),
        Command::Crd => print!("{}", funcscale_operator::crd::crds_yaml()),
        Command::Capacity(args) => match cli::capacity(&args) {
            Ok(out) => print!("{out}"),
            Err(e) => {
                let mut cmd = Cli::command();
                let sub = cmd
                    .find_subcommand_mut("capacity")
                    .expect("capacity subcommand");
                sub.error(ErrorKind::ValueValidation, e).exit()
            }
        },
    }
}
