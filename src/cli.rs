//! The subcommands of `credit-operator`: their arguments and one
//! function each. `main` only parses and dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use credit_operator::clock::{Clock, FileClock, SystemClock};
use credit_operator::manifests::Severity;

/// `credit-operator run`.
#[derive(Args)]
pub struct RunArgs {
    /// The ledger: sqlite://PATH or postgres://…
    #[arg(
        long,
        default_value = "sqlite:///var/lib/credit-operator/credits.db",
        env = "CREDITS_LEDGER"
    )]
    ledger: String,
    /// Address of the HTTP API. Without --token-file only loopback
    /// addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Bearer tokens, one `TOKEN ROLE [NAME]` per line.
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes_auth")]
    token_file: Option<PathBuf>,
    /// Authenticate callers with Kubernetes TokenReview and authorise
    /// them with SubjectAccessReview against the custom resources.
    #[arg(long)]
    kubernetes_auth: bool,
    /// With --kubernetes-auth: the audience callers' tokens must be
    /// issued for (a projected ServiceAccount token, or `kubectl create
    /// token SA --audience …`). Tokens for the API server are refused.
    #[arg(long, default_value = credit_operator::api::kube_auth::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// A status is at most this many seconds behind the ledger.
    #[arg(long, default_value = "10")]
    status_staleness_seconds: u64,
    /// Status writes per second, in total, however fast usage arrives.
    #[arg(long, default_value = "5")]
    status_writes_per_second: f64,
    /// Apply the CRDs at start-up (needs RBAC on customresourcedefinitions).
    #[arg(long)]
    apply_crds: bool,
    /// Compete for a Lease before writing (several replicas on
    /// PostgreSQL). Needs POD_NAME and POD_NAMESPACE.
    #[arg(long)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "credit-operator-leader")]
    lease_name: String,
    /// Seconds a Lease lasts without renewal.
    #[arg(long, default_value = "15")]
    lease_seconds: u64,
}

/// `credit-operator standalone`.
#[derive(Args)]
pub struct StandaloneArgs {
    /// Folder of manifests (YAML, several documents per file, nested
    /// folders); re-read while running.
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// The ledger: sqlite://PATH or postgres://…
    #[arg(long, default_value = "sqlite://./credits.db", env = "CREDITS_LEDGER")]
    ledger: String,
    /// Address of the HTTP API. Without --token-file only loopback
    /// addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Bearer tokens, one `TOKEN ROLE [NAME]` per line (roles:
    /// gateway, admin).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// How often to look for manifest changes and due cycle boundaries.
    #[arg(long, default_value = "1000", value_name = "MS")]
    poll_interval_ms: u64,
    /// How long a changed manifest file must stay unchanged before it
    /// is read (a file being written in place is never half-applied).
    #[arg(long, default_value = "1000", value_name = "MS")]
    settle_ms: u64,
    /// Read the current time from this file (one RFC 3339 time) instead
    /// of the system clock: for tests that move time.
    #[arg(long, value_name = "FILE", hide = true, env = "CREDITS_CLOCK_FILE")]
    clock_file: Option<PathBuf>,
}

/// `credit-operator validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// The folder to check.
    dir: PathBuf,
    /// Fail on warnings (over-distribution, over-allocation) too.
    #[arg(long)]
    strict: bool,
}

/// Prints the four CustomResourceDefinitions as YAML.
pub fn crd() -> ExitCode {
    match credit_operator::crd::crds_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot render the CRDs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the operator.
pub fn run(args: RunArgs) -> ExitCode {
    let RunArgs {
        ledger,
        listen,
        token_file,
        status_staleness_seconds,
        status_writes_per_second,
        apply_crds,
        leader_election,
        lease_name,
        lease_seconds,
        kubernetes_auth,
        token_audience,
    } = args;
    init_tracing();
    let tokens = match load_tokens(token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if !status_writes_per_second.is_finite() || status_writes_per_second <= 0.0 || status_staleness_seconds == 0 {
        eprintln!("error: --status-writes-per-second and --status-staleness-seconds must be more than 0");
        return ExitCode::from(2);
    }
    let leader_election = if leader_election {
        let (Ok(pod), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else {
            eprintln!("error: --leader-election needs POD_NAME and POD_NAMESPACE (the chart sets them)");
            return ExitCode::from(2);
        };
        Some(credit_operator::operator::run::LeaderElection {
            namespace,
            lease: lease_name,
            pod,
            duration: Duration::from_secs(lease_seconds.max(3)),
        })
    } else {
        None
    };
    let options = credit_operator::operator::run::RunOptions {
        ledger,
        listen,
        tokens,
        kubernetes_auth,
        token_audience,
        operator: credit_operator::operator::OperatorOptions {
            staleness: Duration::from_secs(status_staleness_seconds),
            status_writes_per_second,
        },
        apply_crds,
        leader_election,
    };
    serve(credit_operator::operator::run::run(options))
}

/// Runs without a cluster.
pub fn standalone(args: StandaloneArgs) -> ExitCode {
    let StandaloneArgs {
        manifests,
        ledger,
        listen,
        token_file,
        poll_interval_ms,
        settle_ms,
        clock_file,
    } = args;
    init_tracing();
    let tokens = match load_tokens(token_file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let clock: Arc<dyn Clock> = match clock_file {
        None => Arc::new(SystemClock),
        Some(f) => match FileClock::new(f) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                eprintln!("error: --clock-file {e}");
                return ExitCode::from(2);
            }
        },
    };
    let options = credit_operator::standalone::Options {
        manifests,
        ledger,
        listen,
        tokens,
        poll_interval: Duration::from_millis(poll_interval_ms.max(10)),
        settle: Duration::from_millis(settle_ms.min(60_000)),
        clock,
    };
    serve(credit_operator::standalone::run(options))
}

/// Measures the ledger; one JSON line per backend.
pub fn bench(args: credit_operator::bench::BenchArgs) -> ExitCode {
    credit_operator::bench::main(args)
}

/// Checks a folder of manifests offline.
pub fn validate(args: ValidateArgs) -> ExitCode {
    let ValidateArgs { dir, strict } = args;
    let problems = match credit_operator::validate::validate(&dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    for p in &problems {
        println!("{p}");
    }
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = problems.len() - errors;
    eprintln!("{errors} errors, {warnings} warnings");
    if errors > 0 || (strict && warnings > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `--listen`: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (`localhost:8080`
/// is the loopback address, IPv4 first).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not HOST:PORT (such as 127.0.0.1:8080 or localhost:8080)"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (0-65535)"))?;
    use std::net::ToSocketAddrs;
    let mut addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addresses.sort_by_key(|a| !a.is_ipv4());
    addresses
        .into_iter()
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// Reads `--token-file`; a bad file is a usage error (exit 2).
fn load_tokens(file: Option<PathBuf>) -> Result<Option<credit_operator::api::auth::Tokens>, ExitCode> {
    file.map(|f| credit_operator::api::auth::Tokens::load(&f))
        .transpose()
        .map_err(|e| {
            eprintln!("error: --token-file {e}");
            ExitCode::from(2)
        })
}

/// Threads that serve HTTP: `TOKIO_WORKER_THREADS` when set, else one
/// less than the cores this process may use (at least one). The ledger's
/// writer and commit threads take the rest: at full load they keep about a
/// core busy, and with a worker per core the three compete for every core,
/// which on two cores tripled authorize's p99 (docs/performance.md).
fn http_workers() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}

/// Runs a long-lived process on a multi-threaded runtime.
fn serve<E: std::fmt::Display>(process: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_workers())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(process) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
