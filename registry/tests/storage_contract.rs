//! The storage contract (`tests/contract/mod.rs`) on each backend. A backend is one
//! module here: a function making a fresh, empty storage and `storage_contract!`.

mod common;
#[macro_use]
mod contract;

use std::sync::Arc;

use berth_registry::config::QuotaConfig;
use berth_registry::observe::Metrics;
use berth_registry::storage::{FsStorage, Observed, Quota, UsageBook};

/// The filesystem backend on a fresh temporary directory, removed when the
/// returned guard drops.
async fn fs_backend() -> (FsStorage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsStorage::open(dir.path().join("root")).unwrap();
    (storage, dir)
}

mod fs {
    storage_contract!(super::fs_backend());
}

/// The layers the server puts over a backend: timing and spans over the
/// quotas over the filesystem, with quota limits set (far above what the
/// contract stores) so every check and stream cap runs. They must keep the
/// contract of what they wrap.
async fn layered_backend() -> (Observed<Quota<FsStorage>>, tempfile::TempDir) {
    let (fs, dir) = fs_backend().await;
    let config = QuotaConfig { total_bytes: 1 << 40, repository_bytes: 1 << 40, overrides: Vec::new() };
    let quota = Quota::new(Arc::new(fs), config, Arc::new(UsageBook::new()));
    let operations = Metrics::new(true).storage_operations.clone();
    (Observed::new(Arc::new(quota), Some(operations)), dir)
}

mod layered {
    storage_contract!(super::layered_backend());
}

/// The S3 backend on a real MinIO (started once per test binary), each check
/// under a fresh key prefix.
async fn s3_backend() -> (berth_registry::storage::S3Storage, ()) {
    let config = common::minio::s3_config();
    (berth_registry::storage::S3Storage::open(&config).await.unwrap(), ())
}

mod s3 {
    storage_contract!(super::s3_backend());
}
