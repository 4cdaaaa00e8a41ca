//! Blob pull, range, delete and cross-repository visibility.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn get_and_head_report_size_digest_and_type() {
    let reg = Registry::start().await;
    let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let digest = reg.push_blob("a/b", &body).await;

    let r = reg.get(&format!("/v2/a/b/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert_eq!(header(&r, "content-length"), "100000");
    assert_eq!(header(&r, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(r.bytes().await.unwrap(), body);

    let r = reg.req(Method::HEAD, &format!("/v2/a/b/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "100000");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn range_requests() {
    let reg = Registry::start().await;
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let digest = reg.push_blob("r", &body).await;
    let path = format!("/v2/r/blobs/{digest}");

    let r = reg.req(Method::GET, &path).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap(), body[10..20]);

    let r = reg.req(Method::GET, &path).header("range", "bytes=-5").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), body[995..]);

    // Large blobs are served from a memory map; ranges at unaligned offsets too.
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let large_digest = reg.push_blob("r", &large).await;
    let r = reg
        .req(Method::GET, &format!("/v2/r/blobs/{large_digest}"))
        .header("range", "bytes=300001-2999998")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), large[300_001..2_999_999]);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{large_digest}")).await.bytes().await.unwrap(), large);

    for bad in ["bytes=1000-", "bytes=500-0"] {
        let r = reg.req(Method::GET, &path).header("range", bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(header(&r, "content-range"), "bytes */1000");
    }

    // Nothing of an empty blob can be selected.
    let empty = reg.push_blob("r", b"").await;
    let r = reg.req(Method::GET, &format!("/v2/r/blobs/{empty}")).header("range", "bytes=-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */0");
}

#[tokio::test]
async fn blobs_are_visible_only_where_pushed_or_mounted() {
    let reg = Registry::with(|c| c.uploads.anonymous_mount = false).await;
    let digest = reg.push_blob("team-a/app", b"private layer").await;
    let r = reg.get(&format!("/v2/team-b/app/blobs/{digest}")).await;
    assert_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;

    // Mounting from a repository that does not hold the blob falls back to an upload.
    let r = reg
        .req(Method::POST, &format!("/v2/team-b/app/blobs/uploads/?mount={digest}&from=team-c/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(header(&r, "location").starts_with("/v2/team-b/app/blobs/uploads/"));

    // Without `from` and with anonymous mounts off, the same.
    let r = reg.req(Method::POST, &format!("/v2/team-b/app/blobs/uploads/?mount={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let r = reg
        .req(Method::POST, &format!("/v2/team-b/app/blobs/uploads/?mount={digest}&from=team-a/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/team-b/app/blobs/{digest}"));
    assert_eq!(reg.get(&format!("/v2/team-b/app/blobs/{digest}")).await.bytes().await.unwrap(), "private layer");
}

#[tokio::test]
async fn anonymous_mount_links_a_stored_blob() {
    let reg = Registry::start().await;
    let digest = reg.push_blob("one", b"shared").await;
    let r = reg.req(Method::POST, &format!("/v2/two/blobs/uploads/?mount={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(reg.get(&format!("/v2/two/blobs/{digest}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_unlinks_from_one_repository_only() {
    let reg = Registry::start().await;
    let digest = reg.push_blob("x", b"data").await;
    reg.push_blob("y", b"data").await;
    let r = reg.req(Method::DELETE, &format!("/v2/x/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_error(reg.get(&format!("/v2/x/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(reg.get(&format!("/v2/y/blobs/{digest}")).await.status(), StatusCode::OK);
    let r = reg.req(Method::DELETE, &format!("/v2/x/blobs/{digest}")).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn delete_can_be_disabled() {
    let reg = Registry::with(|c| c.delete_enabled = false).await;
    let digest = reg.push_blob("x", b"data").await;
    let r = reg.req(Method::DELETE, &format!("/v2/x/blobs/{digest}")).send().await.unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    assert_eq!(reg.get(&format!("/v2/x/blobs/{digest}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn monolithic_push_verifies_the_digest_and_stores_nothing_on_mismatch() {
    let reg = Registry::start().await;
    let claimed = Digest::of(Algorithm::Sha256, b"something else");
    let r = reg
        .req(Method::POST, &format!("/v2/m/blobs/uploads/?digest={claimed}"))
        .body("actual bytes")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert!(files_below(&reg.root.join("blobs")).is_empty());
    assert!(files_below(&reg.root.join("tmp")).is_empty());

    let sha512 = Digest::of(Algorithm::Sha512, b"sha512 content");
    let r = reg
        .req(Method::POST, &format!("/v2/m/blobs/uploads/?digest={sha512}"))
        .body("sha512 content")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(reg.get(&format!("/v2/m/blobs/{sha512}")).await.bytes().await.unwrap(), "sha512 content");
}

#[tokio::test]
async fn read_only_refuses_writes_but_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let reg = Registry::on_root(dir.path(), |_| {}).await;
        reg.push_blob("ro", b"kept").await
    };
    let reg = Registry::on_root(dir.path(), |c| c.read_only = true).await;
    assert_eq!(reg.get(&format!("/v2/ro/blobs/{digest}")).await.status(), StatusCode::OK);
    let r = reg.req(Method::POST, "/v2/ro/blobs/uploads/").send().await.unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let r = reg.req(Method::DELETE, &format!("/v2/ro/blobs/{digest}")).send().await.unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}
