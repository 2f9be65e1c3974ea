//! The operator process: the controller, the ledger and the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::{ClusterDirectory, OperatorOptions, FIELD_MANAGER};
use crate::api::{self, AppState, Metrics};
use crate::clock::SystemClock;
use crate::ledger::writer::LedgerOptions;
use crate::ledger::Ledger;

/// How to run in a cluster.
pub struct RunOptions {
    pub ledger: String,
    pub listen: SocketAddr,
    pub tokens: Option<api::auth::Tokens>,
    pub operator: OperatorOptions,
    /// Apply the CRDs at start-up (Helm never upgrades `crds/`).
    pub apply_crds: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing to listen on {0} without --token-file: without tokens the API serves loopback only")]
    NotLoopback(SocketAddr),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
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

/// Runs until SIGINT or SIGTERM.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    if options.tokens.is_none() && !options.listen.ip().is_loopback() {
        return Err(RunError::NotLoopback(options.listen));
    }
    let client = Client::try_default().await?;
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

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
    let state = AppState {
        ledger: ledger.clone(),
        tokens: options.tokens.map(Arc::new),
        metrics,
        directory: Arc::new(ClusterDirectory {
            client,
            ledger: ledger.clone(),
        }),
    };
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(crate::standalone::shutdown_signal())
        .await;
    let _ = stop_tx.send(true);
    sweeper.abort();
    let _ = controller.await;
    tokio::task::spawn_blocking(move || ledger.shutdown()).await.ok();
    served.map_err(RunError::Serve)
}
