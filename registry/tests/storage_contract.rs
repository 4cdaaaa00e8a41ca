//! The storage contract (`tests/contract/mod.rs`) on each backend. A backend is one
//! module here: a function making a fresh, empty storage and `storage_contract!`.

mod common;
#[macro_use]
mod contract;

use berth_registry::storage::FsStorage;

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
