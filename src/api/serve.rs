//! Serving the API over HTTP/1.1 with the timeouts a public port needs.
//!
//! `axum::serve` sets no timer, so a client that opens a connection and
//! sends nothing, or half a request, holds it for ever. Here every
//! connection must deliver a request's headers within the header timeout
//! (the same bound closes idle keep-alive connections), and a handler
//! that reads a body gives up on one that stalls (see [`body_timeout`]).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take to send a request's headers, and how long a
/// kept-alive connection may sit idle. `CREDITS_HTTP_HEADER_TIMEOUT_MS`
/// overrides the default of 30 s.
pub fn header_timeout() -> Duration {
    std::env::var("CREDITS_HTTP_HEADER_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.clamp(100, 600_000)))
        .unwrap_or(Duration::from_secs(30))
}

/// How long a handler waits for a request's body to arrive.
/// `CREDITS_HTTP_BODY_TIMEOUT_MS` overrides the default of 30 s.
pub fn body_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        std::env::var("CREDITS_HTTP_BODY_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms.clamp(100, 600_000)))
            .unwrap_or(Duration::from_secs(30))
    })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = header_timeout();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(|r: hyper::Request<Incoming>| r.map(axum::body::Body::new));
        let service = TowerToHyperService::new(service);
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection closed");
                    }
                }
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
