//! `kubectl credits`: install with `cargo install --path . --bin kubectl-credits`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use credit_operator::plugin::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let options = kube::config::KubeConfigOptions {
            context: cli.context.clone(),
            ..Default::default()
        };
        let config = match &cli.kubeconfig {
            Some(path) => {
                let loaded = match kube::config::Kubeconfig::read_from(path) {
                    Ok(k) => kube::Config::from_custom_kubeconfig(k, &options).await,
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                Err(_) => match kube::Config::infer().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: no kubeconfig: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            },
        };
        let namespace = cli
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = match kube::Client::try_from(config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let colour = std::io::stdout().is_terminal();
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut out = std::io::stdout();
        match run(cli, client, &namespace, colour, &mut input, &mut out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
