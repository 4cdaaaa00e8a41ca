//! `GET /v2/<name>/referrers/<digest>`: the manifests whose `subject` is `<digest>`,
//! as an OCI image index, optionally filtered by `artifactType`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{App, Req, parse_digest};
use crate::error::Result;
use crate::manifest::oci_index;
use crate::names::RepoName;

pub async fn list(app: &App, repo: &RepoName, digest: &str, req: Req) -> Result<Response> {
    let subject = parse_digest(digest)?;
    let mut referrers = app.storage.referrers(repo, &subject).await?;
    let filter = req.param("artifactType");
    if let Some(wanted) = filter {
        referrers.retain(|d| d.artifact_type.as_deref() == Some(wanted));
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_index::MEDIA_TYPE,
        "manifests": referrers,
    }))
    .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    let mut response = ([(header::CONTENT_TYPE, oci_index::MEDIA_TYPE)], body).into_response();
    if filter.is_some() {
        response.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(response)
}
