//! Building and running the server from a [`Config`]. The accept loop is ours
//! rather than `axum::serve`'s, because the limits that keep one client from
//! starving the others live at the connection: a cap on open connections, a
//! timeout for request headers (hyper enforces it only with a timer, which
//! `axum::serve` does not set) and a timeout for connections that move no byte.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::api::{App, router};
use crate::config::{Config, LimitsConfig};
use crate::net::{self, Activity, Tracked};
use crate::storage::{FsStorage, Storage};

/// How long requests in flight may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);

/// Opens the storage and builds the HTTP application for `config`; starts the
/// cleanup of what clients and crashes leave behind.
pub fn build(config: Config) -> Result<axum::Router, String> {
    let storage: Arc<dyn Storage> = Arc::new(
        FsStorage::open(&config.storage.root)
            .map_err(|e| format!("opening storage at {}: {e}", config.storage.root.display()))?,
    );
    let age = match config.uploads.purge_after_hours {
        0 => Duration::MAX,
        hours => Duration::from_secs(hours.saturating_mul(3600)),
    };
    tokio::spawn(purge(storage.clone(), age));
    let app = App::new(config, storage)?;
    Ok(router(app))
}

/// At start and hourly: abandoned upload sessions (untouched for `age`),
/// temporary files and empty directories.
async fn purge(storage: Arc<dyn Storage>, age: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match storage.purge(age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "cleaning up the storage failed"),
        }
    }
}

/// Serves `config` on an already bound listener until `shutdown` resolves, then
/// lets requests in flight finish (for up to 30 s).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let files = net::raise_open_files_limit();
    let limits = config.limits.clone();
    if u64::from(limits.max_connections) * 2 > files {
        tracing::warn!(
            files,
            max_connections = limits.max_connections,
            "the open-file limit is below 2 per connection"
        );
    }
    let app = build(config)?;
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let builder = connection_builder(&limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let Some((stream, peer)) = net::accepted(accepted).await else {
            continue;
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; closing a new connection");
            continue;
        };
        let activity = Arc::new(Activity::new());
        let service = counted(app.clone(), activity.clone());
        let connection = builder.serve_connection_with_upgrades(io(stream, &activity), service).into_owned();
        let connection = graceful.watch(connection);
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = activity.idle_for(idle) => tracing::debug!(%peer, "closing an idle connection"),
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {} s; stopping anyway", DRAIN.as_secs());
    }
    Ok(())
}

/// The app as a hyper service that marks the connection as working while a
/// request is being handled, so the idle timeout does not cut a long finish.
fn counted(
    app: axum::Router,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let working = activity.working();
        let mut app = app.clone();
        async move {
            let response = tower_service::Service::call(&mut app, request).await;
            drop(working);
            response
        }
    })
}

fn io(stream: TcpStream, activity: &Arc<Activity>) -> TokioIo<Tracked<TcpStream>> {
    let _ = stream.set_nodelay(true);
    TokioIo::new(Tracked::new(stream, activity.clone()))
}

/// HTTP/1.1 and cleartext HTTP/2, with a timer so the header timeout applies.
fn connection_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    builder
}
