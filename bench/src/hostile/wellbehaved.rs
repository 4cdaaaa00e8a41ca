//! The well-behaved client: pulls a 1 MiB blob and pushes a 4 KiB one, in turn,
//! timing each operation.
//!
//! Every request goes on a new connection (no idle connections are pooled): a
//! kept-alive connection would already be past accept and header parsing, and
//! those are exactly what thousands of hostile connections compete for.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Pull,
    Push,
}

impl OpKind {
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Pull => "pull 1 MiB blob",
            OpKind::Push => "push 4 KiB blob (POST + PUT)",
        }
    }
}

pub struct Op {
    pub kind: OpKind,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Keeps no idle connection, so every request opens a new one.
pub fn client() -> Client {
    Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

/// Alternates pulls of `blob` (already pushed to `repo`, with `digest`) and
/// pushes of fresh small blobs until `end`. An operation fails on any error,
/// a wrong status or wrong bytes, or by taking longer than `limit`.
pub async fn run(base: &str, repo: &str, blob: &Bytes, digest: &str, end: Instant, limit: Duration) -> Vec<Op> {
    let client = client();
    let mut ops = Vec::new();
    let mut seed = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    for kind in [OpKind::Pull, OpKind::Push].into_iter().cycle() {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let outcome = match kind {
            OpKind::Pull => tokio::time::timeout(limit, pull(&client, base, repo, blob, digest)).await,
            OpKind::Push => {
                seed += 1;
                tokio::time::timeout(limit, push(&client, base, repo, random_blob(4096, seed))).await
            }
        };
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("took over {} s", limit.as_secs())),
        };
        ops.push(Op { kind, latency: t.elapsed(), error });
    }
    ops
}

async fn pull(client: &Client, base: &str, repo: &str, blob: &Bytes, digest: &str) -> Result<(), String> {
    let r = client.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.map_err(|e| format!("GET: {e}"))?;
    if r.status() != StatusCode::OK {
        return Err(format!("GET: {}", r.status()));
    }
    let body = r.bytes().await.map_err(|e| format!("GET body: {e}"))?;
    if body != blob {
        return Err(format!("GET: wrong bytes ({} bytes)", body.len()));
    }
    Ok(())
}

pub async fn push(client: &Client, base: &str, repo: &str, data: Bytes) -> Result<(), String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let r = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.map_err(|e| format!("POST: {e}"))?;
    if r.status() != StatusCode::ACCEPTED {
        return Err(format!("POST: {}", r.status()));
    }
    let location = r.headers().get("location").and_then(|v| v.to_str().ok()).ok_or("POST: no Location")?;
    let url = if location.starts_with("http") { location.to_owned() } else { format!("{base}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{url}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .map_err(|e| format!("PUT: {e}"))?;
    if r.status() != StatusCode::CREATED {
        return Err(format!("PUT: {}", r.status()));
    }
    Ok(())
}

/// `len` bytes of xorshift output (a multiple of 8): a new blob for each seed, so
/// every push is real work.
pub fn random_blob(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut data = Vec::with_capacity(len);
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(data)
}
