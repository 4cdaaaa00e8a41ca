//! Upload sessions: POST+PUT, chunked PATCH, status, cancel, resumption.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};

async fn start(reg: &Registry, repo: &str) -> String {
    let r = reg.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-0");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    header(&r, "location")
}

async fn patch(reg: &Registry, location: &str, range: Option<&str>, body: &[u8]) -> reqwest::Response {
    let mut req = reg.req(Method::PATCH, location).body(body.to_vec());
    if let Some(range) = range {
        req = req.header("content-range", range);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn post_then_put_with_body() {
    let reg = Registry::start().await;
    let loc = start(&reg, "p").await;
    let digest = Digest::of(Algorithm::Sha256, b"whole blob");
    let r = reg.req(Method::PUT, &format!("{loc}?digest={digest}")).body("whole blob").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/p/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(reg.get(&format!("/v2/p/blobs/{digest}")).await.bytes().await.unwrap(), "whole blob");
    // The session is gone once complete.
    assert_error(reg.get(&loc).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn chunked_upload_in_order_and_out_of_order() {
    let reg = Registry::start().await;
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let loc = start(&reg, "c").await;

    let r = patch(&reg, &loc, Some("0-9999"), &data[..10_000]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-9999");
    let loc = header(&r, "location");

    // A chunk that skips ahead is refused with 416 and the current range.
    let r = patch(&reg, &loc, Some("20000-29999"), &data[20_000..]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-9999");

    // Status reports the same.
    let r = reg.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-9999");

    let r = patch(&reg, &loc, Some("10000-19999"), &data[10_000..20_000]).await;
    assert_eq!(header(&r, "range"), "0-19999");
    // The last chunk comes with the PUT.
    let r = reg
        .req(Method::PUT, &format!("{loc}?digest={digest}"))
        .header("content-range", "20000-29999")
        .body(data[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(reg.get(&format!("/v2/c/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let reg = Registry::start().await;
    let loc = start(&reg, "s").await;
    let r = patch(&reg, &loc, None, b"part one, ").await;
    let r = patch(&reg, &header(&r, "location"), None, b"part two").await;
    assert_eq!(header(&r, "range"), "0-17");
    let digest = Digest::of(Algorithm::Sha256, b"part one, part two");
    let r = reg.req(Method::PUT, &format!("{}?digest={digest}", header(&r, "location"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_chunks_are_refused_and_lose_nothing() {
    let reg = Registry::start().await;
    let loc = start(&reg, "m").await;
    patch(&reg, &loc, Some("0-3"), b"good").await;
    for bad in ["garbage", "5-2", "a-b"] {
        let r = patch(&reg, &loc, Some(bad), b"xx").await;
        assert_error(r, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    }
    // Content-Range disagreeing with the body length.
    let r = patch(&reg, &loc, Some("4-9"), b"ab").await;
    assert_error(r, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    assert_eq!(header(&reg.get(&loc).await, "range"), "0-3");
    let digest = Digest::of(Algorithm::Sha256, b"good");
    let r = reg.req(Method::PUT, &format!("{loc}?digest={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn wrong_digest_stores_nothing() {
    let reg = Registry::start().await;
    let loc = start(&reg, "w").await;
    patch(&reg, &loc, None, b"content").await;
    let wrong = Digest::of(Algorithm::Sha256, b"other");
    let r = reg.req(Method::PUT, &format!("{loc}?digest={wrong}")).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_error(reg.get(&format!("/v2/w/blobs/{wrong}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert!(files_below(&reg.root.join("blobs")).is_empty());

    let loc = start(&reg, "w").await;
    let r = reg.req(Method::PUT, &loc).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = reg.req(Method::PUT, &format!("{loc}?digest=sha256:nothex")).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn cancel_and_unknown_sessions() {
    let reg = Registry::start().await;
    let loc = start(&reg, "k").await;
    assert_eq!(reg.req(Method::DELETE, &loc).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_error(reg.get(&loc).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    for id in ["not-a-uuid", "00000000-0000-4000-8000-000000000000", "00000000000040008000000000000000"] {
        let r = reg.get(&format!("/v2/k/blobs/uploads/{id}")).await;
        assert_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // A session belongs to the repository it was started in.
    let loc = start(&reg, "k").await;
    let other = loc.replace("/v2/k/", "/v2/other/");
    assert_error(reg.get(&other).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn sessions_survive_a_restart_and_continue_on_another_replica() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let loc = {
        let first = Registry::on_root(dir.path(), |_| {}).await;
        let loc = start(&first, "resume").await;
        let r = patch(&first, &loc, Some("0-24999"), &data[..25_000]).await;
        header(&r, "location")
    };
    // Two servers on the same volume, as two replicas sharing a PersistentVolume.
    let a = Registry::on_root(dir.path(), |_| {}).await;
    let b = Registry::on_root(dir.path(), |_| {}).await;
    assert_eq!(header(&a.get(&loc).await, "range"), "0-24999");
    let r = patch(&b, &loc, Some("25000-49999"), &data[25_000..]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = a.req(Method::PUT, &format!("{loc}?digest={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(b.get(&format!("/v2/resume/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn sha512_uploads() {
    let reg = Registry::start().await;
    let data = b"sha512 chunked".to_vec();
    let digest = Digest::of(Algorithm::Sha512, &data);
    // Hashed as sha512 while streaming when the client says so up front...
    let r = reg.req(Method::POST, "/v2/h/blobs/uploads/?digest-algorithm=sha512").send().await.unwrap();
    let r = patch(&reg, &header(&r, "location"), None, &data).await;
    let r = reg.req(Method::PUT, &format!("{}?digest={digest}", header(&r, "location"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // ...and still verified correctly when it does not.
    let loc = start(&reg, "h2").await;
    let r = patch(&reg, &loc, None, &data).await;
    let r = reg.req(Method::PUT, &format!("{}?digest={digest}", header(&r, "location"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = reg.req(Method::POST, "/v2/h/blobs/uploads/?digest-algorithm=md5").send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn concurrent_pushes_of_the_same_blob() {
    let reg = std::sync::Arc::new(Registry::start().await);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (reg, data, digest) = (reg.clone(), data.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let repo = format!("same/r{}", i % 2);
            if i % 2 == 0 {
                reg.push_blob(&repo, &data).await;
            } else {
                let loc = start(&reg, &repo).await;
                let r = patch(&reg, &loc, None, &data).await;
                let r =
                    reg.req(Method::PUT, &format!("{}?digest={digest}", header(&r, "location"))).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for repo in ["same/r0", "same/r1"] {
        assert_eq!(reg.get(&format!("/v2/{repo}/blobs/{digest}")).await.bytes().await.unwrap(), data);
    }
    assert_eq!(files_below(&reg.root.join("blobs")).len(), 1);
}

#[tokio::test]
async fn abandoned_sessions_are_purged() {
    use berth_registry::storage::{FsStorage, Uploads};
    let reg = Registry::start().await;
    let old = start(&reg, "purge").await;
    patch(&reg, &old, None, b"half an upload").await;
    let fresh = start(&reg, "purge").await;
    let id = old.rsplit('/').next().unwrap();
    let data = reg.root.join("repositories/purge/_uploads").join(id);
    let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options().write(true).open(&data).unwrap().set_modified(week_ago).unwrap();

    let storage = FsStorage::open(&reg.root).unwrap();
    assert_eq!(storage.purge(std::time::Duration::from_secs(7 * 24 * 3600)).await.unwrap(), 1);
    assert_error(reg.get(&old).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(!data.with_extension("json").exists());
    assert_eq!(reg.get(&fresh).await.status(), StatusCode::NO_CONTENT);
}
