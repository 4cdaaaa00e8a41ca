//! The pull-through cache against a real Distribution v3.1.1 upstream behind
//! TLS (a test CA) with token or Basic auth, holding multi-arch images: what
//! the upstream serves (from its own access log), byte-exact content, an
//! outage, a moved tag and refused credentials.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_registry::config::MirrorConfig;
use berth_registry::digest::Digest;
use common::upstream::{Blob, PushedImage, Upstream, UpstreamAuth};
use common::{OCI_INDEX, OCI_MANIFEST, Registry, assert_error};
use reqwest::{Method, StatusCode};

/// A mirror `hub` of `up` with its CA and credentials in files, as a Secret
/// mounts them.
async fn mirror_of(up: &Upstream, dir: &Path, adjust: impl FnOnce(&mut MirrorConfig)) -> Registry {
    std::fs::write(dir.join("username"), format!("{}\n", up.username)).unwrap();
    std::fs::write(dir.join("password"), &up.password).unwrap();
    let mut m = MirrorConfig::new("hub", &up.url());
    m.library = Some(true);
    m.ca_file = Some(up.ca_pem_path());
    m.username_file = Some(dir.join("username"));
    m.password_file = Some(dir.join("password"));
    adjust(&mut m);
    Registry::with(|c| c.mirrors = vec![m]).await
}

async fn get(reg: &Registry, path: &str, accept: &str) -> (StatusCode, Vec<u8>) {
    let r = reg.req(Method::GET, path).header("accept", accept).send().await.unwrap();
    (r.status(), r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
}

/// Pulls every part of `image` through `reg` as `hub/app` and checks each byte.
async fn pull_all(reg: &Registry, image: &PushedImage, tag: &str) {
    let index = get(reg, &format!("/v2/hub/app/manifests/{tag}"), OCI_INDEX).await;
    assert_eq!(index, (StatusCode::OK, image.index.bytes.clone()), "the index");
    for p in &image.platforms {
        let m = get(reg, &format!("/v2/hub/app/manifests/{}", p.manifest.digest), OCI_MANIFEST).await;
        assert_eq!(m, (StatusCode::OK, p.manifest.bytes.clone()), "{} manifest", p.architecture);
        for blob in std::iter::once(&p.config).chain(&p.layers) {
            let (status, bytes) = get(reg, &format!("/v2/hub/app/blobs/{}", blob.digest), "*/*").await;
            assert_eq!(status, StatusCode::OK);
            assert!(bytes == blob.bytes, "{} of {} byte-exact", blob.digest, p.architecture);
        }
    }
}

fn blobs(image: &PushedImage) -> Vec<&Blob> {
    image.platforms.iter().flat_map(|p| std::iter::once(&p.config).chain(&p.layers)).collect()
}

#[tokio::test]
async fn twenty_clients_through_a_cold_cache_get_each_blob_fetched_once() {
    let up = Upstream::start(UpstreamAuth::Token).await;
    let image = up.push_image("library/app", "v1", &[3 << 20, 1 << 20]).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path(), |_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (m, image) = (mirror.via(mirror.base.clone()), image.clone());
        clients.push(tokio::spawn(async move { pull_all(&m, &image, "v1").await }));
    }
    for c in clients {
        c.await.unwrap();
    }
    for blob in blobs(&image) {
        assert_eq!(up.blob_gets(&blob.digest).await, 1, "{} served once", blob.digest);
    }
    assert_eq!(up.manifest_gets().await, 3, "the index by tag and two platform manifests");
    assert!(up.token_requests() >= 1, "the mirror took the token flow");

    // Warm: everything again, nothing upstream.
    pull_all(&mirror, &image, "v1").await;
    for blob in blobs(&image) {
        assert_eq!(up.blob_gets(&blob.digest).await, 1);
    }
    assert_eq!((up.manifest_gets().await, up.manifest_heads().await), (3, 0));
}

#[tokio::test]
async fn an_outage_serves_the_cache_and_a_clear_error_for_the_rest() {
    let mut up = Upstream::start(UpstreamAuth::Token).await;
    let image = up.push_image("library/app", "v1", &[100_000]).await;
    let other = up.push_image("library/other", "v1", &[100_000]).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path(), |m| m.tag_ttl_secs = 0).await;
    pull_all(&mirror, &image, "v1").await;
    up.stop();

    let started = Instant::now();
    pull_all(&mirror, &image, "v1").await;
    let r = mirror.get(&format!("/v2/hub/other/manifests/{}", other.index.digest)).await;
    let message = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    assert!(message.contains("upstream"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "no hang: {:?}", started.elapsed());

    up.start_again().await;
    let r = mirror.req(Method::GET, "/v2/hub/other/manifests/v1").header("accept", OCI_INDEX).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "back with the upstream");
}

#[tokio::test]
async fn a_moved_tag_is_seen_after_the_ttl_and_not_before() {
    let up = Upstream::start(UpstreamAuth::Token).await;
    let first = up.push_image("library/app", "v1", &[1000]).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path(), |m| m.tag_ttl_secs = 2).await;
    pull_all(&mirror, &first, "v1").await;
    let moved = up.push_image("library/app", "v1", &[2000]).await;
    assert_eq!(get(&mirror, "/v2/hub/app/manifests/v1", OCI_INDEX).await.1, first.index.bytes, "before the TTL");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    pull_all(&mirror, &moved, "v1").await;
    assert_eq!(up.manifest_heads().await, 1, "one check, then one GET of the new index");
    let digest: Digest = first.index.digest.clone();
    assert_eq!(get(&mirror, &format!("/v2/hub/app/manifests/{digest}"), OCI_INDEX).await.1, first.index.bytes);
}

#[tokio::test]
async fn basic_auth_works_and_wrong_credentials_are_a_clear_error() {
    let up = Upstream::start(UpstreamAuth::Basic).await;
    let image = up.push_image("library/app", "v1", &[1000]).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path(), |_| {}).await;
    pull_all(&mirror, &image, "v1").await;

    let wrong = tempfile::tempdir().unwrap();
    std::fs::write(wrong.path().join("nope"), "not the password").unwrap();
    let refused = mirror_of(&up, wrong.path(), |m| m.password_file = Some(wrong.path().join("nope"))).await;
    let r = refused.get("/v2/hub/app/manifests/v1").await;
    let message = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    assert!(message.contains("refused"), "{message}");
}
