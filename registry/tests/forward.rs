//! The node-access forwarder: an image pushed and pulled through it is the same.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use berth_registry::forward::Limits;
use common::*;
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn push_and_pull_through_the_forwarder() {
    let reg = Registry::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let upstream = reg.base.trim_start_matches("http://").to_owned();
    let task = tokio::spawn(berth_registry::forward::run(listener, upstream, Default::default(), async {
        let _ = stopped.await;
    }));
    let via = reg.via(format!("http://{addr}"));

    let layer: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let (digest, _) = via.push_image("through/forwarder", "v1", &layer).await;
    let r =
        reg.req(Method::GET, "/v2/through/forwarder/manifests/v1").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string(), "not stored upstream");
    let layer_digest = Digest::of(Algorithm::Sha256, &layer);
    let r = via.get(&format!("/v2/through/forwarder/blobs/{layer_digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), layer);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
}

/// A forwarder in-process with `idle_timeout`, in front of `upstream`.
async fn forwarder(upstream: std::net::SocketAddr, idle_timeout: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits { idle_timeout, ..Default::default() };
    tokio::spawn(berth_registry::forward::run(listener, upstream.to_string(), limits, std::future::pending()));
    addr
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    // An upstream that accepts and then neither reads nor writes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let addr = forwarder(upstream, Duration::from_secs(1)).await;

    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.expect("idle connection kept open");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the idle timeout");

    // Bytes every 300 ms keep a connection alive past the timeout.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for _ in 0..8 {
        busy.write_all(b"x").await.expect("busy connection closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let still_open = tokio::time::timeout(Duration::from_millis(200), busy.read(&mut buf)).await;
    assert!(still_open.is_err(), "busy connection was closed");
}

#[tokio::test]
async fn survives_running_out_of_file_descriptors() {
    let reg = Registry::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let upstream = reg.base.trim_start_matches("http://").to_owned();
    // A forwarder process allowed only 32 file descriptors.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 32 && exec {} forward --listen 127.0.0.1:{port} --upstream {upstream}",
            env!("CARGO_BIN_EXE_berth-registry")
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let via = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{via}/v2/")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "forwarder did not start");

    // More connections than it has descriptors for: accepts fail with EMFILE.
    let mut flood = Vec::new();
    for _ in 0..64 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "forwarder exited when it ran out of descriptors");
    drop(flood);

    let mut served = false;
    for _ in 0..50 {
        let fresh = reqwest::Client::new();
        if let Ok(r) = fresh.get(format!("{via}/v2/")).timeout(Duration::from_secs(2)).send().await {
            served = r.status() == StatusCode::OK;
            if served {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "forwarder stopped serving after running out of descriptors");
}
