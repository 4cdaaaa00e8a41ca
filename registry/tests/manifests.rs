//! Manifest push, pull, negotiation, validation and delete.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn put_and_get_by_tag_and_digest_byte_for_byte() {
    let reg = Registry::start().await;
    let m = reg.image_manifest("img", b"layer", None).await;
    // Odd formatting must survive: the digest is over the exact bytes.
    let body = format!("{}\n\n", serde_json::to_string_pretty(&m).unwrap()).into_bytes();
    let digest = Digest::of(Algorithm::Sha256, &body);
    let r = reg.put_manifest("img", "v1", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    assert_eq!(header(&r, "location"), format!("/v2/img/manifests/{digest}"));

    for reference in ["v1".to_owned(), digest.to_string()] {
        let r = reg
            .req(Method::GET, &format!("/v2/img/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert_eq!(r.bytes().await.unwrap(), body);
        let r = reg
            .req(Method::HEAD, &format!("/v2/img/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), body.len().to_string());
    }
    let r = reg
        .req(Method::GET, "/v2/img/manifests/v1")
        .header("accept", OCI_MANIFEST)
        .header("if-none-match", format!("\"{digest}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&r, "etag"), format!("\"{digest}\""));
    // A matching ETag says nothing about a manifest this repository does not have.
    let r = reg
        .req(Method::GET, &format!("/v2/other/manifests/{digest}"))
        .header("accept", OCI_MANIFEST)
        .header("if-none-match", format!("\"{digest}\""))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn put_by_digest_checks_the_digest_and_applies_tag_params() {
    let reg = Registry::start().await;
    let body = bytes(&reg.image_manifest("d", b"l", None).await);
    let digest = Digest::of(Algorithm::Sha256, &body);
    let wrong = Digest::of(Algorithm::Sha256, b"x");
    let r = reg.put_manifest("d", &wrong.to_string(), OCI_MANIFEST, &body).await;
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_error(reg.get(&format!("/v2/d/manifests/{wrong}")).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    let r = reg.put_manifest("d", &format!("{digest}?tag=a&tag=b"), OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<_> = r.headers().get_all("oci-tag").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(tags, ["a", "b"]);
    let list: serde_json::Value = reg.get("/v2/d/tags/list").await.json().await.unwrap();
    assert_eq!(list["tags"], json!(["a", "b"]));

    let many: String = (0..101).map(|i| format!("tag=t{i}&")).collect();
    let r = reg.put_manifest("d", &format!("{digest}?{many}"), OCI_MANIFEST, &body).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;

    let sha512 = Digest::of(Algorithm::Sha512, &body);
    let r = reg.put_manifest("d", &sha512.to_string(), OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), sha512.to_string());
}

#[tokio::test]
async fn references_must_exist_unless_configured_otherwise() {
    let reg = Registry::start().await;
    let mut m = reg.image_manifest("v", b"layer", None).await;
    let missing = Digest::of(Algorithm::Sha256, b"never pushed");
    m["layers"][0]["digest"] = json!(missing.to_string());
    let r = reg.put_manifest("v", "t", OCI_MANIFEST, &bytes(&m)).await;
    let message = assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(message.contains(&missing.to_string()), "{message}");
    assert_error(reg.get("/v2/v/manifests/t").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Every missing reference is reported, once each, with its digest.
    let config = Digest::of(Algorithm::Sha256, b"no config either");
    m["config"]["digest"] = json!(config.to_string());
    m["layers"] = json!([
        {"mediaType": OCI_LAYER, "digest": missing.to_string(), "size": 12},
        {"mediaType": OCI_LAYER, "digest": missing.to_string(), "size": 12},
    ]);
    let r = reg.put_manifest("v", "t", OCI_MANIFEST, &bytes(&m)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    let reported: Vec<_> = body["errors"].as_array().unwrap().iter().map(|e| e["detail"]["digest"].clone()).collect();
    assert_eq!(reported, [json!(config.to_string()), json!(missing.to_string())], "{body}");
    assert!(body["errors"].as_array().unwrap().iter().all(|e| e["code"] == "MANIFEST_BLOB_UNKNOWN"));
    m = reg.image_manifest("v", b"layer", None).await;

    // A blob in another repository does not count.
    let other = reg.push_blob("elsewhere", b"elsewhere").await;
    m["layers"][0]["digest"] = json!(other.to_string());
    let r = reg.put_manifest("v", "t", OCI_MANIFEST, &bytes(&m)).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": missing.to_string(), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}
    ]});
    let r = reg.put_manifest("v", "i", OCI_INDEX, &bytes(&index)).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;

    let lax = Registry::with(|c| {
        c.manifests.validation.blob_references = false;
        c.manifests.validation.indexes.platforms = berth_registry::config::IndexPlatforms::None;
    })
    .await;
    assert_eq!(lax.put_manifest("v", "t", OCI_MANIFEST, &bytes(&m)).await.status(), StatusCode::CREATED);
    assert_eq!(lax.put_manifest("v", "i", OCI_INDEX, &bytes(&index)).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_nothing_stored() {
    let reg = Registry::with(|c| c.manifests.validation.max_size = 1024).await;
    let good = bytes(&reg.image_manifest("bad", b"l", None).await);
    let r = reg.put_manifest("bad", "t", OCI_MANIFEST, b"{not json").await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let r = reg.put_manifest("bad", "t", "text/plain", &good).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let r = reg.put_manifest("bad", "t", OCI_INDEX, &good).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let r = reg.put_manifest("bad", "t", OCI_MANIFEST, &vec![b' '; 2048]).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    let r = reg.put_manifest("bad", "bad:tag", OCI_MANIFEST, &good).await;
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = reg.put_manifest("bad", "-tag", OCI_MANIFEST, &good).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let tags: serde_json::Value = reg.get("/v2/bad/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
}

#[tokio::test]
async fn handlers_are_switched_by_configuration() {
    let reg = Registry::with(|c| c.manifests.oci.image_manifest = false).await;
    let body = bytes(&reg.image_manifest("off", b"l", None).await);
    let message = assert_error(
        reg.put_manifest("off", "t", OCI_MANIFEST, &body).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
    assert!(message.contains(OCI_MANIFEST), "{message}");

    let config = reg.push_blob("s1", b"{}").await;
    let schema1 = json!({
        "schemaVersion": 1, "name": "s1", "tag": "old", "architecture": "amd64",
        "fsLayers": [{"blobSum": config.to_string()}], "history": [{"v1Compatibility": "{}"}]
    });
    let message = assert_error(
        reg.put_manifest("s1", "old", DOCKER_SCHEMA1, &bytes(&schema1)).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
    assert!(message.contains("disabled"), "{message}");

    let legacy = Registry::with(|c| c.manifests.docker.schema1 = true).await;
    legacy.push_blob("s1", b"{}").await;
    let r = legacy.put_manifest("s1", "old", DOCKER_SCHEMA1, &bytes(&schema1)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = legacy.get("/v2/s1/manifests/old").await;
    assert_eq!(header(&r, "content-type"), DOCKER_SCHEMA1);
}

/// Pushes a Docker schema2 image and a manifest list holding it for linux/amd64.
async fn push_docker_list(reg: &Registry, repo: &str) -> (Digest, Digest) {
    let config = reg.push_blob(repo, b"{}").await;
    let layer = reg.push_blob(repo, b"layer").await;
    let image = bytes(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_SCHEMA2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer.to_string(), "size": 5}]
    }));
    let image_digest = Digest::of(Algorithm::Sha256, &image);
    assert_eq!(
        reg.put_manifest(repo, &image_digest.to_string(), DOCKER_SCHEMA2, &image).await.status(),
        StatusCode::CREATED
    );
    let list = bytes(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_SCHEMA2, "digest": image_digest.to_string(), "size": image.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}]
    }));
    assert_eq!(reg.put_manifest(repo, "multi", DOCKER_LIST, &list).await.status(), StatusCode::CREATED);
    (image_digest, Digest::of(Algorithm::Sha256, &list))
}

#[tokio::test]
async fn content_negotiation_follows_distribution() {
    let reg = Registry::start().await;
    let (digest, _) = reg.push_image("neg", "oci", b"layer").await;
    // OCI manifests go only to clients that accept them.
    let r = reg.get("/v2/neg/manifests/oci").await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = reg
        .req(Method::GET, &format!("/v2/neg/manifests/{digest}"))
        .header("accept", format!("{DOCKER_SCHEMA2}, {OCI_MANIFEST};q=0.5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (image, list) = push_docker_list(&reg, "neg").await;
    let r = reg.req(Method::GET, "/v2/neg/manifests/multi").header("accept", DOCKER_LIST).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), list.to_string());
    // A client that cannot read manifest lists gets the linux/amd64 image by tag...
    let r = reg.req(Method::GET, "/v2/neg/manifests/multi").header("accept", DOCKER_SCHEMA2).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), image.to_string());
    assert_eq!(header(&r, "content-type"), DOCKER_SCHEMA2);
    // ...is refused if it cannot read schema2 either...
    assert_error(reg.get("/v2/neg/manifests/multi").await, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // ...and gets the list itself by digest.
    let r = reg.get(&format!("/v2/neg/manifests/{list}")).await;
    assert_eq!(header(&r, "content-type"), DOCKER_LIST);
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let reg = Registry::start().await;
    let (digest, _) = reg.push_image("del", "one", b"l").await;
    let body = reg.get(&format!("/v2/del/manifests/{digest}")).await;
    assert_eq!(body.status(), StatusCode::NOT_FOUND, "no Accept header: OCI manifest hidden");
    let r = reg
        .put_manifest(
            "del",
            "two",
            OCI_MANIFEST,
            &reg.req(Method::GET, "/v2/del/manifests/one")
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    assert_eq!(reg.req(Method::DELETE, "/v2/del/manifests/one").send().await.unwrap().status(), StatusCode::ACCEPTED);
    let tags: serde_json::Value = reg.get("/v2/del/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["two"]));
    // Deleting by digest removes the manifest and every tag on it.
    assert_eq!(
        reg.req(Method::DELETE, &format!("/v2/del/manifests/{digest}")).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let tags: serde_json::Value = reg.get("/v2/del/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
    let r = reg
        .req(Method::GET, &format!("/v2/del/manifests/{digest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let r = reg.req(Method::DELETE, &format!("/v2/del/manifests/{digest}")).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn tags_move_last_writer_wins() {
    let reg = std::sync::Arc::new(Registry::start().await);
    let mut digests = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..6u8 {
        let body = bytes(&reg.image_manifest("race", &[i; 10], None).await);
        digests.push(Digest::of(Algorithm::Sha256, &body));
        bodies.push(body);
    }
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.put_manifest("race", "latest", OCI_MANIFEST, &body).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let r = reg.req(Method::GET, "/v2/race/manifests/latest").header("accept", OCI_MANIFEST).send().await.unwrap();
    let served = Digest::of(Algorithm::Sha256, &r.bytes().await.unwrap());
    assert!(digests.contains(&served));
}

#[tokio::test]
async fn caches_never_serve_a_moved_or_deleted_tag_even_across_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let a = Registry::on_root(dir.path(), |_| {}).await;
    let b = Registry::on_root(dir.path(), |_| {}).await;
    let get = |reg: &Registry, reference: String| {
        reg.req(Method::GET, &format!("/v2/cache/manifests/{reference}")).header("accept", OCI_MANIFEST).send()
    };
    let (first, _) = a.push_image("cache", "latest", b"one").await;
    assert_eq!(header(&get(&a, "latest".into()).await.unwrap(), "docker-content-digest"), first.to_string());
    // Moved on the other replica: this one must notice.
    let (second, _) = b.push_image("cache", "latest", b"two").await;
    assert_eq!(header(&get(&a, "latest".into()).await.unwrap(), "docker-content-digest"), second.to_string());
    // Deleted on the other replica, by tag and then by digest.
    assert_eq!(get(&a, second.to_string()).await.unwrap().status(), StatusCode::OK);
    b.req(Method::DELETE, "/v2/cache/manifests/latest").send().await.unwrap();
    assert_error(get(&a, "latest".into()).await.unwrap(), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    b.req(Method::DELETE, &format!("/v2/cache/manifests/{second}")).send().await.unwrap();
    assert_error(get(&a, second.to_string()).await.unwrap(), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Re-pushed content is served again.
    let (again, _) = b.push_image("cache", "latest", b"two").await;
    assert_eq!(again, second);
    assert_eq!(get(&a, "latest".into()).await.unwrap().status(), StatusCode::OK);
}
