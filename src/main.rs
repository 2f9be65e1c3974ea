use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Declarative credit allocation for AI platforms.
#[derive(Parser)]
#[command(name = "credit-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the four CustomResourceDefinitions as YAML (what crds/ holds).
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Crd => match credit_operator::crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
