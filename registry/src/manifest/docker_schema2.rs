//! `application/vnd.docker.distribution.manifest.v2+json`

use serde::Deserialize;

use super::descriptor::{Descriptor, check_media_type, check_schema_version, from_json};
use super::image::collect_image_references;
use super::{Kind, Parsed};
use crate::error::Error;

pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    let m: Manifest = from_json(bytes, "Docker schema2 manifest")?;
    check_schema_version(m.schema_version, 2)?;
    check_media_type(m.media_type.as_deref(), MEDIA_TYPE, true)?;
    let mut parsed = Parsed::new(Kind::DockerSchema2, MEDIA_TYPE);
    collect_image_references(&mut parsed, &m.config, &m.layers)?;
    Ok(parsed)
}
