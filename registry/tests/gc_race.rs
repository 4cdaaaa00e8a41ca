//! The collector against live traffic: for 60 s, four clients push images that
//! share layers (across repositories too), re-tag them and delete all but their
//! last eight, pushing as real clients do (a blob the registry already has is
//! not uploaded again), while `berth-registry collect` runs in a loop with a
//! 2 s grace period, so layers keep falling out of use and coming back. After
//! each push a client pulls one of its images and verifies it. At the end every
//! image whose push was acknowledged and that was not deleted pulls completely
//! with verified digests, every tag points where it was last pointed, and after
//! one more collection no stored blob is unreferenced. Repeated with the
//! collector killed with SIGKILL at random moments.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_registry::digest::{Algorithm, Digest};
use berth_registry::report::Report;
use common::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, content, files_below, header};
use reqwest::{Client, StatusCode};
use serde_json::json;

const RUN: Duration = Duration::from_secs(60);
const CLIENTS: u64 = 4;
const GRACE_SECS: u64 = 2;

struct Server {
    child: Child,
    base: String,
    config: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(root: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = root.with_extension("yaml");
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nstorage: {{root: {}}}\ngc: {{gracePeriod: {GRACE_SECS}s}}\nlog: {{level: warn}}\n",
        root.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}"), config };
    for _ in 0..200 {
        if Client::new().get(format!("{}/v2/", server.base)).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("registry did not start");
}

/// An acknowledged image: its manifest and every blob it references.
#[derive(Clone)]
struct Image {
    repo: String,
    manifest: Vec<u8>,
    blobs: Vec<(Digest, Vec<u8>)>,
}

#[derive(Default)]
struct Expected {
    images: BTreeMap<Digest, Image>,
    tags: BTreeMap<(String, String), Digest>,
    refused: u64,
}

fn sha(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// Uploads a blob unless the registry says it has it (HEAD), as clients do.
async fn ensure_blob(client: &Client, base: &str, repo: &str, data: &[u8]) -> bool {
    let d = sha(data);
    let head = client.head(format!("{base}/v2/{repo}/blobs/{d}")).send().await;
    if head.is_ok_and(|r| r.status() == StatusCode::OK) {
        return true;
    }
    let r = client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")).body(data.to_vec()).send().await;
    r.is_ok_and(|r| r.status() == StatusCode::CREATED)
}

async fn put_manifest(client: &Client, base: &str, repo: &str, reference: &str, body: &[u8]) -> StatusCode {
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    r.status()
}

/// Builds image `n` of client `w`: two of 32 shared layers, one of its own.
fn image(w: u64, n: u64) -> Image {
    let shared = |k: u64| content(1000 + k % 32, 32 * 1024);
    let config = format!("{{\"client\":{w},\"n\":{n}}}").into_bytes();
    let layers = [shared(n * 3 + w), shared(n * 5 + w + 1), content(w * 1_000_000 + n, 16 * 1024)];
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(&config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": OCI_LAYER, "digest": sha(l).to_string(), "size": l.len()})).collect::<Vec<_>>(),
    });
    let mut blobs = vec![(sha(&config), config)];
    blobs.extend(layers.into_iter().map(|l| (sha(&l), l)));
    Image { repo: format!("race/c{w}"), manifest: serde_json::to_vec(&manifest).unwrap(), blobs }
}

/// One client: pushes, re-tags and deletes until `deadline`.
async fn client_loop(base: String, w: u64, expected: Arc<Mutex<Expected>>, deadline: Instant) {
    let client = Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let img = image(w, n);
        let (repo, digest) = (img.repo.clone(), sha(&img.manifest));
        let mut all = true;
        for (_, data) in &img.blobs {
            all &= ensure_blob(&client, &base, &repo, data).await;
        }
        let tag = format!("t{n}");
        match put_manifest(&client, &base, &repo, &tag, &img.manifest).await {
            StatusCode::CREATED => {
                let mut e = expected.lock().unwrap();
                e.images.insert(digest.clone(), img);
                e.tags.insert((repo.clone(), tag), digest.clone());
            }
            StatusCode::BAD_REQUEST if all => expected.lock().unwrap().refused += 1,
            other => panic!("push of {repo}:{tag} answered {other}"),
        }
        // Pull one of this client's images while the collector runs.
        let (mine, pick) = {
            let e = expected.lock().unwrap();
            let mine: Vec<Digest> = e.images.iter().filter(|(_, i)| i.repo == repo).map(|(d, _)| d.clone()).collect();
            let pick = mine.get((n as usize * 7) % mine.len().max(1)).map(|d| (d.clone(), e.images[d].clone()));
            (mine, pick)
        };
        let Some((older, img)) = pick else { continue };
        check_image(&client, &base, &older, &img).await;
        // Every third round moves the previous tag onto this image; beyond
        // eight images, one of the others goes.
        if n.is_multiple_of(3) && older != digest && expected.lock().unwrap().images.contains_key(&digest) {
            let moved = format!("t{}", n - 1);
            if put_manifest(&client, &base, &repo, &moved, &image(w, n).manifest).await == StatusCode::CREATED {
                expected.lock().unwrap().tags.insert((repo.clone(), moved), digest.clone());
            }
        }
        if mine.len() > 8 && older != digest {
            let r = client.delete(format!("{base}/v2/{repo}/manifests/{older}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let mut e = expected.lock().unwrap();
            e.images.remove(&older);
            e.tags.retain(|_, d| *d != older);
        }
    }
}

fn collect_cmd(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
    cmd.arg("--config").arg(config).arg("collect").stdout(Stdio::piped()).stderr(Stdio::null());
    cmd
}

/// Runs collections back to back until `deadline`; with `kill`, each is
/// killed with SIGKILL after a pseudo-random 5 to 200 ms (some finish first).
/// Returns how many finished and the blobs they deleted.
fn collector_loop(config: &Path, deadline: Instant, kill: bool) -> (u64, u64, u64) {
    let (mut finished, mut killed, mut deleted, mut x) = (0, 0, 0, 0x2545F4914F6CDD1Du64);
    while Instant::now() < deadline {
        let mut child = collect_cmd(config).spawn().unwrap();
        if kill {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::thread::sleep(Duration::from_millis(5 + x % 195));
            if child.try_wait().unwrap().is_none() {
                let _ = child.kill();
                let _ = child.wait();
                killed += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let report: Report = serde_json::from_slice(&out.stdout).unwrap();
            deleted += report.last_collection.unwrap().blobs_deleted;
            finished += 1;
        }
    }
    (finished, killed, deleted)
}

async fn check_image(client: &Client, base: &str, digest: &Digest, img: &Image) {
    let r = client
        .get(format!("{base}/v2/{}/manifests/{digest}", img.repo))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "manifest {digest} of {} lost", img.repo);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    for (d, data) in &img.blobs {
        let r = client.get(format!("{base}/v2/{}/blobs/{d}", img.repo)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "blob {d} of {}:{digest} lost", img.repo);
        let got = r.bytes().await.unwrap();
        assert!(sha(&got) == *d && got == data[..], "blob {d} of {} damaged", img.repo);
    }
}

async fn race(kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = start(&root).await;
    let expected = Arc::new(Mutex::new(Expected::default()));
    let deadline = Instant::now() + RUN;
    let clients: Vec<_> =
        (0..CLIENTS).map(|w| tokio::spawn(client_loop(server.base.clone(), w, expected.clone(), deadline))).collect();
    let config = server.config.clone();
    let (finished, killed, deleted) =
        tokio::task::spawn_blocking(move || collector_loop(&config, deadline, kill)).await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // One more collection once everything left unreferenced is past the grace period.
    tokio::time::sleep(Duration::from_secs(GRACE_SECS + 1)).await;
    let out = collect_cmd(&server.config).output().unwrap();
    assert!(out.status.success());

    let e = std::mem::take(&mut *expected.lock().unwrap());
    eprintln!(
        "{} images kept, {} tags, {} pushes refused cleanly; collections: {finished} finished, {killed} killed, {deleted} blobs deleted",
        e.images.len(),
        e.tags.len(),
        e.refused
    );
    assert!(e.images.len() >= 50, "too little traffic to mean anything");
    assert!(deleted > 0 && finished > 0, "the collector never deleted anything");
    if kill {
        assert!(killed > 0, "no collection was killed");
    }
    let client = Client::new();
    for (digest, img) in &e.images {
        check_image(&client, &server.base, digest, img).await;
    }
    for ((repo, tag), digest) in &e.tags {
        let r = client
            .head(format!("{}/v2/{repo}/manifests/{tag}", server.base))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string(), "{repo}:{tag}");
    }
    let referenced: HashSet<String> = e
        .images
        .iter()
        .flat_map(|(d, img)| {
            std::iter::once(d.hex().to_owned()).chain(img.blobs.iter().map(|(b, _)| b.hex().to_owned()))
        })
        .collect();
    let stored: Vec<String> =
        files_below(&root.join("blobs")).iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
    let unreferenced: Vec<&String> = stored.iter().filter(|b| !referenced.contains(*b)).collect();
    assert!(unreferenced.is_empty(), "{} unreferenced blobs left: {unreferenced:?}", unreferenced.len());
    let (checked, bad) = common::verify_blob_files(&root);
    assert!(bad.is_empty() && checked == stored.len(), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collections_racing_pushes_retags_and_deletes_lose_nothing() {
    race(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collections_killed_with_sigkill_lose_nothing() {
    race(true).await;
}
