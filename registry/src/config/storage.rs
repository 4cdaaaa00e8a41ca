//! Where the registry keeps its content: a directory (a PersistentVolume), or an
//! S3-compatible bucket that any number of replicas share.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory that holds blobs, repositories and upload sessions. In Kubernetes
    /// this is the PersistentVolume's mount point; replicas may share it. Unused
    /// when `s3` is set.
    pub root: PathBuf,
    /// Store everything in an S3-compatible bucket instead of `root`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { root: PathBuf::from("./data"), s3: None }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.s3.as_ref().map_or(Ok(()), S3Config::validate)
    }

    /// Where content goes, for logs: `s3://bucket/prefix` or the directory.
    pub fn describe(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
            None => self.root.display().to_string(),
        }
    }
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW …). Credentials come from
/// `credentialsDir` when set, otherwise from the standard `AWS_*` environment
/// variables (including web identity and the instance metadata service).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// The service's URL, e.g. `http://minio.storage:9000`; AWS's regional
    /// endpoint when empty. `http://` is allowed only when written out here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub region: String,
    /// Prepended to every key, so several registries can share a bucket.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most
    /// self-hosted services need; virtual-hosted style (`bucket.endpoint/key`) when false.
    pub path_style: bool,
    /// A directory holding the files `accessKeyId`, `secretAccessKey` and,
    /// optionally, `sessionToken` (a mounted Secret). Re-read when they change,
    /// so rotated credentials are picked up without a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
    /// Answer blob GETs with a redirect to a presigned URL of the bucket, so
    /// clients download straight from the object store. Off by default: clients
    /// then need to reach the bucket.
    pub redirect: bool,
    /// Size of the parts uploads are sent in (S3 needs at least 5 MiB). An upload
    /// holds at most about one part in memory while its body streams.
    #[schemars(with = "i64", range(min = 5_242_880i64, max = 5_368_709_120i64))]
    pub part_size_bytes: u64,
    /// Bytes all uploads together may hold in memory in parts being filled or
    /// sent. An upload takes a whole part of it once it has more than 1 MiB
    /// buffered (smaller blobs never wait), and gives it back when the part is
    /// sent; when none is left for 10 s the request gets 429 and can be retried.
    #[schemars(with = "i64", range(min = 5_242_880i64))]
    pub buffer_bytes: u64,
}

/// S3's smallest part but the last.
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            prefix: String::new(),
            path_style: true,
            credentials_dir: None,
            redirect: false,
            part_size_bytes: 16 << 20,
            buffer_bytes: 1 << 30,
        }
    }
}

impl S3Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("storage.s3.bucket is required".into());
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(format!("storage.s3.endpoint {endpoint:?} must start with http:// or https://"));
        }
        if !(MIN_PART..=MAX_PART).contains(&self.part_size_bytes) {
            return Err(format!("storage.s3.partSizeBytes must be between {MIN_PART} and {MAX_PART}"));
        }
        if self.buffer_bytes < self.part_size_bytes + (1 << 20) {
            return Err("storage.s3.bufferBytes must hold at least one part (partSizeBytes) and 1 MiB".into());
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") {
            return Err("storage.s3.prefix must not start with / or contain //".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_is_checked() {
        let ok = S3Config { bucket: "b".into(), ..S3Config::default() };
        assert!(ok.validate().is_ok());
        assert!(S3Config::default().validate().is_err(), "no bucket");
        let bad = S3Config { endpoint: Some("minio:9000".into()), ..ok.clone() };
        assert!(bad.validate().is_err(), "no scheme");
        let small = S3Config { part_size_bytes: 1 << 20, ..ok.clone() };
        assert!(small.validate().is_err(), "below S3's minimum part");
        let prefix = S3Config { prefix: "/x".into(), ..ok };
        assert!(prefix.validate().is_err());
    }
}
