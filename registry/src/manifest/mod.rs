//! Manifest handlers, one module per media type, behind one dispatch
//! ([`Policy::parse`]). A handler parses and checks its format and lists what the
//! manifest references; the policy decides which handlers are on and which of
//! those references must already be in the repository.

mod descriptor;
pub mod docker_manifest_list;
pub mod docker_schema1;
pub mod docker_schema2;
mod image;
mod index;
pub mod negotiate;
pub mod oci_index;
pub mod oci_manifest;
pub mod push;

use std::collections::BTreeMap;

use regex::Regex;
use serde::Serialize;

use crate::config::{IndexPlatforms, ManifestsConfig, Platform};
use crate::digest::Digest;
use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    OciImageManifest,
    OciImageIndex,
    DockerSchema2,
    DockerManifestList,
    DockerSchema1,
}

impl Kind {
    /// The handler for a `Content-Type`, with the media type to store.
    pub fn from_media_type(media_type: &str) -> Option<(Kind, &'static str)> {
        Some(match media_type {
            oci_manifest::MEDIA_TYPE => (Kind::OciImageManifest, oci_manifest::MEDIA_TYPE),
            oci_index::MEDIA_TYPE => (Kind::OciImageIndex, oci_index::MEDIA_TYPE),
            docker_schema2::MEDIA_TYPE => (Kind::DockerSchema2, docker_schema2::MEDIA_TYPE),
            docker_manifest_list::MEDIA_TYPE => (Kind::DockerManifestList, docker_manifest_list::MEDIA_TYPE),
            docker_schema1::MEDIA_TYPE => (Kind::DockerSchema1, docker_schema1::MEDIA_TYPE),
            docker_schema1::SIGNED_MEDIA_TYPE => (Kind::DockerSchema1, docker_schema1::SIGNED_MEDIA_TYPE),
            _ => return None,
        })
    }

    pub fn is_index(self) -> bool {
        matches!(self, Kind::OciImageIndex | Kind::DockerManifestList)
    }
}

/// A manifest listed by an index, with the platform it is for.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildManifest {
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// What a handler learned from a manifest.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub media_type: &'static str,
    /// Config and layer blobs that clients will fetch from this registry.
    pub blobs: Vec<Digest>,
    /// Manifests an index lists.
    pub manifests: Vec<ChildManifest>,
    /// URLs of foreign layers, checked against the URL policy.
    pub foreign_urls: Vec<String>,
    /// Foreign (non-distributable) layers: not required at push, but kept by the
    /// collector when a client pushed them anyway (mirrors into isolated networks do).
    pub foreign_blobs: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Parsed {
    fn new(kind: Kind, media_type: &'static str) -> Self {
        Parsed {
            kind,
            media_type,
            blobs: Vec::new(),
            manifests: Vec::new(),
            foreign_urls: Vec::new(),
            foreign_blobs: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }

    /// This manifest as the referrers API lists it.
    pub fn referrer_descriptor(&self, digest: &Digest, size: u64) -> ReferrerDescriptor {
        ReferrerDescriptor {
            media_type: self.media_type.to_owned(),
            digest: digest.clone(),
            size,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The compiled `manifests` section of the configuration.
#[derive(Debug)]
pub struct Policy {
    config: ManifestsConfig,
    allow: Vec<Regex>,
    deny: Vec<Regex>,
}

impl Policy {
    pub fn new(config: &ManifestsConfig) -> Result<Self, String> {
        let (allow, deny) = config.url_patterns()?;
        Ok(Policy { allow, deny, config: config.clone() })
    }

    pub fn max_size(&self) -> u64 {
        self.config.validation.max_size
    }

    fn enabled(&self, kind: Kind) -> bool {
        let c = &self.config;
        match kind {
            Kind::OciImageManifest => c.oci.image_manifest,
            Kind::OciImageIndex => c.oci.image_index,
            Kind::DockerSchema2 => c.docker.schema2,
            Kind::DockerManifestList => c.docker.manifest_list,
            Kind::DockerSchema1 => c.docker.schema1,
        }
    }

    /// The `Accept` header that asks another registry for every enabled type,
    /// indexes first.
    pub fn accept_header(&self) -> String {
        let kinds = [
            (Kind::OciImageIndex, oci_index::MEDIA_TYPE),
            (Kind::DockerManifestList, docker_manifest_list::MEDIA_TYPE),
            (Kind::OciImageManifest, oci_manifest::MEDIA_TYPE),
            (Kind::DockerSchema2, docker_schema2::MEDIA_TYPE),
            (Kind::DockerSchema1, docker_schema1::SIGNED_MEDIA_TYPE),
            (Kind::DockerSchema1, docker_schema1::MEDIA_TYPE),
        ];
        let types: Vec<&str> = kinds.iter().filter(|(k, _)| self.enabled(*k)).map(|(_, t)| *t).collect();
        types.join(", ")
    }

    /// Picks the handler for `content_type`, refuses disabled ones, and parses.
    pub fn parse(&self, content_type: Option<&str>, bytes: &[u8]) -> Result<Parsed, Error> {
        let essence = content_type.map(|ct| ct.split(';').next().unwrap_or("").trim()).unwrap_or("");
        let (kind, media_type) = match Kind::from_media_type(essence) {
            Some(found) => found,
            None if matches!(essence, "" | "application/json" | "application/octet-stream") => sniff(bytes)?,
            None => {
                return Err(Error::ManifestInvalid(format!("unsupported manifest media type {essence:?}")));
            }
        };
        if !self.enabled(kind) {
            return Err(Error::ManifestInvalid(format!(
                "manifest media type {media_type} is disabled on this registry"
            )));
        }
        let parsed = match kind {
            Kind::OciImageManifest => oci_manifest::parse(bytes)?,
            Kind::OciImageIndex => oci_index::parse(bytes)?,
            Kind::DockerSchema2 => docker_schema2::parse(bytes)?,
            Kind::DockerManifestList => docker_manifest_list::parse(bytes)?,
            Kind::DockerSchema1 => docker_schema1::parse(bytes, media_type)?,
        };
        for url in &parsed.foreign_urls {
            self.check_url(url)?;
        }
        Ok(parsed)
    }

    fn check_url(&self, url: &str) -> Result<(), Error> {
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        let allowed = self.allow.is_empty() || self.allow.iter().any(|r| r.is_match(url));
        let denied = self.deny.iter().any(|r| r.is_match(url));
        if scheme_ok && !url.contains('#') && allowed && !denied {
            Ok(())
        } else {
            Err(Error::ManifestInvalid(format!("foreign layer URL {url:?} is not allowed by this registry")))
        }
    }

    /// The blobs that must exist in the repository before this manifest is accepted.
    pub fn required_blobs<'a>(&self, parsed: &'a Parsed) -> &'a [Digest] {
        if self.config.validation.blob_references { &parsed.blobs } else { &[] }
    }

    /// The manifests of an index that must exist in the repository first.
    pub fn required_manifests<'a>(&self, parsed: &'a Parsed) -> Vec<&'a Digest> {
        let indexes = &self.config.validation.indexes;
        parsed
            .manifests
            .iter()
            .filter(|child| match indexes.platforms {
                IndexPlatforms::All => true,
                IndexPlatforms::None => false,
                IndexPlatforms::List => child.platform.as_ref().is_some_and(|p| {
                    indexes.platform_list.iter().any(|want| {
                        want.os == p.os
                            && want.architecture == p.architecture
                            && (want.variant.is_none() || want.variant == p.variant)
                    })
                }),
            })
            .map(|child| &child.digest)
            .collect()
    }
}

/// Works out the type of a manifest pushed without a usable `Content-Type`.
fn sniff(bytes: &[u8]) -> Result<(Kind, &'static str), Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
        signatures: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| Error::ManifestInvalid(format!("manifest is not a JSON object: {e}")))?;
    if let Some(mt) = &probe.media_type {
        return Kind::from_media_type(mt)
            .ok_or_else(|| Error::ManifestInvalid(format!("unsupported manifest media type {mt:?}")));
    }
    Ok(match (probe.schema_version, probe.manifests.is_some(), probe.config.is_some()) {
        (Some(1), _, _) if probe.signatures.is_some() => (Kind::DockerSchema1, docker_schema1::SIGNED_MEDIA_TYPE),
        (Some(1), _, _) => (Kind::DockerSchema1, docker_schema1::MEDIA_TYPE),
        (_, true, _) => (Kind::OciImageIndex, oci_index::MEDIA_TYPE),
        (_, _, true) => (Kind::OciImageManifest, oci_manifest::MEDIA_TYPE),
        _ => return Err(Error::ManifestInvalid("cannot tell the manifest's media type".into())),
    })
}

#[cfg(test)]
mod tests;
