//! Building and running the server from a [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{App, router};
use crate::config::Config;
use crate::storage::{FsStorage, Storage};

/// Opens the storage and builds the HTTP application for `config`; starts the
/// purge of abandoned upload sessions.
pub fn build(config: Config) -> Result<axum::Router, String> {
    let storage: Arc<dyn Storage> = Arc::new(
        FsStorage::open(&config.storage.root)
            .map_err(|e| format!("opening storage at {}: {e}", config.storage.root.display()))?,
    );
    if config.uploads.purge_after_hours > 0 {
        tokio::spawn(purge_uploads(storage.clone(), Duration::from_secs(config.uploads.purge_after_hours * 3600)));
    }
    let app = App::new(config, storage)?;
    Ok(router(app))
}

/// Hourly, deletes upload sessions untouched for `age` (clients that gave up).
async fn purge_uploads(storage: Arc<dyn Storage>, age: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match storage.purge_uploads(age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "purging upload sessions failed"),
        }
    }
}

/// Serves `config` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = build(config)?;
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
