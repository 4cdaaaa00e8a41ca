//! The pull-through cache against an upstream berth on loopback: what is
//! fetched once and then served locally, what coalesces, what a dead or lying
//! upstream leads to, and that mirrored repositories cannot be written.

mod common;

use std::time::{Duration, Instant};

use berth_registry::config::MirrorConfig;
use berth_registry::digest::{Algorithm, Digest};
use common::{OCI_MANIFEST, Registry, Scrape, assert_error, content};
use reqwest::{Method, StatusCode};

/// An upstream holding `library/app:v1` (Docker Hub's layout), and its digests.
struct Upstream {
    reg: Registry,
    manifest: Digest,
    blobs: Vec<(Digest, Vec<u8>)>,
}

async fn upstream(layer_len: usize) -> Upstream {
    let reg = Registry::start().await;
    let layer = content(7, layer_len);
    let (manifest, _) = reg.push_image("library/app", "v1", &layer).await;
    let blobs =
        vec![(Digest::of(Algorithm::Sha256, b"{}"), b"{}".to_vec()), (Digest::of(Algorithm::Sha256, &layer), layer)];
    Upstream { reg, manifest, blobs }
}

impl Upstream {
    /// Requests the upstream answered, by route and method.
    async fn served(&self, route: &str, method: &str) -> f64 {
        let s = Scrape::of(&self.reg, "/metrics").await;
        s.sum("berth_registry_http_requests_total", &[("route", route), ("method", method)])
    }
}

async fn mirror_of(up: &Upstream, adjust: impl FnOnce(&mut MirrorConfig)) -> Registry {
    let mut m = MirrorConfig::new("hub", &up.reg.base);
    m.library = Some(true);
    adjust(&mut m);
    Registry::with(|c| c.mirrors = vec![m]).await
}

async fn pull_manifest(reg: &Registry, reference: &str) -> (StatusCode, Vec<u8>, String) {
    let r = reg
        .req(Method::GET, &format!("/v2/hub/app/manifests/{reference}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let digest = common::header(&r, "docker-content-digest");
    (r.status(), r.bytes().await.unwrap().to_vec(), digest)
}

async fn pull_blob(reg: &Registry, digest: &Digest) -> (StatusCode, Vec<u8>) {
    let r = reg.get(&format!("/v2/hub/app/blobs/{digest}")).await;
    (r.status(), r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
}

#[tokio::test]
async fn a_pull_fills_the_cache_and_the_next_one_stays_local() {
    let up = upstream(300_000).await;
    let mirror = mirror_of(&up, |_| {}).await;
    let (status, bytes, digest) = pull_manifest(&mirror, "v1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Digest::of(Algorithm::Sha256, &bytes), up.manifest, "the upstream's bytes, unchanged");
    assert_eq!(digest, up.manifest.to_string());
    for (d, want) in &up.blobs {
        assert_eq!(pull_blob(&mirror, d).await, (StatusCode::OK, want.clone()));
    }
    assert_eq!(up.served("blob", "GET").await, 2.0);
    assert_eq!(up.served("manifest", "GET").await, 1.0);

    // Everything again, by tag and digest, with a range: nothing goes upstream.
    assert_eq!(pull_manifest(&mirror, "v1").await.0, StatusCode::OK);
    assert_eq!(pull_manifest(&mirror, &up.manifest.to_string()).await.1, bytes);
    for (d, want) in &up.blobs {
        assert_eq!(pull_blob(&mirror, d).await.1, *want);
    }
    let (layer, want) = &up.blobs[1];
    let r = mirror
        .req(Method::GET, &format!("/v2/hub/app/blobs/{layer}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), want[10..20]);
    assert_eq!((up.served("blob", "GET").await, up.served("manifest", "GET").await), (2.0, 1.0));
    assert_eq!(up.served("manifest", "HEAD").await, 0.0, "the tag is trusted for its TTL");

    let s = Scrape::of(&mirror, "/metrics").await;
    let count = |kind, result| {
        s.sum("berth_registry_mirror_requests_total", &[("mirror", "hub"), ("kind", kind), ("result", result)])
    };
    assert_eq!((count("manifest", "miss"), count("blob", "miss")), (1.0, 2.0));
    assert_eq!((count("manifest", "hit"), count("blob", "hit")), (2.0, 3.0));
    let upstream_bytes = s.sum("berth_registry_mirror_upstream_bytes_total", &[("mirror", "hub")]);
    assert_eq!(upstream_bytes as usize, bytes.len() + 2 + 300_000);
}

#[tokio::test]
async fn a_missing_image_is_unknown_and_other_names_are_not_mirrored() {
    let up = upstream(10).await;
    let mirror = mirror_of(&up, |_| {}).await;
    let r = mirror.get("/v2/hub/nothing/manifests/v1").await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let absent = Digest::of(Algorithm::Sha256, b"absent");
    assert_error(mirror.get(&format!("/v2/hub/app/blobs/{absent}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    // A blob stored for another repository is not served through one whose
    // upstream lacks it.
    let (layer, _) = &up.blobs[1];
    assert_eq!(pull_blob(&mirror, layer).await.0, StatusCode::OK);
    let r = mirror.get(&format!("/v2/hub/nothing/blobs/{layer}")).await;
    assert_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    // Outside the prefix the registry is an ordinary one.
    assert_error(mirror.get("/v2/library/app/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(up.served("manifest", "GET").await, 1.0, "only hub/nothing was asked upstream");
}

#[tokio::test]
async fn mirrored_repositories_refuse_writes() {
    let up = upstream(10).await;
    let mirror = mirror_of(&up, |_| {}).await;
    assert_eq!(pull_manifest(&mirror, "v1").await.0, StatusCode::OK);
    let r = mirror.put_manifest("hub/app", "v2", OCI_MANIFEST, b"{}").await;
    assert!(assert_error(r, StatusCode::FORBIDDEN, "DENIED").await.contains("read-only"));
    let r = mirror.req(Method::POST, "/v2/hub/app/blobs/uploads/").send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    let r = mirror.req(Method::DELETE, &format!("/v2/hub/app/manifests/{}", up.manifest)).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(pull_manifest(&mirror, "v1").await.0, StatusCode::OK, "still there");
    // Pushing next to the mirror works.
    mirror.push_image("mine/app", "v1", b"layer").await;
}

#[tokio::test]
async fn twenty_clients_of_a_cold_cache_make_one_upstream_fetch_each() {
    let up = upstream(8 << 20).await;
    let mirror = mirror_of(&up, |_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (m, blobs) = (mirror.via(mirror.base.clone()), up.blobs.clone());
        clients.push(tokio::spawn(async move {
            let (status, _, _) = pull_manifest(&m, "v1").await;
            assert_eq!(status, StatusCode::OK);
            for (d, want) in &blobs {
                let (status, got) = pull_blob(&m, d).await;
                assert_eq!(status, StatusCode::OK);
                assert!(got == *want, "byte-exact {d}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(up.served("manifest", "GET").await, 1.0);
    assert_eq!(up.served("blob", "GET").await, 2.0, "each blob once");
    let s = Scrape::of(&mirror, "/metrics").await;
    let coalesced = s.sum("berth_registry_mirror_requests_total", &[("result", "coalesced")]);
    let hits = s.sum("berth_registry_mirror_requests_total", &[("result", "hit")]);
    assert_eq!(coalesced + hits, 57.0, "the other 19 pulls of 3 things: {coalesced} coalesced, {hits} hits");
}

#[tokio::test]
async fn a_moved_tag_is_seen_after_the_ttl_and_not_before() {
    let up = upstream(10).await;
    let mirror = mirror_of(&up, |m| m.tag_ttl_secs = 2).await;
    let (_, _, first) = pull_manifest(&mirror, "v1").await;
    let (moved, _) = up.reg.push_image("library/app", "v1", b"another layer").await;
    assert_eq!(pull_manifest(&mirror, "v1").await.2, first, "trusted within the TTL");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, bytes, digest) = pull_manifest(&mirror, "v1").await;
    assert_eq!((status, digest), (StatusCode::OK, moved.to_string()));
    assert_eq!(Digest::of(Algorithm::Sha256, &bytes), moved);
    assert_eq!(up.served("manifest", "HEAD").await, 1.0, "one check");
    // An unmoved tag past its TTL costs a HEAD, no GET.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let gets = up.served("manifest", "GET").await;
    assert_eq!(pull_manifest(&mirror, "v1").await.2, moved.to_string());
    assert_eq!((up.served("manifest", "HEAD").await, up.served("manifest", "GET").await), (2.0, gets));
    // The old image stays pullable by digest.
    assert_eq!(pull_manifest(&mirror, &first).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_dead_upstream_leaves_the_cache_serving_and_the_rest_a_clear_error() {
    let up = upstream(1000).await;
    let mirror = mirror_of(&up, |m| m.tag_ttl_secs = 0).await;
    assert_eq!(pull_manifest(&mirror, "v1").await.0, StatusCode::OK);
    for (d, _) in &up.blobs {
        assert_eq!(pull_blob(&mirror, d).await.0, StatusCode::OK);
    }
    drop(up.reg);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (status, bytes, _) = pull_manifest(&mirror, "v1").await;
    assert_eq!((status, Digest::of(Algorithm::Sha256, &bytes)), (StatusCode::OK, up.manifest), "stale if error");
    for (d, want) in &up.blobs {
        assert_eq!(pull_blob(&mirror, d).await.1, *want);
    }
    let r = mirror.get("/v2/hub/other/manifests/v1").await;
    let message = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    assert!(message.contains("cannot be reached"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "no hang: {:?}", started.elapsed());
    let s = Scrape::of(&mirror, "/metrics").await;
    assert_eq!(s.sum("berth_registry_mirror_requests_total", &[("kind", "manifest"), ("result", "stale")]), 1.0);
}

mod cap {
    use std::sync::Arc;

    use berth_registry::config::{CollectorConfig, RetentionConfig, Span};
    use berth_registry::gc::{Collector, Mode, ProtectedSet};
    use berth_registry::storage::FsStorage;

    use super::*;

    /// One collection by a collector that keeps `mirror`'s cap.
    async fn collect(reg: &Registry, mirror: &MirrorConfig, protected: &str) {
        tokio::time::sleep(Duration::from_millis(30)).await; // one coarse clock tick: see gc.rs
        let gc = CollectorConfig { interval: None, grace_period: Span::secs(0), ..CollectorConfig::default() };
        let storage = Arc::new(FsStorage::open(&reg.root).unwrap());
        let c = Arc::new(
            Collector::new(storage, gc, RetentionConfig::default()).with_mirrors(std::slice::from_ref(mirror)),
        );
        for _ in 0..200 {
            let run = c.run(Mode::Collect { dry_run: false }, None, ProtectedSet::parse(protected)).await.unwrap();
            if run.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the collector lock stayed taken");
    }

    /// Three images of 100 kB upstream, pulled through the mirror in order a, b, c.
    async fn three_pulled(cap: u64) -> (Registry, Registry, MirrorConfig) {
        let up = Registry::start().await;
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            up.push_image(&format!("library/{name}"), "v1", &content(i as u64 + 20, 100_000)).await;
        }
        let mut m = MirrorConfig::new("hub", &up.base);
        m.library = Some(true);
        m.max_bytes = Some(cap);
        let mirror = Registry::with(|c| c.mirrors = vec![m.clone()]).await;
        for name in ["a", "b", "c"] {
            pull_image(&mirror, name).await;
            // Pulls are stamped by the filesystem's clock: keep them apart.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        (up, mirror, m)
    }

    async fn pull_image(reg: &Registry, name: &str) {
        let r = reg
            .req(Method::GET, &format!("/v2/hub/{name}/manifests/v1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let manifest: serde_json::Value = r.json().await.unwrap();
        for blob in manifest["layers"].as_array().unwrap().iter().chain([&manifest["config"]]) {
            let r = reg.get(&format!("/v2/hub/{name}/blobs/{}", blob["digest"].as_str().unwrap())).await;
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap();
        }
    }

    async fn upstream_gets(up: &Registry) -> (f64, f64) {
        let s = Scrape::of(up, "/metrics").await;
        let n = |route| s.sum("berth_registry_http_requests_total", &[("route", route), ("method", "GET")]);
        (n("manifest"), n("blob"))
    }

    #[tokio::test]
    async fn over_its_cap_the_least_recently_pulled_image_goes() {
        // Three images of ~100 kB and a shared config: two fit in 250 kB.
        let (up, mirror, m) = three_pulled(250_000).await;
        assert_eq!(upstream_gets(&up).await, (3.0, 4.0), "three manifests, three layers and the shared config once");
        collect(&mirror, &m, "").await;
        for name in ["b", "c"] {
            pull_image(&mirror, name).await;
        }
        assert_eq!(upstream_gets(&up).await, (3.0, 4.0), "b and c stayed");
        pull_image(&mirror, "a").await;
        assert_eq!(upstream_gets(&up).await, (4.0, 5.0), "a was evicted and is fetched again");
    }

    #[tokio::test]
    async fn an_image_a_pod_uses_is_never_evicted() {
        let (up, mirror, m) = three_pulled(250_000).await;
        collect(&mirror, &m, "hub/a:v1\n").await;
        for name in ["a", "c"] {
            pull_image(&mirror, name).await;
        }
        assert_eq!(upstream_gets(&up).await, (3.0, 4.0), "a is protected, so b (the next oldest) went");
        pull_image(&mirror, "b").await;
        assert_eq!(upstream_gets(&up).await, (4.0, 5.0));
    }

    #[tokio::test]
    async fn under_its_cap_nothing_goes() {
        let (up, mirror, m) = three_pulled(1_000_000).await;
        collect(&mirror, &m, "").await;
        for name in ["a", "b", "c"] {
            pull_image(&mirror, name).await;
        }
        assert_eq!(upstream_gets(&up).await, (3.0, 4.0));
    }
}

/// An upstream that lies or stalls, to see the mirror refuse what it sends.
mod hostile {
    use axum::Router;
    use axum::http::{HeaderMap, HeaderValue};
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;

    pub const LAYER_LEN: usize = 200_000;

    /// Serves any blob as bytes that do not hash to its name, any manifest as
    /// one whose digest is not the one asked for, `big` as a manifest of 10 MB,
    /// and `stall` never.
    async fn liar() -> String {
        async fn blob() -> impl IntoResponse {
            content(99, LAYER_LEN)
        }
        async fn manifest(axum::extract::Path(rest): axum::extract::Path<String>) -> impl IntoResponse {
            if rest.starts_with("stall/") {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let body = if rest.starts_with("big/") { vec![b' '; 10 << 20] } else { b"{\"schemaVersion\":2}".to_vec() };
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(OCI_MANIFEST));
            (h, body)
        }
        let app = Router::new().route(
            "/v2/{*rest}",
            get(|p: axum::extract::Path<String>| async move {
                if p.0.contains("/blobs/") { blob().await.into_response() } else { manifest(p).await.into_response() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn mirror() -> Registry {
        let url = liar().await;
        Registry::with(|c| c.mirrors = vec![MirrorConfig::new("hub", &url)]).await
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_its_digest_never_reaches_a_client_whole() {
        let mirror = mirror().await;
        let named = Digest::of(Algorithm::Sha256, b"what the client asked for");
        for _ in 0..2 {
            let r = mirror.get(&format!("/v2/hub/app/blobs/{named}")).await;
            // Either refused before the body, or the body breaks off short.
            if r.status() == StatusCode::OK {
                // Count what arrives before the break: never every byte.
                let mut received = 0;
                let mut body = r.bytes_stream();
                while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
                    received += chunk.len();
                }
                assert!(received < LAYER_LEN, "a whole unverified body went out");
            } else {
                assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
            }
        }
        let (_, bad) = common::verify_blob_files(&mirror.root);
        assert!(bad.is_empty(), "{bad:?}");
        let r = mirror.req(Method::HEAD, &format!("/v2/hub/app/blobs/{named}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "nothing was stored under its name");
    }

    #[tokio::test]
    async fn wrong_oversized_or_stalled_manifests_are_refused_in_time() {
        let mirror = mirror().await;
        let named = Digest::of(Algorithm::Sha256, b"another manifest");
        let message = assert_error(
            mirror.get(&format!("/v2/hub/app/manifests/{named}")).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
        )
        .await;
        assert!(message.contains("does not match"), "{message}");
        let message =
            assert_error(mirror.get("/v2/hub/big/manifests/v1").await, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
                .await;
        assert!(message.contains("exceeds"), "{message}");
        let started = Instant::now();
        let message = assert_error(
            mirror.get("/v2/hub/stall/manifests/v1").await,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the upstream's silence is cut off: {:?}",
            started.elapsed()
        );
        assert!(message.contains("cannot be reached"), "{message}");
    }
}
