//! What OCI image manifests and Docker schema2 manifests have in common: a config
//! blob and a list of layers.

use super::Parsed;
use super::descriptor::Descriptor;
use crate::error::Error;

/// Collects the references of a config + layers manifest into `parsed`.
pub fn collect_image_references(parsed: &mut Parsed, config: &Descriptor, layers: &[Descriptor]) -> Result<(), Error> {
    parsed.blobs.push(config.checked_digest("config")?);
    for (i, layer) in layers.iter().enumerate() {
        let digest = layer.checked_digest(&format!("layers[{i}]"))?;
        if layer.is_foreign() {
            parsed.foreign_urls.extend(layer.urls.iter().flatten().cloned());
            parsed.foreign_blobs.push(digest);
        } else {
            parsed.blobs.push(digest);
        }
    }
    Ok(())
}
