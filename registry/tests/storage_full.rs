//! A full disk, for real: the storage root sits on a small tmpfs this test
//! mounts and fills. A push that runs out of space gets 507, leaves nothing
//! visible and no files behind, and pushes work again once there is room.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const MIB: usize = 1 << 20;

/// A tmpfs of `size` mounted on a fresh directory, lazily unmounted on drop (the
/// server may still hold a file open while it shuts down).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test fills a small tmpfs, which it mounts itself: it must run as root (CI does). mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Takes every byte still free on the filesystem of `dir`, in a file it returns.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                break;
            }
        }
    }
    path
}

async fn assert_full(r: reqwest::Response) {
    let message = assert_error(r, StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN").await;
    assert_eq!(message, "the registry's storage is full");
}

fn assert_no_temporary_files(root: &Path) {
    let left = files_below(&root.join("tmp"));
    assert!(left.is_empty(), "files left in tmp/: {left:?}");
}

async fn monolithic(reg: &Registry, repo: &str, bytes: &[u8]) -> reqwest::Response {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    reg.req(Method::POST, &path).body(bytes.to_vec()).send().await.unwrap()
}

#[tokio::test]
async fn a_full_disk_fails_the_push_cleanly_and_pushes_work_again_once_there_is_room() {
    let disk = Tmpfs::mount("8m");
    let root = disk.path().join("root");
    let reg = Registry::on_root(&root, |_| {}).await;
    // Space to give back at the end: deleting through the API only unlinks.
    let reserve = disk.path().join("reserve");
    std::fs::write(&reserve, vec![0u8; 2 * MIB]).unwrap();

    let kept = content(1, MIB);
    let kept_digest = reg.push_blob("full", &kept).await;
    let config = reg.push_blob("full", b"{}").await;
    let session_data = content(2, 2 * MIB);
    let r = reg.req(Method::POST, "/v2/full/blobs/uploads/").send().await.unwrap();
    let r = reg.req(Method::PATCH, &header(&r, "location")).body(session_data[..MIB].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = header(&r, "location");

    // Monolithic pushes until the disk is full.
    let mut pushed = 0;
    loop {
        let r = monolithic(&reg, "full", &content(10 + pushed, MIB)).await;
        if r.status() != StatusCode::CREATED {
            assert_full(r).await;
            break;
        }
        pushed += 1;
        assert!(pushed < 8, "8 MiB took 8 more MiB");
    }
    assert_no_temporary_files(&root);

    // A chunk that cannot fit fails; the session keeps what it acknowledged, on
    // disk too (the failed bytes are cut off at once).
    let r = reg.req(Method::PATCH, &location).body(session_data[MIB..].to_vec()).send().await.unwrap();
    assert_full(r).await;
    let r = reg.get(&location).await;
    assert_eq!(header(&r, "range"), format!("0-{}", MIB - 1));
    let id = location.rsplit('/').next().unwrap();
    let session_file = root.join("repositories/full/_uploads").join(id);
    assert_eq!(std::fs::metadata(&session_file).unwrap().len(), MIB as u64);

    // With not a page free, a manifest fails as cleanly.
    let filler = fill(disk.path());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": kept_digest.to_string(), "size": MIB}]
    }))
    .unwrap();
    assert_full(reg.put_manifest("full", "v1", OCI_MANIFEST, &manifest).await).await;
    assert_no_temporary_files(&root);
    let r = reg.req(Method::GET, "/v2/full/manifests/v1").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing of the failed manifest is visible");

    // Room again: everything works, and what was stored before is intact.
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(reserve).unwrap();
    let r = reg.put_manifest("full", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let digest = Digest::of(Algorithm::Sha256, &session_data);
    let r = reg.req(Method::PUT, &format!("{location}?digest={digest}")).body(session_data[MIB..].to_vec());
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    assert_eq!(reg.get(&format!("/v2/full/blobs/{digest}")).await.bytes().await.unwrap(), session_data);
    assert_eq!(reg.get(&format!("/v2/full/blobs/{kept_digest}")).await.bytes().await.unwrap(), kept);
    assert_eq!(monolithic(&reg, "full", b"small").await.status(), StatusCode::CREATED);
    assert_no_temporary_files(&root);
    let (checked, bad) = verify_blob_files(&root);
    assert!(checked >= 3 && bad.is_empty(), "{checked} blobs checked: {bad:?}");
}

/// Polls `/readyz` until it answers `status`, and returns its body.
async fn readiness(reg: &Registry, status: StatusCode) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let r = reg.get("/readyz").await;
        let got = r.status();
        last = r.text().await.unwrap();
        if got == status {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {status}; last: {last}");
}

fn remount(dir: &Path, mode: &str) {
    let out = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(dir).output().unwrap();
    assert!(out.status.success(), "remount {mode}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn readiness_follows_a_read_only_and_a_full_volume_and_comes_back() {
    let disk = Tmpfs::mount("4m");
    let root = disk.path().join("root");
    let reg = Registry::on_root(&root, |c| c.health.probe_interval_secs = 1).await;
    readiness(&reg, StatusCode::OK).await;
    let digest = reg.push_blob("ready", b"kept").await;
    let healthy = |s: &Scrape| s.sum("berth_registry_storage_healthy", &[]);

    remount(disk.path(), "ro");
    let reason = readiness(&reg, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(reason, "the storage is read-only\n", "only the kind of failure, for strangers");
    assert_eq!(reg.get("/healthz").await.status(), StatusCode::OK, "liveness stays: a restart would not help");
    assert_eq!(healthy(&Scrape::of(&reg, "/metrics").await), 0.0);
    let pulled = reg.get(&format!("/v2/ready/blobs/{digest}")).await;
    assert_eq!(pulled.bytes().await.unwrap().as_ref(), b"kept", "pulls still work on the registry itself");
    // A read-only registry on that volume only reads: it is ready.
    let reader = Registry::on_root(&root, |c| {
        c.read_only = true;
        c.health.probe_interval_secs = 1;
    })
    .await;
    readiness(&reader, StatusCode::OK).await;
    drop(reader);
    remount(disk.path(), "rw");
    readiness(&reg, StatusCode::OK).await;
    assert_eq!(healthy(&Scrape::of(&reg, "/metrics").await), 1.0);

    let filler = fill(disk.path());
    let reason = readiness(&reg, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(reason, "the storage is full\n");
    std::fs::remove_file(filler).unwrap();
    readiness(&reg, StatusCode::OK).await;
    assert_no_temporary_files(&root);
}
