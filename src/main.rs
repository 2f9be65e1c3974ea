mod cli;

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
    /// Run the operator: reconcile the custom resources against the ledger
    /// and serve the HTTP API (in a cluster, or with a kubeconfig).
    Run(cli::RunArgs),
    /// Run without a cluster: manifests from a folder, an embedded ledger,
    /// the HTTP API.
    Standalone(cli::StandaloneArgs),
    /// Measure the ledger's hot path here and print one JSON line per backend.
    Bench(credit_operator::bench::BenchArgs),
    /// Check a folder of manifests offline: schema and rules per object,
    /// then references and allocation across objects.
    Validate(cli::ValidateArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Crd => cli::crd(),
        Cmd::Run(args) => cli::run(args),
        Cmd::Standalone(args) => cli::standalone(args),
        Cmd::Bench(args) => cli::bench(args),
        Cmd::Validate(args) => cli::validate(args),
    }
}
