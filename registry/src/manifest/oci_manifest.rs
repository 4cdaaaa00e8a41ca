//! `application/vnd.oci.image.manifest.v1+json`

use std::collections::BTreeMap;

use serde::Deserialize;

use super::descriptor::{Descriptor, check_media_type, check_schema_version, from_json};
use super::image::collect_image_references;
use super::{Kind, Parsed};
use crate::error::Error;

pub const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    let m: Manifest = from_json(bytes, "OCI image manifest")?;
    check_schema_version(m.schema_version, 2)?;
    check_media_type(m.media_type.as_deref(), MEDIA_TYPE, false)?;
    let mut parsed = Parsed::new(Kind::OciImageManifest, MEDIA_TYPE);
    collect_image_references(&mut parsed, &m.config, &m.layers)?;
    parsed.subject = m.subject.map(|s| s.checked_digest("subject")).transpose()?;
    // The referrers API reports the config's media type when no artifactType is set.
    parsed.artifact_type = m.artifact_type.or(Some(m.config.media_type));
    parsed.annotations = m.annotations;
    Ok(parsed)
}
