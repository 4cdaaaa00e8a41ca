//! `GET /v2/`: the API version check clients make first. Once a way to log in
//! is configured it also answers "who are you": 401 with the challenge without
//! credentials (even when anonymous pulls are allowed, because clients such as
//! crane and podman only send credentials after a 401 here), 401 for wrong
//! credentials, 200 for good ones.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, access};
use crate::auth::Scope;

pub async fn get(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.config.auth.has_authenticators()
        && let Err(e) = access::check(&app, &headers, &Scope::Base).await
    {
        return e.into_response();
    }
    Json(serde_json::json!({})).into_response()
}

/// `GET /healthz`: liveness, for probes, which must not need credentials
/// (`/v2/` answers 401 to anonymous clients once authentication is on). It
/// touches nothing: a full disk is no reason to restart.
pub async fn health() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while the last storage probe could write, read and
/// delete; 503 with the kind of failure otherwise (and before the first probe).
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.health.ready() {
        Ok(()) => "ok\n".into_response(),
        Err(kind) => (StatusCode::SERVICE_UNAVAILABLE, format!("{kind}\n")).into_response(),
    }
}

/// The Prometheus text exposition of the registry's metrics.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.encode()).into_response()
}
