//! Clients that stall or crowd the server: each limit ends or refuses them, and
//! everyone else keeps being served.

mod common;

use std::time::{Duration, Instant};

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(reg: &Registry) -> TcpStream {
    TcpStream::connect(reg.base.trim_start_matches("http://")).await.unwrap()
}

/// Sends the head of a request whose body is announced but not (yet) sent.
async fn stalled(reg: &Registry, method: &str, path: &str, headers: &str, body_start: &[u8]) -> TcpStream {
    let mut s = connect(reg).await;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body_start).await.unwrap();
    s
}

/// Reads until the server closes the connection; returns what it sent and when.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open for {limit:?}");
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

async fn start_upload(reg: &Registry, repo: &str) -> String {
    let r = reg.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    let location = header(&r, "location");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    location
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off() {
    let reg = Registry::with(|c| c.limits.header_timeout_secs = 1).await;
    let mut s = connect(&reg).await;
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = s.write_all(b"X").await; // trickled header bytes do not extend the limit
    }
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert_eq!(reg.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_quiet_body_ends_its_request_and_the_session_resumes() {
    let reg = Registry::with(|c| c.limits.body_idle_timeout_secs = 1).await;
    let location = start_upload(&reg, "idle").await;
    let mut s = stalled(&reg, "PATCH", &location, "Content-Length: 100\r\n", b"0123456789").await;
    let (response, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 400"), "{response}");

    let status = reg.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&status, "range"), "0-0", "unacknowledged bytes count");
    let data = b"the whole blob".to_vec();
    let digest = Digest::of(Algorithm::Sha256, &data);
    let r = reg.req(Method::PUT, &format!("{location}?digest={digest}")).body(data).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let reg = Registry::with(|c| c.limits.idle_timeout_secs = 1).await;
    let mut s = connect(&reg).await;
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (response, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "closed after {took:?}");
}

#[tokio::test]
async fn uploads_past_the_cap_are_told_to_retry() {
    let reg = Registry::with(|c| c.limits.max_uploads = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let location = start_upload(&reg, "cap").await;
        held.push(stalled(&reg, "PATCH", &location, "Content-Length: 100\r\n", b"x").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reg
        .req(
            Method::POST,
            "/v2/cap/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "retry-after"), "1");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    // Pulls and upload starts are not uploads.
    assert_eq!(reg.get("/v2/").await.status(), StatusCode::OK);
    start_upload(&reg, "cap").await;

    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    reg.push_blob("cap", b"after the stalled ones left").await;
}

#[tokio::test]
async fn buffered_manifests_have_a_budget() {
    let reg = Registry::with(|c| {
        c.manifests.validation.max_size = 1 << 20;
        c.limits.manifest_buffer_bytes = 1 << 20;
    })
    .await;
    let half = vec![b' '; 600 << 10];
    let mut slow = stalled(
        &reg,
        "PUT",
        "/v2/budget/manifests/slow",
        &format!("Content-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n", 1 << 20),
        &half,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reg.put_manifest("budget", "other", OCI_MANIFEST, &half).await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    slow.shutdown().await.unwrap();
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, manifest) = reg.push_image("budget", "fits", b"layer").await;
    assert!(!manifest.is_empty());
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_the_rest_served() {
    let reg = Registry::with(|c| c.limits.max_connections = 4).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect(&reg).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect(&reg).await;
    let _ = extra.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (response, _) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(response.is_empty(), "served past the cap: {response}");
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reg.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn one_session_is_written_by_one_request_at_a_time() {
    let reg = Registry::start().await;
    let location = start_upload(&reg, "busy").await;
    let _writer = stalled(&reg, "PATCH", &location, "Content-Length: 100\r\n", b"x").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = reg.req(Method::PATCH, &location).body("y").send().await.unwrap();
    assert_eq!(header(&r, "retry-after"), "1");
    assert_error(r, StatusCode::CONFLICT, "BLOB_UPLOAD_INVALID").await;
    assert!(started.elapsed() >= Duration::from_secs(4), "gave up after {:?}", started.elapsed());
}

#[tokio::test]
async fn stalled_uploads_leave_pulls_and_pushes_alone() {
    let reg = Registry::start().await;
    let blob = vec![7u8; 4 << 20];
    let digest = reg.push_blob("pull", &blob).await;
    let mut stalled_bodies = Vec::new();
    for i in 0..600 {
        let location = start_upload(&reg, &format!("stall{}", i % 7)).await;
        stalled_bodies.push(stalled(&reg, "PATCH", &location, "Content-Length: 1000000\r\n", b"x").await);
    }
    let started = Instant::now();
    for i in 0..20 {
        let r = reg.get(&format!("/v2/pull/blobs/{digest}")).await;
        assert_eq!(r.bytes().await.unwrap().len(), blob.len());
        reg.push_blob("push", format!("small blob {i}").as_bytes()).await;
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
