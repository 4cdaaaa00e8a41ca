//! The JSON pieces every manifest format shares: descriptors and platforms.

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::Error;

/// Layer media types that clients fetch from `urls` instead of the registry, so
/// the registry does not require them to be pushed.
pub const FOREIGN_LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<PlatformJson>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlatformJson {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Descriptor {
    /// The descriptor's digest, checked; `field` names it in the error.
    pub fn checked_digest(&self, field: &str) -> Result<Digest, Error> {
        if self.size < 0 {
            return Err(Error::ManifestInvalid(format!("{field}: negative size {}", self.size)));
        }
        if self.media_type.is_empty() {
            return Err(Error::ManifestInvalid(format!("{field}: mediaType is required")));
        }
        self.digest.parse().map_err(|e: Error| Error::ManifestInvalid(format!("{field}: {e}")))
    }

    pub fn is_foreign(&self) -> bool {
        FOREIGN_LAYER_TYPES.contains(&self.media_type.as_str())
    }
}

/// Parses a manifest body, turning serde's message into `MANIFEST_INVALID`.
pub fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid(format!("not a valid {what}: {e}")))
}

pub fn check_schema_version(found: u32, expected: u32) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::ManifestInvalid(format!("schemaVersion must be {expected}, found {found}")))
    }
}

/// A `mediaType` field inside the body must agree with the type the client sent.
pub fn check_media_type(field: Option<&str>, expected: &str, required: bool) -> Result<(), Error> {
    match field {
        Some(found) if found != expected => Err(Error::ManifestInvalid(format!(
            "mediaType {found:?} in the manifest does not match Content-Type {expected:?}"
        ))),
        None if required => Err(Error::ManifestInvalid(format!("mediaType {expected:?} is required"))),
        _ => Ok(()),
    }
}
