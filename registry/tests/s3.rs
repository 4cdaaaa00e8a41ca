//! The registry on a real S3 server (the tests' MinIO): blobs larger than a part
//! streamed through multipart uploads and read back in ranges across parts,
//! redirects to presigned URLs, credentials from files (rotated while serving),
//! and a garbage collection on the bucket.

mod common;

use std::time::Duration;

use berth_registry::config::{S3Config, Span};
use berth_registry::digest::{Algorithm, Digest};
use berth_registry::storage::S3Storage;
use common::{OCI_MANIFEST, Registry, content, header};
use reqwest::{Method, StatusCode};

async fn on_s3(adjust: impl FnOnce(&mut S3Config)) -> (Registry, S3Config) {
    let mut s3 = common::minio::s3_config();
    adjust(&mut s3);
    let storage = s3.clone();
    let registry = Registry::with(move |c| c.storage.s3 = Some(storage)).await;
    (registry, s3)
}

async fn get_range(r: &Registry, repo: &str, d: &Digest, from: usize, to: usize) -> Vec<u8> {
    let response = r
        .req(Method::GET, &format!("/v2/{repo}/blobs/{d}"))
        .header("range", format!("bytes={from}-{to}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    response.bytes().await.unwrap().to_vec()
}

/// A chunked push whose chunks straddle the 5 MiB parts (the last chunk in the
/// PUT) and a monolithic push of several parts read back whole and in ranges
/// across part boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_larger_than_a_part_round_trip() {
    let (r, s3) = on_s3(|_| {}).await;
    let part = s3.part_size_bytes as usize;
    let data = content(7, 4 * part + 12_345);
    let digest = Digest::of(Algorithm::Sha256, &data);
    let started = r.req(Method::POST, "/v2/big/chunked/blobs/uploads/").send().await.unwrap();
    let mut location = header(&started, "location");
    let cuts = [0, 3 << 20, (3 << 20) + 2 * part + 7, data.len() - 1000, data.len()];
    for pair in cuts.windows(2).take(3) {
        let (from, to) = (pair[0], pair[1]);
        let response = r
            .req(Method::PATCH, &location)
            .header("content-range", format!("{from}-{}", to - 1))
            .header("content-type", "application/octet-stream")
            .body(data[from..to].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
        assert_eq!(header(&response, "range"), format!("0-{}", to - 1));
        location = header(&response, "location");
    }
    let last = cuts[3];
    let sep = if location.contains('?') { '&' } else { '?' };
    let finished = r
        .req(Method::PUT, &format!("{location}{sep}digest={digest}"))
        .header("content-range", format!("{last}-{}", data.len() - 1))
        .body(data[last..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), StatusCode::CREATED, "{}", finished.text().await.unwrap());
    let whole = r.get(&format!("/v2/big/chunked/blobs/{digest}")).await.bytes().await.unwrap();
    assert!(whole == data.as_slice(), "the chunked blob reads back whole");
    for boundary in [part, 2 * part, 4 * part] {
        let got = get_range(&r, "big/chunked", &digest, boundary - 10, boundary + 10).await;
        assert_eq!(got, &data[boundary - 10..=boundary + 10], "range across byte {boundary}");
    }

    let mono = content(8, 2 * part + 1);
    let d = r.push_blob("big/mono", &mono).await;
    let got = get_range(&r, "big/mono", &d, part - 1, 2 * part).await;
    assert_eq!(got, &mono[part - 1..=2 * part]);
    let (checked, bad) = common::minio::verify_blobs(&s3).await;
    assert_eq!((checked, bad), (2, Vec::<String>::new()));
}

/// With `redirect`, a blob GET answers 307 with a presigned URL of the bucket
/// that serves the bytes (ranges too); HEAD and manifests are answered directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_sends_blob_gets_to_presigned_urls() {
    let (r, _) = on_s3(|s3| s3.redirect = true).await;
    let layer = content(3, 100_000);
    let (manifest_digest, _) = r.push_image("redirect/me", "v1", &layer).await;
    let digest = Digest::of(Algorithm::Sha256, &layer);
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("{}/v2/redirect/me/blobs/{digest}", r.base);
    let response = no_follow.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&response, "location");
    assert!(location.starts_with(&common::minio::server().endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature"), "{location}");
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert!(direct.bytes().await.unwrap() == layer.as_slice());
    let ranged = reqwest::Client::new().get(&location).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &layer[10..20]);
    let head = no_follow.head(&url).send().await.unwrap();
    assert_eq!((head.status(), header(&head, "content-length")), (StatusCode::OK, "100000".to_owned()));
    let manifest = r.req(Method::GET, "/v2/redirect/me/manifests/v1").header("accept", OCI_MANIFEST).send().await;
    assert_eq!(header(&manifest.unwrap(), "docker-content-digest"), manifest_digest.to_string());
    let unknown = no_follow.get(format!("{}/v2/redirect/other/blobs/{digest}", r.base)).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND, "only where the blob is linked");
}

/// Credentials come from the files of `credentialsDir`, read again when they
/// change: wrong ones fail at start with the bucket named; rotated ones are
/// used by the running storage without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_files_are_checked_at_start_and_reread() {
    let dir = tempfile::tempdir().unwrap();
    let write = |secret: &str| {
        std::fs::write(dir.path().join("accessKeyId"), common::minio::USER).unwrap();
        std::fs::write(dir.path().join("secretAccessKey"), secret).unwrap();
    };
    write("not-the-secret");
    let s3 = S3Config { credentials_dir: Some(dir.path().to_path_buf()), ..common::minio::s3_config() };
    let refused = S3Storage::open(&s3).await.err().expect("wrong credentials are refused at start").to_string();
    assert!(refused.contains("bucket berth"), "{refused}");

    write(common::minio::PASSWORD);
    let storage = S3Storage::open(&s3).await.unwrap();
    use berth_registry::storage::Lifecycle;
    storage.save_report(bytes::Bytes::from_static(b"{}")).await.unwrap();
    // Files are compared by time: make sure the rewrite gets a new one.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write("rotated-away");
    assert!(storage.load_report().await.is_err(), "the rotated (wrong) secret is used at once");
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(common::minio::PASSWORD);
    assert_eq!(storage.load_report().await.unwrap().as_deref(), Some(&b"{}"[..]));
}

/// A collection on the bucket deletes the layers of a deleted image and leaves
/// no content object without its blob; the other image still pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_frees_what_nothing_references() {
    let s3 = common::minio::s3_config();
    let storage = s3.clone();
    let r = Registry::with(move |c| {
        c.storage.s3 = Some(storage);
        c.gc.interval = None;
    })
    .await;
    let (kept, _) = r.push_image("gc/s3", "kept", b"kept layer").await;
    let (gone, _) = r.push_image("gc/s3", "gone", b"gone layer").await;
    let deleted = r.req(Method::DELETE, &format!("/v2/gc/s3/manifests/{gone}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);

    let mut config = berth_registry::Config::default();
    config.storage.s3 = Some(s3.clone());
    config.gc.grace_period = Span::secs(0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = berth_registry::gc::collect_once(&config, false).await.unwrap().expect("the lock was free");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["lastCollection"]["blobsDeleted"], 1, "{report}");
    let gone_layer = Digest::of(Algorithm::Sha256, b"gone layer");
    assert_eq!(r.get(&format!("/v2/gc/s3/blobs/{gone_layer}")).await.status(), StatusCode::NOT_FOUND);
    let pulled = r.req(Method::GET, "/v2/gc/s3/manifests/kept").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(header(&pulled, "docker-content-digest"), kept.to_string());
    let kept_layer = Digest::of(Algorithm::Sha256, b"kept layer");
    assert_eq!(r.get(&format!("/v2/gc/s3/blobs/{kept_layer}")).await.bytes().await.unwrap().as_ref(), b"kept layer");
    let (checked, bad) = common::minio::verify_blobs(&s3).await;
    assert_eq!((checked, bad), (2, Vec::<String>::new()), "the config and the kept layer");
}

/// Uploads share `bufferBytes` of memory: while a slow client holds the only
/// part's worth (its buffer is past 1 MiB), a second large push waits and is
/// turned away with 429 after 10 s, small pushes go on, and once the slow client
/// finishes the large push succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_share_a_bounded_buffer() {
    let (r, _) = on_s3(|s3| s3.buffer_bytes = s3.part_size_bytes + (1 << 20)).await;
    let slow_data = content(1, 3 << 20);
    let slow_digest = Digest::of(Algorithm::Sha256, &slow_data);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let slow = r
        .req(Method::POST, &format!("/v2/memory/slow/blobs/uploads/?digest={slow_digest}"))
        .header("content-length", slow_data.len())
        .body(body)
        .send();
    let slow = tokio::spawn(slow);
    tx.send(Ok(slow_data[..2 << 20].to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let small = content(2, 100_000);
    r.push_blob("memory/small", &small).await;
    let large = content(3, 2 << 20);
    let d = Digest::of(Algorithm::Sha256, &large);
    let url = format!("/v2/memory/large/blobs/uploads/?digest={d}");
    let refused = r.req(Method::POST, &url).body(large.clone()).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    tx.send(Ok(slow_data[2 << 20..].to_vec())).await.unwrap();
    drop(tx);
    let done = slow.await.unwrap().unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    r.push_blob("memory/large", &large).await;
}

/// A receiver as a stream of request body chunks.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
