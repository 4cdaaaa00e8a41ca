//! `GET /v2/<name>/tags/list`

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::pagination::paginate;
use super::{App, Req};
use crate::error::{Error, Result};
use crate::names::RepoName;

pub async fn list(app: &App, repo: &RepoName, req: Req) -> Result<Response> {
    let tags = app.storage.tags(repo).await?.ok_or(Error::NameUnknown)?;
    let page = paginate(tags, &req, &format!("/v2/{repo}/tags/list"))?;
    let mut response = Json(serde_json::json!({ "name": repo.as_str(), "tags": page.items })).into_response();
    if let Some(link) = page.link {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}
