//! What clients and crashes leave behind is cleaned up; the catalog needs no walk
//! of the tree, and a storage root from before the catalog index gets one.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use berth_registry::storage::{Catalog, FsStorage, Uploads};
use common::*;
use reqwest::{Method, StatusCode};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Makes `path` look untouched for `age`.
fn backdate(path: &Path, age: Duration) {
    let then = SystemTime::now() - age;
    std::fs::File::open(path).unwrap().set_modified(then).unwrap();
}

fn backdate_tree(dir: &Path, age: Duration) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            backdate_tree(&entry.path(), age);
        } else {
            backdate(&entry.path(), age);
        }
    }
    backdate(dir, age);
}

async fn catalog(reg: &Registry) -> serde_json::Value {
    reg.get("/v2/_catalog").await.json::<serde_json::Value>().await.unwrap()["repositories"].clone()
}

#[tokio::test]
async fn a_root_without_the_catalog_index_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let reg = Registry::on_root(dir.path(), |_| {}).await;
        reg.push_image("b/nested", "t", b"layer").await;
        reg.push_blob("a", b"only a blob").await;
    }
    std::fs::remove_dir_all(dir.path().join("repositories/_index")).unwrap();
    let storage = FsStorage::open(dir.path()).unwrap();
    assert_eq!(storage.repositories().await.unwrap(), ["a", "b/nested"]);
}

#[tokio::test]
async fn leftovers_are_removed_and_live_state_kept() {
    let reg = Registry::start().await;
    let root = reg.root.clone();
    reg.push_image("kept", "t", b"layer").await;
    // A repository that only ever saw an upload, abandoned long ago.
    let r = reg.req(Method::POST, "/v2/abandoned/blobs/uploads/").send().await.unwrap();
    let abandoned = header(&r, "location");
    // A fresh session elsewhere, and one whose data is gone but whose state stayed.
    let r = reg.req(Method::POST, "/v2/fresh/blobs/uploads/").send().await.unwrap();
    let fresh = header(&r, "location");
    let orphan_state = root.join("repositories/kept/_uploads/0d7e0b3e-51a4-4b5c-9a36-4e2a2b4fb3a1.json");
    std::fs::create_dir_all(orphan_state.parent().unwrap()).unwrap();
    std::fs::write(&orphan_state, b"{}").unwrap();
    backdate(&orphan_state, WEEK * 2);
    // Temporary files: one a dead writer left, one being written.
    let (dead, live) = (root.join("tmp/.tmpDEAD"), root.join("tmp/.tmpLIVE"));
    std::fs::write(&dead, b"half").unwrap();
    std::fs::write(&live, b"half").unwrap();
    backdate(&dead, Duration::from_secs(2 * 24 * 3600));
    backdate_tree(&root.join("repositories/abandoned"), WEEK * 2);
    // A repository whose only blob was deleted.
    let digest = reg.push_blob("emptied", b"soon gone").await;
    let r = reg.req(Method::DELETE, &format!("/v2/emptied/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(catalog(&reg).await, serde_json::json!(["emptied", "kept"]));

    // An entry lost to a race (removed while a push was between its entry and its link).
    std::fs::remove_file(root.join("repositories/_index/kept")).unwrap();
    assert_eq!(catalog(&reg).await, serde_json::json!(["emptied"]));

    // Its entry was marked by the push an instant ago; a write on its way would be.
    backdate(&root.join("repositories/_index/emptied"), Duration::from_secs(3600));

    let storage = FsStorage::open(&root).unwrap();
    assert_eq!(storage.purge(WEEK).await.unwrap(), 1);

    assert!(!root.join("repositories/abandoned").exists(), "the abandoned repository's directories stay");
    assert!(!orphan_state.exists());
    assert!(!dead.exists() && live.exists());
    assert_error(reg.get(&abandoned).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(reg.get(&fresh).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(catalog(&reg).await, serde_json::json!(["kept"]));
    let r = reg.req(Method::GET, "/v2/kept/manifests/t").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
