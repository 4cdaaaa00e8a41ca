//! `berth-bench --mirror`: pull-through caches. One upstream, Distribution
//! v3.1.1 on loopback, holds an image (a config and 4 layers). Each round, a
//! fresh berth mirror and a fresh Distribution v3.1.1 in proxy mode are pulled
//! from cold by `--clients` concurrent clients (each pulls the whole image:
//! the manifest by tag, then every blob), then again warm; a berth with the
//! image pushed to it directly is the reference for warm pulls. Every body a
//! client gets is checked against its digest, and the upstream's log says
//! what each cache fetched from it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_bench::servers::{Binaries, Server};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::workloads::{Blob, push_monolithic};
use crate::{Args, Samples, median, settle};

const MIRROR: &str = "berth mirror";
const PROXY: &str = "distribution v3.1.1 proxy";
const PLAIN: &str = "berth, no mirror";
const COLUMNS: [&str; 3] = [MIRROR, PROXY, PLAIN];

const COLD: &str = "cold pull (MB/s)";
const FIRST: &str = "cold pull, first client done (s)";
const LAST: &str = "cold pull, last client done (s)";
const BLOB_GETS: &str = "cold pull, upstream blob GETs";
const REQUESTS: &str = "cold pull, upstream requests";
const UPSTREAM_MB: &str = "cold pull, upstream bytes sent (MB)";
const WARM: &str = "warm pull (MB/s)";
const WARM_REQUESTS: &str = "warm pull, upstream requests";
const RETRIES: &str = "blob GETs retried after a broken body (all rounds)";

/// Metrics in table order, with the column each ratio is against.
const ROWS: [(&str, Option<&str>); 9] = [
    (COLD, Some(PROXY)),
    (FIRST, Some(PROXY)),
    (LAST, Some(PROXY)),
    (BLOB_GETS, Some(PROXY)),
    (REQUESTS, Some(PROXY)),
    (UPSTREAM_MB, Some(PROXY)),
    (WARM, Some(PLAIN)),
    (WARM_REQUESTS, None),
    (RETRIES, None),
];

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The repository upstream; berth mirrors it as `hub/app` (Docker Hub's
/// `library/` rule), Distribution's proxy under its own name.
const UPSTREAM_REPO: &str = "library/app";
const TAG: &str = "v1";
/// Tries of one blob GET whose body broke off (a cache may end a streamed body
/// early and expect the client to come back).
const TRIES: usize = 3;

/// The image: its config and layers, and the manifest that names them.
struct Image {
    blobs: Vec<Blob>,
    manifest: Bytes,
    digest: String,
}

impl Image {
    /// A config and 4 layers of 40, 30, 20 and 10% of `total` bytes.
    fn generate(total: usize) -> Image {
        let config =
            Bytes::from_static(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
        let mut blobs = vec![Blob { digest: sha256(&config), chunks: vec![config], repeat: 1 }];
        let mut left = total;
        for (i, tenths) in [4, 3, 2, 1].into_iter().enumerate() {
            let len = if tenths == 1 { left } else { total * tenths / 10 / 8 * 8 };
            left -= len;
            blobs.push(Blob::random(len, 1, 101 + i as u64));
        }
        let descriptor =
            |media: &str, b: &Blob| serde_json::json!({"mediaType": media, "digest": b.digest, "size": b.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &blobs[0]),
            "layers": blobs[1..].iter().map(|b| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", b)).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
        Image { digest: sha256(&manifest), blobs, manifest }
    }

    async fn push(&self, base: &str, repo: &str) {
        let client = Client::new();
        for blob in &self.blobs {
            push_monolithic(&client, base, repo, blob).await;
        }
        let r = client
            .put(format!("{base}/v2/{repo}/manifests/{TAG}"))
            .header("content-type", MANIFEST_TYPE)
            .body(self.manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "PUT manifest: {}", r.text().await.unwrap_or_default());
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What a client got that it should not have, or could not get at all.
#[derive(Debug)]
enum PullError {
    /// The request failed or the body broke off: worth another try.
    Broken(String),
    /// A whole answer whose bytes do not match its digest.
    Wrong(String),
}

/// One client's pull of the whole image: the manifest by tag, checked against
/// the pushed manifest's digest, then each blob it names, in order, each
/// checked against its digest. Returns the bytes received and the retries.
async fn pull_image(client: &Client, base: &str, repo: &str, image: &Image) -> Result<(u64, u64), String> {
    let url = format!("{base}/v2/{repo}/manifests/{TAG}");
    let r = client.get(&url).header("accept", MANIFEST_TYPE).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if r.status() != StatusCode::OK {
        return Err(format!("GET {url}: HTTP {}", r.status()));
    }
    let manifest = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if sha256(&manifest) != image.digest {
        return Err(format!("GET {url}: a manifest with digest {} instead of {}", sha256(&manifest), image.digest));
    }
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let digests = std::iter::once(&parsed["config"])
        .chain(parsed["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_owned());
    let (mut bytes, mut retries) = (manifest.len() as u64, 0);
    for digest in digests {
        let url = format!("{base}/v2/{repo}/blobs/{digest}");
        for attempt in 1.. {
            match get_blob(client, &url, &digest).await {
                Ok(n) => {
                    bytes += n;
                    break;
                }
                Err(PullError::Broken(e)) if attempt < TRIES => {
                    eprintln!("  retrying {url}: {e}");
                    retries += 1;
                }
                Err(PullError::Broken(e) | PullError::Wrong(e)) => return Err(e),
            }
        }
    }
    Ok((bytes, retries))
}

async fn get_blob(client: &Client, url: &str, digest: &str) -> Result<u64, PullError> {
    let broken = |e: String| PullError::Broken(format!("GET {url}: {e}"));
    let r = client.get(url).send().await.map_err(|e| broken(e.to_string()))?;
    if r.status() != StatusCode::OK {
        return Err(broken(format!("HTTP {}", r.status())));
    }
    let mut hash = Sha256::new();
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| broken(format!("after {n} bytes: {e}")))?;
        n += chunk.len() as u64;
        hash.update(&chunk);
    }
    let got = format!("sha256:{}", hex::encode(hash.finalize()));
    if got != digest {
        return Err(PullError::Wrong(format!("GET {url}: {n} bytes with digest {got}")));
    }
    Ok(n)
}

/// `clients` clients, each with its own connections, pulling the whole image at once.
struct Pull {
    mbps: f64,
    first: Duration,
    last: Duration,
    retries: u64,
}

async fn pull_all(base: &str, repo: &str, image: &std::sync::Arc<Image>, clients: usize) -> Result<Pull, String> {
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (base, repo, image) = (base.to_owned(), repo.to_owned(), image.clone());
            tokio::spawn(async move {
                let got = pull_image(&Client::new(), &base, &repo, &image).await;
                (got, t.elapsed())
            })
        })
        .collect();
    let (mut bytes, mut retries, mut times, mut errors) = (0, 0, Vec::new(), Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            (Ok((n, r)), d) => {
                bytes += n;
                retries += r;
                times.push(d);
            }
            (Err(e), _) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let elapsed = t.elapsed();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let mbps = bytes as f64 / 1e6 / elapsed.as_secs_f64();
    eprintln!("  {mbps:.0} MB/s, {:.2} s", elapsed.as_secs_f64());
    Ok(Pull { mbps, first, last, retries })
}

/// One request the upstream answered, from its log.
struct Served {
    method: String,
    uri: String,
    agent: String,
    written: u64,
}

/// The upstream: a Distribution v3.1.1 that logs every response it completes
/// as a line of JSON.
struct Upstream {
    server: Server,
}

impl Upstream {
    fn log(&self) -> std::path::PathBuf {
        self.server.dir.path().join("stderr.log")
    }

    /// Where its log ends once nothing was added to it for 300 ms (a cache may
    /// still be fetching after its clients were served).
    async fn quiet(&self) -> u64 {
        let len = || std::fs::metadata(self.log()).map(|m| m.len()).unwrap_or(0);
        let mut last = len();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = len();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// The requests logged between two offsets of the log, of berth's upstream
    /// client (`berth`) or of any other.
    fn served(&self, (from, to): (u64, u64), berth: bool) -> Vec<Served> {
        let log = std::fs::read(self.log()).unwrap();
        let text = String::from_utf8_lossy(&log[from as usize..to as usize]);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "response completed")
            .map(|v| Served {
                method: v["http.request.method"].as_str().unwrap_or_default().to_owned(),
                uri: v["http.request.uri"].as_str().unwrap_or_default().to_owned(),
                agent: v["http.request.useragent"].as_str().unwrap_or_default().to_owned(),
                written: v["http.response.written"].as_u64().unwrap_or(0),
            })
            .filter(|s| s.agent.starts_with("berth-registry/") == berth)
            .collect()
    }
}

fn blob_gets(served: &[Served]) -> impl Iterator<Item = &Served> {
    served.iter().filter(|s| s.method == "GET" && s.uri.contains("/blobs/sha256:"))
}

fn record(s: &mut Samples, metric: &'static str, column: &'static str, v: f64) {
    s.entry(metric).or_default().entry(column).or_default().push(v);
}

/// A cache under test: a berth mirror or a Distribution proxy, fresh.
async fn start_cache(bins: &Binaries, column: &str, upstream: &str) -> (Server, &'static str) {
    if column == MIRROR {
        let yaml = format!("mirrors: [{{prefix: hub, url: '{upstream}', library: true}}]\n");
        (Server::start_berth(bins, &yaml, &[]).await, "hub/app")
    } else {
        let log = "{level: error, accesslog: {disabled: true}}";
        (Server::start_distribution(bins, log, &format!("proxy: {{remoteurl: '{upstream}'}}\n")).await, UPSTREAM_REPO)
    }
}

/// Runs the rounds; returns the table as Markdown and what went wrong (wrong
/// bytes, a berth mirror that fetched a blob more than once).
pub async fn run(args: &Args, bins: &Binaries) -> (String, Vec<String>) {
    let mib = args.blob_mib.unwrap_or(64);
    eprintln!("generating a {mib} MiB image");
    let image = std::sync::Arc::new(Image::generate(mib << 20));
    let log = "{level: info, formatter: json, accesslog: {disabled: true}}";
    let upstream = Upstream { server: Server::start_distribution(bins, log, "").await };
    image.push(&upstream.server.base, UPSTREAM_REPO).await;
    let mut s = Samples::new();
    let mut failures = Vec::new();
    let mut gets_per_round: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut retries: BTreeMap<&str, u64> = BTreeMap::new();
    for round in 0..args.rounds {
        // The mirror always runs next to its warm reference; the proxy goes first or last in turn.
        let order = if round % 2 == 0 { [PLAIN, MIRROR, PROXY] } else { [PROXY, MIRROR, PLAIN] };
        for column in order {
            eprintln!("round {round}: {column}");
            let mut fail = |what: &str, e: String| failures.push(format!("round {round}, {column}, {what}: {e}"));
            if column == PLAIN {
                let server = Server::start_berth(bins, "", &[]).await;
                image.push(&server.base, UPSTREAM_REPO).await;
                settle();
                match pull_all(&server.base, UPSTREAM_REPO, &image, args.clients).await {
                    Ok(p) => {
                        record(&mut s, WARM, column, p.mbps);
                        *retries.entry(column).or_default() += p.retries;
                    }
                    Err(e) => fail("warm pull", e),
                }
                continue;
            }
            let (cache, repo) = start_cache(bins, column, &upstream.server.base).await;
            let berth = column == MIRROR;
            let start = upstream.quiet().await;
            settle();
            let cold = pull_all(&cache.base, repo, &image, args.clients).await;
            let end = upstream.quiet().await;
            match cold {
                Ok(p) => {
                    record(&mut s, COLD, column, p.mbps);
                    record(&mut s, FIRST, column, p.first.as_secs_f64());
                    record(&mut s, LAST, column, p.last.as_secs_f64());
                    *retries.entry(column).or_default() += p.retries;
                }
                Err(e) => fail("cold pull", e),
            }
            let served = upstream.served((start, end), berth);
            let gets: Vec<&Served> = blob_gets(&served).collect();
            record(&mut s, BLOB_GETS, column, gets.len() as f64);
            record(&mut s, REQUESTS, column, served.len() as f64);
            record(&mut s, UPSTREAM_MB, column, served.iter().map(|s| s.written).sum::<u64>() as f64 / 1e6);
            gets_per_round.entry(column).or_default().push(gets.len());
            if berth {
                for blob in &image.blobs {
                    let n = gets.iter().filter(|g| g.uri.ends_with(&blob.digest)).count();
                    if n != 1 {
                        fail("upstream", format!("{n} GETs of {} (one expected)", blob.digest));
                    }
                }
            }
            settle();
            let warm = pull_all(&cache.base, repo, &image, args.clients).await;
            let after = upstream.quiet().await;
            match warm {
                Ok(p) => {
                    record(&mut s, WARM, column, p.mbps);
                    *retries.entry(column).or_default() += p.retries;
                }
                Err(e) => fail("warm pull", e),
            }
            record(&mut s, WARM_REQUESTS, column, upstream.served((end, after), berth).len() as f64);
        }
    }
    for (column, n) in retries {
        record(&mut s, RETRIES, column, n as f64);
    }
    (render(&s, args, mib, image.blobs.len(), &gets_per_round), failures)
}

fn render(s: &Samples, args: &Args, mib: usize, blobs: usize, gets: &BTreeMap<&str, Vec<usize>>) -> String {
    let mut out = format!(
        "Medians of {} interleaved rounds; an image of {blobs} blobs (a config and 4 layers, {mib} MiB in all) on \
         Distribution v3.1.1 as the upstream, on loopback; {} clients, each pulling the whole image (manifest by tag, \
         then each blob in turn) at once, every body checked against its digest. Cold: a fresh cache, and the upstream's \
         log for what it fetched; warm: the same clients again.\n\n\
         | metric | {} | berth mirror / reference | reference |\n|---|---|---|---|---|---|\n",
        args.rounds,
        args.clients,
        COLUMNS.join(" | "),
    );
    for (metric, reference) in ROWS {
        let Some(by_column) = s.get(metric) else { continue };
        let cell = |c: &str| by_column.get(c).map(|v| if metric == RETRIES { v[0] } else { median(v) });
        let fmt = |v: Option<f64>| {
            v.map(|v| if v >= 100.0 || v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") })
                .unwrap_or_else(|| "–".into())
        };
        let ratio = match (cell(MIRROR), reference.and_then(cell)) {
            (Some(b), Some(r)) if r > 0.0 => format!("{:.2}x", b / r),
            _ => "–".into(),
        };
        let cells: Vec<String> = COLUMNS.iter().map(|c| fmt(cell(c))).collect();
        let reference = if ratio == "–" { "–" } else { reference.unwrap() };
        out += &format!("| {metric} | {} | {ratio} | {reference} |\n", cells.join(" | "));
    }
    out += "\nUpstream blob GETs in each cold round:";
    for (column, n) in gets {
        let n: Vec<String> = n.iter().map(|n| n.to_string()).collect();
        out += &format!(" {column} {};", n.join(", "));
    }
    out.pop();
    out += ".\n";
    out
}
