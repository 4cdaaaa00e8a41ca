//! Legacy `application/vnd.docker.distribution.manifest.v1+json` and its signed
//! form `+prettyjws`. Kept for old clients and mirrors of old images; the JWS
//! signature is not verified (Distribution dropped schema1 for the same reason),
//! and the digest is over the exact bytes pushed, like every other manifest.

use serde::Deserialize;

use super::descriptor::{check_schema_version, from_json};
use super::{Kind, Parsed};
use crate::error::Error;

pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const SIGNED_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    name: String,
    tag: String,
    architecture: Option<String>,
    fs_layers: Vec<FsLayer>,
    history: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer {
    blob_sum: String,
}

pub fn parse(bytes: &[u8], media_type: &'static str) -> Result<Parsed, Error> {
    let m: Manifest = from_json(bytes, "Docker schema1 manifest")?;
    check_schema_version(m.schema_version, 1)?;
    if m.name.is_empty() || m.tag.is_empty() || m.architecture.as_deref() == Some("") {
        return Err(Error::ManifestInvalid("schema1 manifests need name, tag and architecture".into()));
    }
    if m.fs_layers.len() != m.history.len() {
        return Err(Error::ManifestInvalid(format!(
            "schema1 manifest has {} fsLayers but {} history entries",
            m.fs_layers.len(),
            m.history.len()
        )));
    }
    let mut parsed = Parsed::new(Kind::DockerSchema1, media_type);
    for (i, layer) in m.fs_layers.iter().enumerate() {
        let digest =
            layer.blob_sum.parse().map_err(|e: Error| Error::ManifestInvalid(format!("fsLayers[{i}].blobSum: {e}")))?;
        if !parsed.blobs.contains(&digest) {
            parsed.blobs.push(digest);
        }
    }
    Ok(parsed)
}
