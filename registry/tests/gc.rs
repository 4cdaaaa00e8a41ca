//! Garbage collection and retention on a real registry and filesystem: what is
//! freed, what stays and pulls, what the report says, and the ways to run it
//! (the schedule, `berth-registry collect`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_registry::config::{CollectorConfig, RetentionConfig, RetentionRule, Span, TagRetention};
use berth_registry::digest::{Algorithm, Digest};
use berth_registry::gc::{Collector, Mode, ProtectedSet};
use berth_registry::report::{Collection, Report};
use berth_registry::storage::FsStorage;
use common::{OCI_MANIFEST, Registry, content};
use reqwest::{Method, StatusCode};

fn collector(root: &Path, gc: CollectorConfig, retention: RetentionConfig) -> Arc<Collector> {
    Arc::new(Collector::new(Arc::new(FsStorage::open(root).unwrap()), gc, retention))
}

fn no_grace() -> CollectorConfig {
    CollectorConfig { interval: None, grace_period: Span::secs(0), ..CollectorConfig::default() }
}

/// One collection, once the server's own pass (it counts at start) lets go of the lock.
async fn run(c: &Arc<Collector>, dry_run: bool, protected: &str) -> (Collection, berth_registry::gc::Tally) {
    // File times come from the kernel's coarse clock (one tick, at most 10 ms):
    // content written in the tick the storage clock reads is not older than a
    // cutoff of "now", so with no grace it would be kept. Let a tick pass.
    tokio::time::sleep(Duration::from_millis(30)).await;
    for _ in 0..200 {
        let done = c.run(Mode::Collect { dry_run }, None, ProtectedSet::parse(protected)).await.unwrap();
        if let Some(done) = done {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the collector lock stayed taken");
}

async fn collect(c: &Arc<Collector>, protected: &str) -> (Collection, berth_registry::gc::Tally) {
    run(c, false, protected).await
}

/// Pushes an image of a config and `layers` tagged `tag`; returns its digest.
async fn push(reg: &Registry, repo: &str, tag: &str, layers: &[&[u8]]) -> Digest {
    let config = reg.push_blob(repo, format!("{{\"tag\":\"{tag}\"}}").as_bytes()).await;
    let mut descriptors = Vec::new();
    for layer in layers {
        let d = reg.push_blob(repo, layer).await;
        descriptors
            .push(serde_json::json!({"mediaType": common::OCI_LAYER, "digest": d.to_string(), "size": layer.len()}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": common::OCI_CONFIG, "digest": config.to_string(), "size": tag.len() + 10},
        "layers": descriptors,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    Digest::of(Algorithm::Sha256, &bytes)
}

async fn status(reg: &Registry, method: Method, path: &str) -> StatusCode {
    reg.req(method, path).header("accept", OCI_MANIFEST).send().await.unwrap().status()
}

async fn blob_bytes(reg: &Registry, repo: &str, blob: &[u8]) -> Option<Vec<u8>> {
    let d = Digest::of(Algorithm::Sha256, blob);
    let r = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    (r.status() == StatusCode::OK).then_some(r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn unreferenced_content_is_freed_and_the_rest_still_pulls() {
    let reg = Registry::start().await;
    let (shared, a_only, b_only) = (content(1, 3000), content(2, 2000), content(3, 1000));
    let a = push(&reg, "app", "a", &[&shared, &a_only]).await;
    let b = push(&reg, "app", "b", &[&shared, &b_only]).await;
    reg.push_blob("app", b"never referenced").await;
    assert_eq!(status(&reg, Method::DELETE, &format!("/v2/app/manifests/{b}")).await, StatusCode::ACCEPTED);

    let c = collector(&reg.root, no_grace(), RetentionConfig::default());
    let dry = run(&c, true, "").await.0;
    assert_eq!(blob_bytes(&reg, "app", &b_only).await.as_deref(), Some(&b_only[..]), "a dry run deletes nothing");
    let (report, tally) = collect(&c, "").await;
    assert_eq!(
        (dry.blobs_deleted, dry.bytes_freed),
        (report.blobs_deleted, report.bytes_freed),
        "the dry run foretold it"
    );
    // b's layer, b's config, the stray blob and b's manifest content.
    assert_eq!(report.blobs_deleted, 4, "{report:?}");
    assert!(report.bytes_freed >= 1000 + 16, "{report:?}");
    assert!(blob_bytes(&reg, "app", &b_only).await.is_none());
    assert!(blob_bytes(&reg, "app", b"never referenced").await.is_none());
    assert_eq!(blob_bytes(&reg, "app", &shared).await.as_deref(), Some(&shared[..]));
    assert_eq!(blob_bytes(&reg, "app", &a_only).await.as_deref(), Some(&a_only[..]));
    assert_eq!(status(&reg, Method::GET, "/v2/app/manifests/a").await, StatusCode::OK);
    let (checked, bad) = common::verify_blob_files(&reg.root);
    assert_eq!((checked, bad), (4, Vec::<String>::new()), "a's config, two layers and manifest");
    assert_eq!((tally.usage.blobs, tally.usage.manifests, tally.usage.repositories), (3, 1, 1));
    let manifest_bytes =
        std::fs::metadata(reg.root.join(format!("blobs/sha256/{}", &a.hex()[..2])).join(a.hex())).unwrap().len();
    assert_eq!(tally.repositories["app"] + manifest_bytes, tally.usage.bytes);

    // Pushing b again after the sweep works: nothing half-known remains.
    push(&reg, "app", "b", &[&shared, &b_only]).await;
    assert_eq!(blob_bytes(&reg, "app", &b_only).await.as_deref(), Some(&b_only[..]));
}

#[tokio::test]
async fn the_grace_period_keeps_young_content() {
    let reg = Registry::start().await;
    let d = push(&reg, "app", "a", &[b"layer"]).await;
    reg.req(Method::DELETE, &format!("/v2/app/manifests/{d}")).send().await.unwrap();
    let c = collector(
        &reg.root,
        CollectorConfig { grace_period: Span::secs(3600), ..no_grace() },
        RetentionConfig::default(),
    );
    let (report, _) = collect(&c, "").await;
    assert_eq!((report.blobs_deleted, report.bytes_freed), (0, 0));
    assert!(blob_bytes(&reg, "app", b"layer").await.is_some());
}

fn rule(tags: Option<TagRetention>, untagged_after: Option<u64>) -> RetentionConfig {
    RetentionConfig {
        dry_run: false,
        rules: vec![RetentionRule {
            repositories: vec!["team/*".into()],
            tags,
            untagged_after: untagged_after.map(Span::secs),
        }],
    }
}

#[tokio::test]
async fn retention_keeps_the_most_recent_and_protected_tags() {
    let reg = Registry::start().await;
    let mut digests = Vec::new();
    for v in 1..=4 {
        digests.push(push(&reg, "team/app", &format!("v{v}"), &[&content(10 + v, 500)]).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push(&reg, "other", "v1", &[&content(11, 500)]).await;
    let keep_last = TagRetention { keep_most_recent: Some(1), ..TagRetention::default() };
    let c = collector(&reg.root, no_grace(), rule(Some(keep_last), Some(0)));
    // v2 runs somewhere (by digest), v1 by tag: both stay.
    let protected = format!("team/app:v1\nteam/app@{}\n", digests[1]);
    let (report, _) = collect(&c, &protected).await;
    assert_eq!((report.tags_deleted, report.manifests_deleted, report.protected_kept), (2, 1, 2), "{report:?}");
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/v4").await, StatusCode::OK);
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/v1").await, StatusCode::OK);
    assert_eq!(status(&reg, Method::GET, &format!("/v2/team/app/manifests/{}", digests[1])).await, StatusCode::OK);
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/v2").await, StatusCode::NOT_FOUND);
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/v3").await, StatusCode::NOT_FOUND);
    assert_eq!(
        status(&reg, Method::GET, &format!("/v2/team/app/manifests/{}", digests[2])).await,
        StatusCode::NOT_FOUND
    );
    assert!(blob_bytes(&reg, "team/app", &content(13, 500)).await.is_none(), "v3's layer is freed");
    assert_eq!(status(&reg, Method::GET, "/v2/other/manifests/v1").await, StatusCode::OK, "no rule matches other");
}

#[tokio::test]
async fn retention_keeps_patterns_and_pulled_tags_and_can_dry_run() {
    let reg = Registry::start().await;
    for tag in ["release-1", "dev-1", "dev-2"] {
        push(&reg, "team/app", tag, &[tag.as_bytes()]).await;
    }
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/dev-2").await, StatusCode::OK);
    // The pull is recorded in the background.
    for _ in 0..100 {
        if !common::files_below(&reg.root.join("repositories/team/app/_manifests/pulled")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tags = TagRetention {
        keep: vec!["release-*".into()],
        keep_pulled_within: Some(Span::secs(3600)),
        ..TagRetention::default()
    };
    let mut retention = rule(Some(tags), Some(0));
    retention.dry_run = true;
    let (report, _) = collect(&collector(&reg.root, no_grace(), retention.clone()), "").await;
    assert_eq!((report.tags_deleted, report.manifests_deleted), (0, 0), "a retention dry run deletes nothing");
    // HEAD: a GET would count as a pull and keep dev-1.
    assert_eq!(status(&reg, Method::HEAD, "/v2/team/app/manifests/dev-1").await, StatusCode::OK);
    retention.dry_run = false;
    let (report, _) = collect(&collector(&reg.root, no_grace(), retention), "").await;
    assert_eq!((report.tags_deleted, report.manifests_deleted), (1, 1), "{report:?}");
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/dev-1").await, StatusCode::NOT_FOUND);
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/dev-2").await, StatusCode::OK, "pulled");
    assert_eq!(status(&reg, Method::GET, "/v2/team/app/manifests/release-1").await, StatusCode::OK, "pattern");
}

#[tokio::test]
async fn the_schedule_collects_and_saves_its_report() {
    let reg = Registry::with(|c| {
        c.gc = CollectorConfig { interval: Some(Span::secs(1)), ..no_grace() };
    })
    .await;
    let d = push(&reg, "app", "a", &[b"scheduled layer"]).await;
    reg.req(Method::DELETE, &format!("/v2/app/manifests/{d}")).send().await.unwrap();
    let mut report = None;
    for _ in 0..150 {
        let saved = std::fs::read(reg.root.join("gc/report.json")).ok();
        report = saved.and_then(|b| serde_json::from_slice::<Report>(&b).ok());
        if report.as_ref().and_then(|r| r.last_collection.as_ref()).is_some_and(|c| c.blobs_deleted > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = report.expect("a report was saved");
    let last = report.last_collection.expect("a collection ran on schedule");
    assert!(last.blobs_deleted >= 3 && !last.dry_run && last.request.is_none(), "{last:?}");
    assert!(blob_bytes(&reg, "app", b"scheduled layer").await.is_none());
}

fn cli(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .arg("--root")
        .arg(root)
        .arg("collect")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_collect_command_runs_once_and_waits_for_no_one() {
    let reg = Registry::start().await;
    let d = push(&reg, "app", "a", &[b"cli layer"]).await;
    reg.req(Method::DELETE, &format!("/v2/app/manifests/{d}")).send().await.unwrap();
    // The server counts the storage at start; the command must not meet that pass.
    while !reg.root.join("gc/report.json").exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The default grace period (1 h) keeps everything just pushed.
    let out = cli(&reg.root, &["--dry-run"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    let last = report.last_collection.unwrap();
    assert!(last.dry_run && last.blobs_deleted == 0, "{last:?}");
    assert_eq!(report.usage.manifests, 0);
    let storage = FsStorage::open(&reg.root).unwrap();
    let held = berth_registry::storage::Lifecycle::collector_lock(&storage).await.unwrap().unwrap();
    let out = cli(&reg.root, &[]);
    assert_eq!(out.status.code(), Some(3), "another collection holds the lock");
    drop(held);
    assert!(cli(&reg.root, &[]).status.success());
}

#[tokio::test]
async fn foreign_layers_a_client_pushed_are_kept() {
    let reg = Registry::start().await;
    let config = reg.push_blob("win", b"{}").await;
    let foreign = b"a windows base layer, mirrored";
    let layer = reg.push_blob("win", foreign).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": common::DOCKER_SCHEMA2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": layer.to_string(), "size": foreign.len(), "urls": ["https://mcr.example.test/layer"]}],
    });
    let r = reg.put_manifest("win", "ltsc", common::DOCKER_SCHEMA2, &serde_json::to_vec(&manifest).unwrap()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (report, _) = collect(&collector(&reg.root, no_grace(), RetentionConfig::default()), "").await;
    assert_eq!(report.blobs_deleted, 0, "{report:?}");
    assert_eq!(blob_bytes(&reg, "win", foreign).await.as_deref(), Some(&foreign[..]));
}

#[tokio::test]
async fn a_damaged_record_keeps_its_repository_and_spares_the_others() {
    let reg = Registry::start().await;
    let kept = push(&reg, "damaged", "a", &[b"kept layer"]).await;
    let gone = push(&reg, "healthy", "a", &[b"freed layer"]).await;
    reg.req(Method::DELETE, &format!("/v2/healthy/manifests/{gone}")).send().await.unwrap();
    let record = reg.root.join("repositories/damaged/_manifests/revisions/sha256").join(kept.hex());
    std::fs::write(&record, b"not json").unwrap();
    let retention = rule(None, Some(0));
    let retention = RetentionConfig {
        rules: vec![RetentionRule { repositories: vec!["*".into()], ..retention.rules[0].clone() }],
        ..retention
    };
    let (report, _) = collect(&collector(&reg.root, no_grace(), retention), "").await;
    assert_eq!(report.error, None);
    assert!(blob_bytes(&reg, "healthy", b"freed layer").await.is_none(), "the other repository was collected");
    assert_eq!(blob_bytes(&reg, "damaged", b"kept layer").await.as_deref(), Some(&b"kept layer"[..]));
    assert!(record.exists(), "the damaged record stays for someone to look at");
}
