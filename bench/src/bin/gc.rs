//! `berth-gc-bench`: how long a garbage collection takes over a large store,
//! and what it costs concurrent pulls.
//!
//! 1. Fills a storage root through the registry's storage layer: `--manifests`
//!    image manifests of `--blobs-per-manifest` distinct small blobs each, spread
//!    over `--repos` repositories, a tenth of them deleted again (garbage).
//! 2. Serves it with `berth-registry`, pushes one large blob and measures pull
//!    throughput (4 clients) while idle.
//! 3. Runs `berth-registry collect` (grace period 0) alone and prints its time
//!    and report; then runs it again while measuring the same pulls, and
//!    prints their throughput against the idle figure (before and after).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_registry::digest::{Algorithm, Digest};
use berth_registry::names::{RepoName, Tag};
use berth_registry::storage::{Blobs, FsStorage, ManifestPut, Manifests, StoredManifest};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    manifests: usize,
    #[arg(long, default_value_t = 10)]
    blobs_per_manifest: usize,
    #[arg(long, default_value_t = 100)]
    repos: usize,
    /// Size of the blob pulled during the measurement, MiB.
    #[arg(long, default_value_t = 256)]
    pull_mib: usize,
    /// Seconds of idle pulls measured.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    #[arg(long, env = "BERTH_REGISTRY_BIN")]
    berth: PathBuf,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PULLERS: usize = 4;

fn bytes_of(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

fn body(b: Bytes) -> berth_registry::storage::ByteStream {
    Box::pin(futures_util::stream::iter([Ok(b)]))
}

/// Stores manifest `i` and its blobs; deletes every tenth again.
async fn fill_one(s: &FsStorage, args: &Args, i: usize) {
    let repo: RepoName = format!("bench/r{}", i % args.repos).parse().unwrap();
    let mut layers = Vec::new();
    for j in 0..args.blobs_per_manifest {
        let data = bytes_of((i * args.blobs_per_manifest + j) as u64, 1024);
        let d = Digest::of(Algorithm::Sha256, &data);
        s.blob_put(&repo, &d, body(data)).await.unwrap();
        layers.push(d);
    }
    let (config, rest) = layers.split_first().unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1024},
        "layers": rest.iter().map(|d| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": 1024})).collect::<Vec<_>>(),
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    let tag: Tag = format!("t{i}").parse().unwrap();
    let put = ManifestPut {
        digest: digest.clone(),
        manifest: StoredManifest { media_type: OCI_MANIFEST.into(), bytes },
        blobs: layers,
        children: Vec::new(),
        referrer: None,
        tags: vec![tag],
    };
    s.manifest_put(&repo, put).await.unwrap();
    if i.is_multiple_of(10) {
        s.manifest_delete(&repo, &digest).await.unwrap();
    }
}

async fn fill(root: &Path, args: &Args) -> Duration {
    let s = FsStorage::open(root).unwrap();
    let t = Instant::now();
    futures_util::stream::iter(0..args.manifests).for_each_concurrent(64, |i| fill_one(&s, args, i)).await;
    t.elapsed()
}

/// Pulls `url` with `PULLERS` clients until `stop`; returns MB/s.
async fn pull_until(url: &str, stop: Arc<AtomicBool>) -> f64 {
    let bytes = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..PULLERS)
        .map(|_| {
            let (url, stop, bytes) = (url.to_owned(), stop.clone(), bytes.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut s = client.get(&url).send().await.unwrap().bytes_stream();
                    while let Some(chunk) = s.next().await {
                        bytes.fetch_add(chunk.unwrap().len() as u64, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    bytes.load(Ordering::Relaxed) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(berth_bench::servers::bench_tmp()).unwrap();
    let root = dir.path().join("root");
    let filled = fill(&root, &args).await;
    let blobs = args.manifests * args.blobs_per_manifest;
    println!("filled {blobs} blobs in {} manifests in {:.1} s", args.manifests, filled.as_secs_f64());

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nstorage: {{root: {}}}\ngc: {{gracePeriod: 0s}}\nlog: {{level: warn}}\n",
        root.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let mut server = Command::new(&args.berth).arg("--config").arg(&config).stdout(Stdio::null()).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    while reqwest::get(format!("{base}/v2/")).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let large = bytes_of(u64::MAX, args.pull_mib << 20);
    let digest = Digest::of(Algorithm::Sha256, &large);
    let client = reqwest::Client::new();
    let r =
        client.post(format!("{base}/v2/bench/pull/blobs/uploads/?digest={digest}")).body(large).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // Referenced by a manifest, or the collection would rightly free it.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest.to_string(), "size": args.pull_mib << 20},
        "layers": [],
    });
    let r = client
        .put(format!("{base}/v2/bench/pull/manifests/large"))
        .header("content-type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = format!("{base}/v2/bench/pull/blobs/{digest}");

    // The server counts the storage when it starts; that pass must be over.
    while !root.join("gc/report.json").exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The collection alone: the time it takes over the whole store.
    let (took, report) = collect(&args.berth, &config);
    let c = &report["lastCollection"];
    println!(
        "collection over {blobs} blobs in {} manifests: {:.1} s ({} blobs, {} bytes freed; {} manifests left)",
        args.manifests,
        took.as_secs_f64(),
        c["blobsDeleted"],
        c["bytesFreed"],
        report["usage"]["manifests"]
    );
    // Pulls before, during and after a second collection (the same walk over
    // everything, with nothing left to delete).
    pulls_for(&url, Duration::from_secs(1)).await; // warm up
    let idle_before = pulls_for(&url, Duration::from_secs(args.idle_secs)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(pull_until_owned(url.clone(), stop.clone()));
    let (took, _) = collect(&args.berth, &config);
    stop.store(true, Ordering::Relaxed);
    let busy = busy.await.unwrap();
    let idle_after = pulls_for(&url, Duration::from_secs(args.idle_secs)).await;
    let idle = (idle_before + idle_after) / 2.0;
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "pull throughput idle {idle:.0} MB/s (before {idle_before:.0}, after {idle_after:.0}), during a collection ({:.1} s) {busy:.0} MB/s: {:.2}x",
        took.as_secs_f64(),
        busy / idle
    );
}

/// Runs `berth-registry collect` once; its wall time and report.
fn collect(berth: &Path, config: &Path) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    let out = Command::new(berth).arg("--config").arg(config).arg("collect").output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (took, serde_json::from_slice(&out.stdout).unwrap())
}

/// Pull throughput over `secs`, MB/s.
async fn pulls_for(url: &str, secs: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let pulls = tokio::spawn(pull_until_owned(url.to_owned(), stop.clone()));
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    pulls.await.unwrap()
}

async fn pull_until_owned(url: String, stop: Arc<AtomicBool>) -> f64 {
    pull_until(&url, stop).await
}
