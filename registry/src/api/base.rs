//! `GET /v2/`: the API version check clients make first.

use axum::Json;
use axum::response::IntoResponse;

pub async fn get() -> impl IntoResponse {
    Json(serde_json::json!({}))
}

/// `GET /healthz`: for probes, which must not need credentials (`/v2/` answers
/// 401 to anonymous clients once authentication is on).
pub async fn health() -> &'static str {
    "ok\n"
}
