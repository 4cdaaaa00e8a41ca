//! What the registry reports about its storage: usage and the last collection.
//! The registry writes it (a file in the storage root, and under the operator a
//! ConfigMap); the operator copies it into the Registry's status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The ConfigMap key (and file name) holding a [`Report`] as JSON.
pub const REPORT_KEY: &str = "report.json";
/// Keys of the requests ConfigMap the operator writes.
pub const PROTECTED_KEY: &str = "protected";
pub const COLLECT_KEY: &str = "collect";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_collection: Option<Collection>,
}

/// What the storage holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Bytes of content stored (blobs and manifests), each counted once.
    #[schemars(with = "i64")]
    pub bytes: u64,
    #[schemars(with = "i64")]
    pub blobs: u64,
    #[schemars(with = "i64")]
    pub manifests: u64,
    #[schemars(with = "i64")]
    pub repositories: u64,
    /// Size of the volume the storage is on, and what is still free there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub volume_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub volume_available_bytes: Option<u64>,
}

impl Usage {
    /// How full the volume is, in percent, when its size is known.
    pub fn volume_percent(&self) -> Option<u8> {
        let (size, free) = (self.volume_bytes?, self.volume_available_bytes?);
        if size == 0 {
            return None;
        }
        Some((size.saturating_sub(free).saturating_mul(100) / size).min(100) as u8)
    }
}

/// One garbage collection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Collection {
    /// The on-demand request it served (the `collect` value), absent when scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// RFC 3339 times.
    pub started: String,
    pub finished: String,
    #[schemars(with = "i64")]
    pub duration_ms: u64,
    pub dry_run: bool,
    /// What was deleted (or, in a dry run, would have been).
    #[schemars(with = "i64")]
    pub blobs_deleted: u64,
    #[schemars(with = "i64")]
    pub manifests_deleted: u64,
    #[schemars(with = "i64")]
    pub tags_deleted: u64,
    #[schemars(with = "i64")]
    pub bytes_freed: u64,
    /// Manifests kept only because a protected reference (a running pod's image) names them.
    #[schemars(with = "i64")]
    pub protected_kept: u64,
    /// Why the collection stopped early, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The key of the report ConfigMap holding a [`StorageHealth`] as JSON. The
/// registry merge-patches it whenever its storage probe changes its answer.
pub const HEALTH_KEY: &str = "health.json";

/// What the registry's storage probe last found (the answer behind `/readyz`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageHealth {
    /// A probe object could be written, read back and deleted.
    pub writable: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339 time the probe first gave this answer.
    pub since: String,
    /// The pod (host name) that probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}
