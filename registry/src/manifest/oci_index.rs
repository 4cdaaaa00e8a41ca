//! `application/vnd.oci.image.index.v1+json`

use std::collections::BTreeMap;

use serde::Deserialize;

use super::descriptor::{Descriptor, check_media_type, check_schema_version, from_json};
use super::index::collect_index_children;
use super::{Kind, Parsed};
use crate::error::Error;

pub const MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    manifests: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    let m: Index = from_json(bytes, "OCI image index")?;
    check_schema_version(m.schema_version, 2)?;
    check_media_type(m.media_type.as_deref(), MEDIA_TYPE, false)?;
    let mut parsed = Parsed::new(Kind::OciImageIndex, MEDIA_TYPE);
    collect_index_children(&mut parsed, &m.manifests, false)?;
    parsed.subject = m.subject.map(|s| s.checked_digest("subject")).transpose()?;
    parsed.artifact_type = m.artifact_type;
    parsed.annotations = m.annotations;
    Ok(parsed)
}
