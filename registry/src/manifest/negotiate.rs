//! Content negotiation on manifest GET/HEAD, as the Distribution registry does it:
//!
//! - an OCI image manifest or OCI index is served only to clients whose `Accept`
//!   names its media type; others get `MANIFEST_UNKNOWN` (they could not parse it);
//! - a Docker manifest list fetched *by tag* by a client that does not accept
//!   manifest lists is answered with the list's linux/amd64 manifest instead (the
//!   way pre-multi-arch Docker clients still pull), and refused with
//!   `MANIFEST_INVALID` if that is a schema2 manifest the client does not accept;
//! - everything else is served as stored. `q=` weights are ignored.

use super::{Kind, docker_manifest_list, docker_schema2, oci_index, oci_manifest};
use crate::error::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepts {
    pub oci_manifest: bool,
    pub oci_index: bool,
    pub schema2: bool,
    pub manifest_list: bool,
}

impl Accepts {
    /// From the values of every `Accept` header of a request.
    pub fn from_values<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut a = Accepts::default();
        let types = values.flat_map(|v| v.split(',')).map(|t| t.split(';').next().unwrap_or("").trim());
        for t in types {
            match t {
                oci_manifest::MEDIA_TYPE => a.oci_manifest = true,
                oci_index::MEDIA_TYPE => a.oci_index = true,
                docker_schema2::MEDIA_TYPE => a.schema2 = true,
                docker_manifest_list::MEDIA_TYPE => a.manifest_list = true,
                _ => {}
            }
        }
        a
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Serve,
    /// Serve the linux/amd64 manifest of this manifest list instead.
    DefaultPlatform,
}

pub const DEFAULT_OS: &str = "linux";
pub const DEFAULT_ARCHITECTURE: &str = "amd64";

pub fn decide(kind: Kind, accepts: Accepts, by_tag: bool) -> Result<Outcome, Error> {
    match kind {
        Kind::OciImageManifest if !accepts.oci_manifest => {
            Err(Error::ManifestUnknown("OCI manifest found, but the Accept header does not allow OCI manifests".into()))
        }
        Kind::OciImageIndex if !accepts.oci_index => {
            Err(Error::ManifestUnknown("OCI index found, but the Accept header does not allow OCI indexes".into()))
        }
        Kind::DockerManifestList if by_tag && !accepts.manifest_list => Ok(Outcome::DefaultPlatform),
        _ => Ok(Outcome::Serve),
    }
}

/// The check on the manifest chosen for [`Outcome::DefaultPlatform`].
pub fn check_default_platform(kind: Kind, accepts: Accepts) -> Result<(), Error> {
    if kind == Kind::DockerSchema2 && !accepts.schema2 {
        return Err(Error::ManifestInvalid("schema2 manifest not supported by client".into()));
    }
    decide(kind, accepts, false).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(values: &[&str]) -> Accepts {
        Accepts::from_values(values.iter().copied())
    }

    #[test]
    fn oci_needs_accept() {
        assert!(decide(Kind::OciImageManifest, accepts(&[]), true).is_err());
        assert!(decide(Kind::OciImageIndex, accepts(&[oci_manifest::MEDIA_TYPE]), false).is_err());
        let both = accepts(&[&format!("{}; q=0.5, {}", oci_manifest::MEDIA_TYPE, oci_index::MEDIA_TYPE)]);
        assert_eq!(decide(Kind::OciImageIndex, both, false).unwrap(), Outcome::Serve);
        assert_eq!(decide(Kind::OciImageManifest, both, false).unwrap(), Outcome::Serve);
    }

    #[test]
    fn docker_types() {
        assert_eq!(decide(Kind::DockerSchema2, accepts(&[]), true).unwrap(), Outcome::Serve);
        assert_eq!(decide(Kind::DockerManifestList, accepts(&[]), true).unwrap(), Outcome::DefaultPlatform);
        assert_eq!(decide(Kind::DockerManifestList, accepts(&[]), false).unwrap(), Outcome::Serve);
        let list = accepts(&[docker_manifest_list::MEDIA_TYPE]);
        assert_eq!(decide(Kind::DockerManifestList, list, true).unwrap(), Outcome::Serve);
        assert!(check_default_platform(Kind::DockerSchema2, accepts(&[])).is_err());
        assert!(check_default_platform(Kind::DockerSchema2, accepts(&[docker_schema2::MEDIA_TYPE])).is_ok());
    }
}
