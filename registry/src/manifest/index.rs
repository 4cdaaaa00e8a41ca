//! What OCI image indexes and Docker manifest lists have in common: a list of
//! manifests, each optionally for one platform.

use super::descriptor::Descriptor;
use super::{ChildManifest, Parsed};
use crate::config::Platform;
use crate::error::Error;

pub fn collect_index_children(
    parsed: &mut Parsed,
    manifests: &[Descriptor],
    platform_required: bool,
) -> Result<(), Error> {
    for (i, child) in manifests.iter().enumerate() {
        let field = format!("manifests[{i}]");
        let digest = child.checked_digest(&field)?;
        let platform = match &child.platform {
            Some(p) => {
                Some(Platform { os: p.os.clone(), architecture: p.architecture.clone(), variant: p.variant.clone() })
            }
            None if platform_required => {
                return Err(Error::ManifestInvalid(format!("{field}: platform is required in a manifest list")));
            }
            None => None,
        };
        parsed.manifests.push(ChildManifest { digest, platform });
    }
    Ok(())
}
