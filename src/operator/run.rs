//! The operator process: the controller, the ledger and the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::lease::{label_pod, Elector};
use super::{ClusterDirectory, OperatorOptions, FIELD_MANAGER};
use crate::api::{self, AppState, Metrics};
use crate::clock::SystemClock;
use crate::ledger::writer::LedgerOptions;
use crate::ledger::Ledger;

/// How to run in a cluster.
pub struct RunOptions {
    pub ledger: String,
    pub listen: SocketAddr,
    /// Bearer tokens from a file; `None` uses Kubernetes TokenReview and
    /// SubjectAccessReview.
    pub tokens: Option<api::auth::Tokens>,
    /// Without tokens, authenticate with Kubernetes (else loopback only).
    pub kubernetes_auth: bool,
    /// The audience Kubernetes tokens must be issued for.
    pub token_audience: String,
    pub operator: OperatorOptions,
    /// Apply the CRDs at start-up (Helm never upgrades `crds/`).
    pub apply_crds: bool,
    /// Compete for a Lease before writing (several replicas on PostgreSQL).
    pub leader_election: Option<LeaderElection>,
}

/// Where the Lease is and who this replica is.
pub struct LeaderElection {
    pub namespace: String,
    pub lease: String,
    /// This pod's name: the Lease holder identity and the pod to label.
    pub pod: String,
    pub duration: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing to listen on {0} without --token-file or --kubernetes-auth: the API would serve anyone")]
    NotLoopback(SocketAddr),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    LostLease(String),
    #[error("this writer was fenced off by a newer writer (epoch {0}): it stopped and gave up the lease")]
    Fenced(i64),
}

/// Applies the four CRDs with server-side apply, so an upgrade of the
/// operator upgrades its CRDs.
pub async fn apply_crds(client: &Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await?;
        tracing::info!(crd = %name, "applied");
    }
    Ok(())
}

/// What a standby serves: healthy probes (so rollouts and disruption
/// budgets work), and a clear 503 naming the leader for everything else.
fn standby_router(elector: Arc<Elector>) -> axum::Router {
    use axum::response::IntoResponse;
    use axum::routing::get;
    let ok = || async { axum::Json(serde_json::json!({"status": "standby"})) };
    axum::Router::new()
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .fallback(move || {
            let elector = elector.clone();
            async move {
                let leader = elector.holder().unwrap_or_else(|| "no replica yet".into());
                api::error::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "standby",
                    format!("this replica is a standby; the leader ({leader}) serves the API"),
                )
                .into_response()
            }
        })
}

/// Serves the standby's answers until this replica holds the Lease;
/// false when asked to stop first.
async fn wait_for_leadership(
    elector: &Arc<Elector>,
    listen: SocketAddr,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool, RunError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| RunError::Listen(listen, e))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let router = standby_router(elector.clone());
    let server = tokio::spawn(async move {
        api::serve::serve(listener, router, async move {
            let _ = done_rx.await;
        })
        .await
    });
    let leader = loop {
        match elector.try_acquire().await {
            Ok(true) => break true,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reach the Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.retry_every()) => {}
            _ = stop.changed() => break false,
        }
    };
    let _ = done_tx.send(());
    let _ = server.await;
    Ok(leader)
}

/// Runs until SIGINT or SIGTERM (or, with leader election, until the
/// Lease is lost).
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    if options.tokens.is_none() && !options.kubernetes_auth && !options.listen.ip().is_loopback() {
        return Err(RunError::NotLoopback(options.listen));
    }
    let client = Client::try_default().await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            crate::standalone::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
    }
    let leader = options.leader_election.as_ref().map(|le| {
        let elector = Arc::new(Elector::new(
            client.clone(),
            &le.namespace,
            &le.lease,
            &le.pod,
            le.duration,
        ));
        (le.namespace.clone(), le.pod.clone(), elector)
    });
    let mut holding = None;
    let lost: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    if let Some((ns, pod, elector)) = &leader {
        // A label left by an earlier run of this pod (killed while it
        // led) must not route the API here while another replica leads.
        if let Err(e) = label_pod(client.clone(), ns, pod, false).await {
            tracing::warn!(error = %e, "cannot remove a stale leader label from this pod");
        }
        tracing::info!(identity = elector.identity(), "waiting for the lease");
        if !wait_for_leadership(elector, options.listen, &mut stop_rx).await? {
            return Ok(());
        }
        tracing::info!(identity = elector.identity(), "holding the lease: this replica writes");
        // Renewed from now on, also while the CRDs are applied and the
        // ledger replays; losing it stops this writer.
        let (elector, stop_tx, lost) = (elector.clone(), stop_tx.clone(), lost.clone());
        holding = Some(tokio::spawn(async move {
            let why = elector.hold().await;
            tracing::error!("{why}; this replica stops writing");
            if let Ok(mut l) = lost.lock() {
                *l = Some(why);
            }
            let _ = stop_tx.send(true);
        }));
    }
    let pod = leader.as_ref().map(|(ns, pod, _)| (ns.clone(), pod.clone()));
    let result = serve(&client, options, stop_tx.clone(), stop_rx, pod.clone()).await;
    if let Some(task) = holding {
        task.abort();
    }
    if let (Some((ns, pod)), Some((_, _, elector))) = (pod, &leader) {
        if let Err(e) = label_pod(client.clone(), &ns, &pod, false).await {
            tracing::warn!(error = %e, "cannot remove the leader label from this pod");
        }
        if lost.lock().map(|l| l.is_none()).unwrap_or(true) {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "cannot hand the lease back; it expires by itself");
            }
        }
    }
    if let Some(why) = lost.lock().ok().and_then(|l| l.clone()) {
        return Err(RunError::LostLease(why));
    }
    result
}

/// The writer: controller, ledger and API. `leader_pod` is labelled once
/// the API listens.
async fn serve(
    client: &Client,
    options: RunOptions,
    stop_tx: tokio::sync::watch::Sender<bool>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    leader_pod: Option<(String, String)>,
) -> Result<(), RunError> {
    let client = client.clone();
    if options.apply_crds {
        apply_crds(&client).await?;
    }
    let metrics = Metrics::default();
    let ledger_options = LedgerOptions {
        on_commit: Some(metrics.commit_observer()),
        ..LedgerOptions::default()
    };
    let url = options.ledger.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::open_with(&url, Arc::new(SystemClock), ledger_options))
        .await
        .map_err(|e| RunError::Serve(std::io::Error::other(e)))??;
    if *stop_rx.borrow() {
        // Stopped (or lost the lease) while replaying: write nothing.
        tokio::task::spawn_blocking(move || ledger.shutdown()).await.ok();
        return Ok(());
    }

    let controller = {
        let (client, ledger, operator, mut stop) = (
            client.clone(),
            ledger.clone(),
            options.operator.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(super::run(client, ledger, operator, async move {
            let _ = stop.changed().await;
        }))
    };
    // A writer fenced off for real (another process took a newer epoch of
    // the journal) will never write again: stop, so the lease is handed
    // back and a standby leads, and `/healthz` fails meanwhile.
    let fence_watch = {
        let (ledger, stop_tx, mut stop) = (ledger.clone(), stop_tx.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FENCE_CHECK_EVERY) => {}
                    _ = stop.changed() => return None,
                }
                if let Some(epoch) = ledger.fenced() {
                    tracing::error!(epoch, "fenced off by a newer writer; stopping and giving up the lease");
                    let _ = stop_tx.send(true);
                    return Some(epoch);
                }
            }
        })
    };
    let sweeper = {
        let (client, ledger, every) = (client.clone(), ledger.clone(), options.operator.staleness);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = super::sweep_deleted_accounts(&client, &ledger).await {
                    tracing::warn!(error = %e, "cannot compare accounts with the cluster");
                }
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| RunError::Listen(options.listen, e))?;
    tracing::info!(address = %options.listen, backend = ledger.backend(), "credit-operator running");
    let client_for_label = client.clone();
    let state = AppState::new(api::Services {
        ledger: ledger.clone(),
        auth: Arc::new(match options.tokens {
            Some(tokens) => api::auth::Auth::Tokens(tokens),
            None if options.kubernetes_auth => {
                api::auth::Auth::Kubernetes(api::kube_auth::KubeAuth::new(client.clone(), &options.token_audience))
            }
            None => api::auth::Auth::Local,
        }),
        metrics,
        directory: Arc::new(ClusterDirectory {
            client,
            ledger: ledger.clone(),
        }),
    });
    let mut server_stop = stop_rx.clone();
    let served = async {
        api::serve::serve(listener, api::router(state), async move {
            let _ = server_stop.changed().await;
        })
        .await
    };
    if let Some((ns, pod)) = &leader_pod {
        if let Err(e) = label_pod(client_for_label.clone(), ns, pod, true).await {
            tracing::warn!(error = %e, "cannot label this pod as the leader");
        }
    }
    let served = served.await;
    let _ = stop_tx.send(true);
    sweeper.abort();
    let _ = controller.await;
    let fenced = fence_watch.await.ok().flatten();
    tokio::task::spawn_blocking(move || ledger.shutdown()).await.ok();
    if let Some(epoch) = fenced {
        return Err(RunError::Fenced(epoch));
    }
    served.map_err(RunError::Serve)
}

/// How often the operator checks whether its writer was fenced off.
const FENCE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
