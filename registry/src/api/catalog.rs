//! `GET /v2/_catalog`

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::pagination::paginate;
use super::{App, Req};
use crate::error::Result;

pub async fn list(app: &App, req: Req) -> Result<Response> {
    let page = paginate(app.storage.repositories().await?, &req, "/v2/_catalog")?;
    let mut response = Json(serde_json::json!({ "repositories": page.items })).into_response();
    if let Some(link) = page.link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}
