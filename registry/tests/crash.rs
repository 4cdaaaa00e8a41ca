//! kill -9 during concurrent pushes: every blob and manifest that was acknowledged
//! is served intact after a restart, and no stored blob has content that does not
//! match its digest (nothing half-written is ever published).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_registry::digest::{Algorithm, Digest};
use common::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, content, files_below, header};
use reqwest::{Client, StatusCode};
use serde_json::json;

struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a registry on `storage`: `--root <dir>` or `--config <file>`.
async fn spawn(storage: &[std::ffi::OsString]) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(storage)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let client = client();
    for _ in 0..200 {
        if client.get(format!("{}/v2/", server.base)).send().await.is_ok() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    panic!("registry did not start");
}

#[derive(Default)]
struct Acked {
    blobs: Vec<(String, Digest, Vec<u8>)>,
    tags: Vec<(String, String, Digest)>,
}

async fn push_blob(client: &Client, base: &str, repo: &str, data: &[u8], chunked: bool) -> Option<Digest> {
    let digest = Digest::of(Algorithm::Sha256, data);
    let response = if chunked {
        let r = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.ok()?;
        let mut loc = header(&r, "location");
        let third = data.len() / 3;
        for (start, end) in [(0, third), (third, 2 * third)] {
            let r = client
                .patch(format!("{base}{loc}"))
                .header("content-range", format!("{start}-{}", end - 1))
                .body(data[start..end].to_vec())
                .send()
                .await
                .ok()?;
            if r.status() != StatusCode::ACCEPTED {
                return None;
            }
            loc = header(&r, "location");
        }
        client.put(format!("{base}{loc}?digest={digest}")).body(data[2 * third..].to_vec()).send().await.ok()?
    } else {
        client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}")).body(data.to_vec()).send().await.ok()?
    };
    (response.status() == StatusCode::CREATED).then_some(digest)
}

/// A client that gives up: a request to a killed server must end the pusher,
/// never wait for ever.
fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn pusher(base: String, worker: u64, acked: Arc<Mutex<Acked>>) {
    let client = client();
    let repo = format!("crash/w{worker}");
    for i in 0u64.. {
        let seed = worker * 1_000_000 + i;
        let len = 1024 + (seed as usize * 7919) % (3 << 20);
        let data = content(seed, len);
        let Some(digest) = push_blob(&client, &base, &repo, &data, i % 2 == 1).await else { return };
        acked.lock().unwrap().blobs.push((repo.clone(), digest.clone(), data));
        let config = Digest::of(Algorithm::Sha256, b"{}");
        if push_blob(&client, &base, &repo, b"{}", false).await.is_none() {
            return;
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest.to_string(), "size": len}]
        }))
        .unwrap();
        let tag = format!("t{i}");
        let Ok(r) = client
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
        else {
            return;
        };
        if r.status() != StatusCode::CREATED {
            return;
        }
        acked.lock().unwrap().tags.push((repo.clone(), tag, Digest::of(Algorithm::Sha256, &manifest)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_data_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let storage = vec!["--root".into(), dir.path().as_os_str().to_owned()];
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..3u64 {
        let mut server = spawn(&storage).await;
        let workers: Vec<_> =
            (0..6).map(|w| tokio::spawn(pusher(server.base.clone(), round * 100 + w, acked.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(700 + round * 400)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let mut server = spawn(&storage).await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    verify_acked(&server, &acked).await;
    // Whatever was published, acknowledged or not, is complete and matches its name.
    for path in files_below(&dir.path().join("blobs")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let actual = Digest::of(Algorithm::Sha256, &std::fs::read(&path).unwrap());
        assert_eq!(actual.hex(), name, "{} holds other content than its digest", path.display());
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Two processes on one bucket, pushers on both; one of them is killed with
/// SIGKILL three times while the other keeps serving. Everything acknowledged by
/// either is served intact afterwards, by both, and every blob in the bucket
/// hashes to its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_data_survives_kill_9_of_a_replica_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (config, s3) = common::minio::config_file(dir.path());
    let storage = vec!["--config".into(), config.into_os_string()];
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut survivor = spawn(&storage).await;
    for round in 0..3u64 {
        let mut victim = spawn(&storage).await;
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let base = if w % 2 == 0 { &victim.base } else { &survivor.base };
                tokio::spawn(pusher(base.clone(), round * 100 + w, acked.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500 + round * 500)).await;
        victim.child.kill().unwrap(); // SIGKILL
        victim.child.wait().unwrap();
        for (w, worker) in workers.into_iter().enumerate() {
            // The victim's pushers end with it; the survivor's are stopped.
            if w % 2 == 1 {
                worker.abort();
            }
            let _ = worker.await;
        }
    }
    let mut restarted = spawn(&storage).await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    verify_acked(&restarted, &acked).await;
    verify_acked(&survivor, &acked).await;
    let (checked, bad) = common::minio::verify_blobs(&s3).await;
    assert!(bad.is_empty() && checked > 0, "{checked} blobs checked: {bad:?}");
    for server in [&mut restarted, &mut survivor] {
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
}

/// Every acknowledged blob and tag is served by `server`, with the right bytes.
async fn verify_acked(server: &Server, acked: &Acked) {
    let client = client();
    assert!(acked.blobs.len() >= 6, "too few pushes completed to test anything: {}", acked.blobs.len());
    for (repo, digest, data) in &acked.blobs {
        let r = client.get(format!("{}/v2/{repo}/blobs/{digest}", server.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged blob {digest} lost");
        assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
        assert!(r.bytes().await.unwrap() == data.as_slice(), "blob {digest} served with wrong content");
    }
    for (repo, tag, digest) in &acked.tags {
        let r = client
            .get(format!("{}/v2/{repo}/manifests/{tag}", server.base))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged tag {repo}:{tag} lost");
        assert_eq!(Digest::of(Algorithm::Sha256, &r.bytes().await.unwrap()), *digest);
    }
    eprintln!("verified {} blobs and {} tags on {}", acked.blobs.len(), acked.tags.len(), server.base);
}
