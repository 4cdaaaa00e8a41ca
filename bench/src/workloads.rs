//! What is measured: blob pushes (monolithic and chunked), pulls, many small
//! pushes, and manifest GET/HEAD load (through wrk).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

pub const CHUNK: usize = 16 << 20;

/// A blob held as 16 MiB chunks, sent `repeat` times over (so a 4 GiB push does
/// not need 4 GiB of client memory).
#[derive(Clone)]
pub struct Blob {
    pub chunks: Vec<Bytes>,
    pub repeat: usize,
    pub digest: String,
}

impl Blob {
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum::<u64>() * self.repeat as u64
    }

    /// Pseudo-random content (incompressible, so no layer of the stack can cheat).
    pub fn generate(mib: usize, repeat: usize, seed: u64) -> Blob {
        Blob::random(mib << 20, repeat, seed)
    }

    /// [`Blob::generate`] of `len` bytes, a multiple of 8.
    pub fn random(len: usize, repeat: usize, seed: u64) -> Blob {
        assert_eq!(len % 8, 0, "blob lengths are whole 8-byte words");
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut chunks = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            let mut buf = Vec::with_capacity(n);
            for _ in 0..n / 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            chunks.push(Bytes::from(buf));
            left -= n;
        }
        let mut h = Sha256::new();
        for _ in 0..repeat {
            for c in &chunks {
                h.update(c);
            }
        }
        Blob { chunks, repeat, digest: format!("sha256:{}", hex::encode(h.finalize())) }
    }

    fn stream(&self) -> reqwest::Body {
        let chunks = self.chunks.clone();
        let all = (0..self.repeat).flat_map(move |_| chunks.clone().into_iter()).map(Ok::<_, std::io::Error>);
        reqwest::Body::wrap_stream(futures_util::stream::iter(all))
    }
}

fn location(base: &str, r: &reqwest::Response) -> String {
    let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).expect("upload location");
    if loc.starts_with("http") { loc.to_owned() } else { format!("{base}{loc}") }
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn start_upload(client: &Client, base: &str, repo: &str) -> String {
    let r = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "POST upload");
    location(base, &r)
}

/// POST then one PUT carrying the whole blob (what most clients do for small
/// and medium blobs). Returns the elapsed time.
pub async fn push_monolithic(client: &Client, base: &str, repo: &str, blob: &Blob) -> Duration {
    let t = Instant::now();
    let url = start_upload(client, base, repo).await;
    let r = client
        .put(with_digest(&url, &blob.digest))
        .header("content-length", blob.len())
        .header("content-type", "application/octet-stream")
        .body(blob.stream())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "PUT blob: {}", r.text().await.unwrap_or_default());
    t.elapsed()
}

/// POST, one PATCH per 16 MiB chunk with `Content-Range`, then PUT.
pub async fn push_chunked(client: &Client, base: &str, repo: &str, blob: &Blob) -> Duration {
    assert_eq!(blob.repeat, 1);
    let t = Instant::now();
    let mut url = start_upload(client, base, repo).await;
    let mut offset = 0u64;
    for chunk in &blob.chunks {
        let end = offset + chunk.len() as u64 - 1;
        let r = client
            .patch(&url)
            .header("content-range", format!("{offset}-{end}"))
            .header("content-length", chunk.len())
            .header("content-type", "application/octet-stream")
            .body(chunk.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "PATCH");
        url = location(base, &r);
        offset = end + 1;
    }
    let r = client.put(with_digest(&url, &blob.digest)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "PUT");
    t.elapsed()
}

/// Downloads `url` and discards the bytes. Returns (bytes, elapsed).
pub async fn pull(client: &Client, url: &str) -> (u64, Duration) {
    let t = Instant::now();
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        n += chunk.unwrap().len() as u64;
    }
    (n, t.elapsed())
}

/// `count` distinct 4 KiB blobs pushed with POST+PUT by `clients` concurrent clients.
pub async fn small_blobs(base: &str, repo: &str, count: usize, clients: usize, seed: u64) -> f64 {
    let blobs: Vec<(Bytes, String)> = (0..count)
        .map(|i| {
            let mut data = vec![0u8; 4096];
            data[..8].copy_from_slice(&(seed * 1_000_000 + i as u64).to_le_bytes());
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
            (Bytes::from(data), digest)
        })
        .collect();
    let blobs = std::sync::Arc::new(blobs);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (blobs, next, base, repo) = (blobs.clone(), next.clone(), base.to_owned(), repo.to_owned());
            tokio::spawn(async move {
                let client = Client::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((data, digest)) = blobs.get(i) else { break };
                    let url = start_upload(&client, &base, &repo).await;
                    let r = client.put(with_digest(&url, digest)).body(data.clone()).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / t.elapsed().as_secs_f64()
}

/// Pushes a one-layer OCI image tagged `latest`; returns the manifest's path.
pub async fn push_image(client: &Client, base: &str, repo: &str) -> String {
    let config = Bytes::from_static(b"{}");
    let layer = Bytes::from(vec![7u8; 1024]);
    let mut descriptors = Vec::new();
    for data in [&config, &layer] {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let url = start_upload(client, base, repo).await;
        let r = client.put(with_digest(&url, &digest)).body(data.clone()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        descriptors.push((digest, data.len()));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": descriptors[0].0, "size": descriptors[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": descriptors[1].0, "size": descriptors[1].1}]
    });
    let path = format!("/v2/{repo}/manifests/latest");
    let r = client
        .put(format!("{base}{path}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    path
}

pub struct Load {
    pub rps: f64,
    pub p99_ms: f64,
}

/// Keeps `conns` keep-alive connections busy with `method` requests for `path`
/// for `secs` seconds. A raw HTTP/1.1 loop rather than an HTTP library, so the
/// client costs as little CPU as possible (and, unlike wrk, handles HEAD).
pub async fn load(base: &str, path: &str, method: &str, conns: usize, secs: u64, auth: Option<&str>) -> Load {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n{auth}\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, request) = (addr.clone(), request.clone());
            let head = method == "HEAD";
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut latencies = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    stream.write_all(request.as_bytes()).await.unwrap();
                    let mut filled = 0;
                    let header_end = loop {
                        let n = stream.read(&mut buf[filled..]).await.unwrap();
                        assert!(n > 0, "server closed the connection");
                        filled += n;
                        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let headers = std::str::from_utf8(&buf[..header_end]).unwrap().to_ascii_lowercase();
                    assert!(headers.starts_with("http/1.1 200"), "unexpected response: {headers}");
                    let length: usize = headers
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let body = if head { 0 } else { length };
                    let mut have = filled - header_end;
                    while have < body {
                        let n = stream.read(&mut buf).await.unwrap();
                        assert!(n > 0, "server closed the connection");
                        have += n;
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    Load { rps: all.len() as f64 / secs as f64, p99_ms: p99.as_secs_f64() * 1000.0 }
}
