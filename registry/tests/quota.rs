//! Quotas: a push that would take a repository past its limit, or the registry
//! past its total, is refused with 403 DENIED as early as its size is known, and
//! leaves nothing behind.

mod common;

use std::time::Duration;

use berth_registry::config::QuotaOverride;
use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};

async fn limited(repository_bytes: u64, total_bytes: u64) -> Registry {
    counted(|c| {
        c.quota.repository_bytes = repository_bytes;
        c.quota.total_bytes = total_bytes;
    })
    .await
}

/// A registry whose start-up count of the storage is done: the figures it sets
/// would otherwise replace those of pushes the test made while it ran.
async fn counted(adjust: impl FnOnce(&mut berth_registry::Config)) -> Registry {
    let reg = Registry::with(adjust).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !reg.root.join("gc/report.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the start-up count saved no report");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    reg
}

/// Asserts that nothing stays in the storage's `tmp/`.
fn assert_no_temporary_files(reg: &Registry) {
    let left = files_below(&reg.root.join("tmp"));
    assert!(left.is_empty(), "files left in tmp/: {left:?}");
}

async fn blob_status(reg: &Registry, repo: &str, digest: &Digest) -> StatusCode {
    reg.req(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")).send().await.unwrap().status()
}

async fn start(reg: &Registry, repo: &str) -> String {
    let r = reg.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    header(&r, "location")
}

/// Sends request headers announcing `Content-Length: len` and no body at all,
/// and returns the status line's code and the response body. Only a server that
/// answers without reading the body answers at all.
async fn headers_only(base: &str, method: &str, path: &str, len: u64) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if n == 0 || text.contains("\r\n\r\n") && text.ends_with('}') {
                return text.into_owned();
            }
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server waited for a body it should have refused unread");
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_monolithic_push_past_the_limit_is_refused_before_its_body_is_read() {
    let reg = limited(1000, 0).await;
    let kept = content(1, 600);
    let kept_digest = reg.push_blob("team/app", &kept).await;

    let refused = content(2, 500);
    let digest = Digest::of(Algorithm::Sha256, &refused);
    let path = format!("/v2/team/app/blobs/uploads/?digest={digest}");
    let (status, body) = headers_only(&reg.base, "POST", &path, 500).await;
    assert_eq!(status, 403, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(
        body["errors"][0]["message"],
        "push refused by the quota of repository team/app: 600 of 1000 bytes are used \
         and this push needs at least 500 more"
    );

    // Through a normal client too, and nothing of it is stored.
    let r = reg.req(Method::POST, &path).body(refused.clone()).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(blob_status(&reg, "team/app", &digest).await, StatusCode::NOT_FOUND);
    assert_no_temporary_files(&reg);
    // What fits still does, and the first blob is intact.
    reg.push_blob("team/app", &content(3, 400)).await;
    assert_eq!(reg.get(&format!("/v2/team/app/blobs/{kept_digest}")).await.bytes().await.unwrap(), kept);
}

#[tokio::test]
async fn a_full_repository_refuses_new_sessions_and_other_repositories_do_not() {
    let reg = limited(1000, 0).await;
    reg.push_blob("full", &content(1, 1000)).await;
    let r = reg.req(Method::POST, "/v2/full/blobs/uploads/").send().await.unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(message, "push refused by the quota of repository full: 1000 of 1000 bytes are used");
    start(&reg, "other").await;
    // A blob already linked adds nothing, so pushing it again is no push past the limit.
    reg.push_blob("full", &content(1, 1000)).await;
}

#[tokio::test]
async fn a_chunk_of_unknown_length_is_cut_off_as_it_passes_the_limit() {
    let reg = limited(2_000_000, 0).await;
    let data = content(7, 50_000);
    let location = start(&reg, "streamed").await;
    let r = reg.req(Method::PATCH, &location).body(data[..40_000].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = header(&r, "location");

    // 8 x 250 000 bytes after 40 000: the last chunk passes 2 000 000, long after
    // the first ones went to disk. Sent as a stream, so the request is chunked
    // and announces no length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|i| Ok(content(100 + i, 250_000))).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = reg.req(Method::PATCH, &location).body(body).send().await.unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(message.contains("quota of repository streamed: 0 of 2000000 bytes are used"), "{message}");
    assert!(message.contains("needs at least 2040000 more"), "{message}");

    // The session is where it was, on the wire and on disk, and nothing else stayed.
    let r = reg.get(&location).await;
    assert_eq!(header(&r, "range"), "0-39999");
    let id = location.rsplit('/').next().unwrap();
    let data_file = reg.root.join("repositories/streamed/_uploads").join(id);
    assert_eq!(std::fs::metadata(&data_file).unwrap().len(), 40_000, "the refused bytes were cut off");
    assert_no_temporary_files(&reg);

    // A last chunk with a known length that does not fit is refused before it is read.
    let digest = Digest::of(Algorithm::Sha256, &data);
    let finish = format!("{location}?digest={digest}");
    let r = reg.req(Method::PUT, &finish).body(content(8, 1_960_001)).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    // One that fits finishes the blob.
    let r = reg.req(Method::PUT, &finish).body(data[40_000..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    assert_eq!(reg.get(&format!("/v2/streamed/blobs/{digest}")).await.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn finishing_a_session_past_the_limit_is_refused() {
    let reg = limited(1000, 0).await;
    let data = content(1, 800);
    let digest = Digest::of(Algorithm::Sha256, &data);
    let location = start(&reg, "race").await;
    let r = reg.req(Method::PATCH, &location).body(data.clone()).send().await.unwrap();
    let location = header(&r, "location");
    // Meanwhile another push fills most of the repository.
    reg.push_blob("race", &content(2, 300)).await;
    let r = reg.req(Method::PUT, &format!("{location}?digest={digest}")).send().await.unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(message.contains("300 of 1000 bytes are used and this push needs at least 800 more"), "{message}");
    assert_eq!(blob_status(&reg, "race", &digest).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_total_counts_shared_content_once_and_refuses_past_it() {
    let reg = limited(0, 1500).await;
    let shared = reg.push_blob("a", &content(1, 1000)).await;
    let r = reg.req(Method::POST, &format!("/v2/b/blobs/uploads/?mount={shared}&from=a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "a mount adds no content");
    let r = reg
        .req(Method::POST, &format!("/v2/b/blobs/uploads/?digest={}", Digest::of(Algorithm::Sha256, &content(2, 600))))
        .body(content(2, 600))
        .send()
        .await
        .unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(
        message,
        "push refused by the registry's total quota: 1000 of 1500 bytes are used and this push needs at least 600 more"
    );
    reg.push_blob("b", &content(3, 500)).await;
}

#[tokio::test]
async fn a_mount_past_the_repository_limit_is_refused() {
    let reg = limited(1500, 0).await;
    let big = reg.push_blob("a", &content(1, 1000)).await;
    reg.push_blob("b", &content(2, 1000)).await;
    let r = reg.req(Method::POST, &format!("/v2/b/blobs/uploads/?mount={big}&from=a")).send().await.unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(message.contains("repository b: 1000 of 1500 bytes are used and this push needs at least 1000 more"));
    assert_eq!(blob_status(&reg, "b", &big).await, StatusCode::NOT_FOUND);
    // Deleting a blob frees its repository's room.
    let small = reg.push_blob("b", &content(3, 400)).await;
    let r = reg.req(Method::DELETE, &format!("/v2/b/blobs/{small}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = reg.req(Method::POST, &format!("/v2/b/blobs/uploads/?mount={big}&from=a")).send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    reg.push_blob("b", &content(4, 500)).await;
}

#[tokio::test]
async fn an_override_sets_another_limit_for_matching_repositories() {
    let reg = counted(|c| {
        c.quota.repository_bytes = 1000;
        c.quota.overrides = vec![QuotaOverride { repositories: vec!["big/*".into()], bytes: 5000 }];
    })
    .await;
    reg.push_blob("big/app", &content(1, 3000)).await;
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/small/blobs/uploads/?digest={}", Digest::of(Algorithm::Sha256, &content(1, 3000))),
        )
        .body(content(1, 3000))
        .send()
        .await
        .unwrap();
    let message = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(message.contains("repository small: 0 of 1000 bytes"), "{message}");
}

#[tokio::test]
async fn manifests_are_never_refused() {
    let reg = limited(3, 0).await;
    // The config blob `{}` fills the repository to 2 of 3 bytes; the layer is 1.
    let (digest, _) = reg.push_image("tiny", "t", b"l").await;
    let r = reg.req(Method::GET, "/v2/tiny/manifests/t").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    // The repository is full for blobs all the same.
    let r = reg.req(Method::POST, "/v2/tiny/blobs/uploads/").send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
}
