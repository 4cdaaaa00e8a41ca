//! The audit trail: one structured line per push, tag change and delete, under
//! the `audit` log target (`RUST_LOG=audit=info` keeps only these).

use super::Identity;
use crate::digest::Digest;
use crate::names::RepoName;

/// What changed.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// A manifest stored (its tags, if any, in `reference`).
    Push,
    /// A tag moved to or was set on a manifest.
    Tag,
    DeleteManifest,
    DeleteTag,
    DeleteBlob,
}

pub fn record(event: Event, who: &Identity, repository: &RepoName, reference: Option<&str>, digest: Option<&Digest>) {
    tracing::info!(
        target: "audit",
        event = ?event,
        // Escaped: a user name from an identity provider may hold line breaks.
        who = %who.to_string().escape_debug(),
        kind = who.kind(),
        repository = %repository,
        reference = reference.unwrap_or(""),
        digest = %digest.map(Digest::to_string).unwrap_or_default(),
        "audit"
    );
}
