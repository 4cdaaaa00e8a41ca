//! Building and running the server from a [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{App, router};
use crate::config::Config;
use crate::storage::FsStorage;

/// Opens the storage and builds the HTTP application for `config`.
pub fn build(config: Config) -> Result<axum::Router, String> {
    let storage = FsStorage::open(&config.storage.root)
        .map_err(|e| format!("opening storage at {}: {e}", config.storage.root.display()))?;
    let app = App::new(config, Arc::new(storage))?;
    Ok(router(app))
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
