use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use credit_operator::clock::{Clock, FileClock, SystemClock};
use credit_operator::manifests::Severity;

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
    Run {
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
    },
    /// Run without a cluster: manifests from a folder, an embedded ledger,
    /// the HTTP API.
    Standalone {
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
    },
    /// Measure the ledger's hot path here and print one JSON line per backend.
    Bench {
        /// `sqlite`, `postgres` or `all`.
        #[arg(long, default_value = "sqlite")]
        backend: String,
        /// PostgreSQL server for `--backend postgres` (a fresh schema is
        /// created and dropped).
        #[arg(
            long,
            env = "CREDITS_BENCH_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        postgres_url: String,
        /// Usage events ingested through group commit.
        #[arg(long, default_value = "200000")]
        events: u64,
        /// Events committed one transaction each (the baseline).
        #[arg(long, default_value = "3000")]
        naive_events: u64,
        /// Members during ingest and authorize.
        #[arg(long, default_value = "100000")]
        members: u64,
        /// Members at the reset and memory measurement.
        #[arg(long, default_value = "1000000")]
        reset_members: u64,
        /// Seconds of HTTP load.
        #[arg(long, default_value = "5")]
        http_seconds: f64,
        /// Keep-alive HTTP connections.
        #[arg(long, default_value = "16")]
        http_connections: usize,
        /// Unique-key events measured after the in-memory key window is full.
        #[arg(long, default_value = "1000000")]
        key_events: u64,
    },
    /// Check a folder of manifests offline: schema and rules per object,
    /// then references and allocation across objects.
    Validate {
        /// The folder to check.
        dir: PathBuf,
        /// Fail on warnings (over-distribution, over-allocation) too.
        #[arg(long)]
        strict: bool,
    },
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
        Cmd::Validate { dir, strict } => validate(&dir, strict),
        Cmd::Run {
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
        } => {
            init_tracing();
            let tokens = match load_tokens(token_file) {
                Ok(t) => t,
                Err(code) => return code,
            };
            if !status_writes_per_second.is_finite() || status_writes_per_second <= 0.0 || status_staleness_seconds == 0
            {
                eprintln!("error: --status-writes-per-second and --status-staleness-seconds must be more than 0");
                return ExitCode::from(2);
            }
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
                leader_election: None,
            };
            let mut options = options;
            if leader_election {
                let (Ok(pod), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE")) else {
                    eprintln!("error: --leader-election needs POD_NAME and POD_NAMESPACE (the chart sets them)");
                    return ExitCode::from(2);
                };
                options.leader_election = Some(credit_operator::operator::run::LeaderElection {
                    namespace,
                    lease: lease_name,
                    pod,
                    duration: Duration::from_secs(lease_seconds.max(3)),
                });
            }
            serve(credit_operator::operator::run::run(options))
        }
        Cmd::Bench {
            backend,
            postgres_url,
            events,
            naive_events,
            members,
            reset_members,
            http_seconds,
            http_connections,
            key_events,
        } => {
            let backends: Vec<&'static str> = match backend.as_str() {
                "all" => vec!["sqlite", "postgres"],
                "sqlite" => vec!["sqlite"],
                "postgres" => vec!["postgres"],
                other => {
                    eprintln!("error: --backend must be sqlite, postgres or all, not {other:?}");
                    return ExitCode::from(2);
                }
            };
            for b in backends {
                match bench_one(
                    b,
                    &postgres_url,
                    events,
                    naive_events,
                    members,
                    reset_members.max(members),
                    http_seconds,
                    http_connections,
                    key_events,
                ) {
                    Ok(line) => println!("{line}"),
                    Err(e) => {
                        eprintln!("error: {b} bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Standalone {
            manifests,
            ledger,
            listen,
            token_file,
            poll_interval_ms,
            settle_ms,
            clock_file,
        } => {
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

/// Runs a long-lived process on a multi-threaded runtime.
fn serve<E: std::fmt::Display>(process: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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

#[allow(clippy::too_many_arguments)]
fn bench_one(
    backend: &'static str,
    postgres_url: &str,
    events: u64,
    naive_events: u64,
    members: u64,
    reset_members: u64,
    http_seconds: f64,
    http_connections: usize,
    key_events: u64,
) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("credits-bench-{}", std::process::id()));
    let mut schema = None;
    let ledger_url = if backend == "sqlite" {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        format!("sqlite://{}", dir.join("bench.db").display())
    } else {
        let name = format!("bench_{}", std::process::id());
        let mut client = postgres::Client::connect(postgres_url, postgres::NoTls).map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))
            .map_err(|e| e.to_string())?;
        schema = Some(name.clone());
        let sep = if postgres_url.contains('?') { '&' } else { '?' };
        format!("{postgres_url}{sep}options=-c%20search_path%3D{name}")
    };
    let options = credit_operator::bench::BenchOptions {
        ledger_url,
        backend,
        events,
        naive_events,
        members,
        reset_members,
        authorize_calls: 1_000_000,
        http_seconds,
        http_connections,
        key_events,
    };
    let result = credit_operator::bench::run(&options).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(name) = schema {
        if let Ok(mut client) = postgres::Client::connect(postgres_url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        }
    }
    let report = result?;
    serde_json::to_string(&report).map_err(|e| e.to_string())
}

fn validate(dir: &std::path::Path, strict: bool) -> ExitCode {
    let problems = match credit_operator::validate::validate(dir) {
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
