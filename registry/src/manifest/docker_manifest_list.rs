//! `application/vnd.docker.distribution.manifest.list.v2+json`

use serde::Deserialize;

use super::descriptor::{Descriptor, check_media_type, check_schema_version, from_json};
use super::index::collect_index_children;
use super::{Kind, Parsed};
use crate::error::Error;

pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct List {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    let m: List = from_json(bytes, "Docker manifest list")?;
    check_schema_version(m.schema_version, 2)?;
    check_media_type(m.media_type.as_deref(), MEDIA_TYPE, true)?;
    let mut parsed = Parsed::new(Kind::DockerManifestList, MEDIA_TYPE);
    collect_index_children(&mut parsed, &m.manifests, true)?;
    Ok(parsed)
}
