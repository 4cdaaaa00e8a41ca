//! `berth-bench --s3`: berth-registry and Distribution v3 (its s3 driver, blobs
//! served by the registry, not redirected) on one MinIO, each on its own prefix of
//! the bucket, measured interleaved with the workloads of the file-system run.
//! MinIO alone is the ceiling: its own PUT and GET of the large blob (by curl),
//! and anonymous GETs of a small object under the manifest load. Then each
//! operation once more under MinIO's trace: how many S3 requests it takes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_bench::minio::{self, Call, Trace};
use berth_bench::servers::{Binaries, Kind, S3, Server};
use reqwest::{Client, StatusCode};

use crate::workloads::*;
use crate::{Args, Samples, mbps, measure, record, settle};

const REGISTRIES: [Kind; 2] = [Kind::Berth, Kind::Distribution];

fn short(kind: Kind) -> &'static str {
    if kind == Kind::Berth { "berth" } else { "dist" }
}

/// Runs the rounds into `s`; returns the request profile as Markdown.
pub async fn run(args: &Args, bins: &Binaries, s: &mut Samples, mono: &Blob, chunked: &Blob) -> String {
    let bin = args.minio.as_ref().expect("--s3 needs --minio (or BERTH_MINIO)");
    let minio = Server::start_minio(bin).await;
    minio::public_read(&minio.base, "direct");
    for round in 0..args.rounds {
        for kind in REGISTRIES {
            eprintln!("round {round}: {} on MinIO", kind.label());
            let prefix = format!("{}-r{round}", short(kind));
            let server = start(kind, bins, &minio, &prefix).await;
            measure(s, kind, &server, args, round, mono, chunked).await;
            record(s, "peak RSS (MiB)", kind, server.peak_rss_kib() as f64 / 1024.0);
            drop(server);
            minio::delete_prefix(&minio.base, &prefix);
        }
        eprintln!("round {round}: MinIO direct");
        direct(s, &minio, mono, args.load_secs).await;
    }
    profile(args, bins, &minio, mono, chunked).await
}

/// A registry on `prefix`, checked to really store there (a build that ignores
/// `storage.s3` would serve from its directory).
async fn start(kind: Kind, bins: &Binaries, minio: &Server, prefix: &str) -> Server {
    let server = Server::start_on_s3(kind, bins, &S3 { minio, prefix }).await;
    small_blobs(&server.base, "bench/probe", 1, 1, 1 << 20).await;
    assert!(
        minio::has_objects(&minio.base, prefix),
        "{} stored nothing under {prefix} in the bucket; its stderr: {}",
        kind.label(),
        server.stderr()
    );
    server
}

/// MinIO's own single PUT and GET of the large blob, by curl from a file, and
/// the manifest load on a 512-byte object.
async fn direct(s: &mut Samples, minio: &Server, blob: &Blob, load_secs: u64) {
    use std::io::Write;
    let file = minio.dir.path().join("blob");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for _ in 0..blob.repeat {
        for c in &blob.chunks {
            f.write_all(c).unwrap();
        }
    }
    f.into_inner().unwrap().sync_all().unwrap();
    settle();
    let time = |key: &str, args: &[&str]| {
        let t = Instant::now();
        let path = format!("/{}/direct/{key}", minio::BUCKET);
        let status = minio::curl(&minio.base, &path).args(["-f", "-o", "/dev/null"]).args(args).status().unwrap();
        assert!(status.success(), "curl {args:?}");
        t.elapsed()
    };
    let put = time("blob", &["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", file.to_str().unwrap()]);
    record(s, "large push, monolithic (MB/s)", Kind::Minio, mbps(blob.len(), put));
    let get = time("blob", &[]);
    record(s, "large pull (MB/s)", Kind::Minio, mbps(blob.len(), get));
    std::fs::write(&file, [b' '; 512]).unwrap();
    time("manifest", &["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", file.to_str().unwrap()]);
    let path = format!("/{}/direct/manifest", minio::BUCKET);
    let get = load(&minio.base, &path, "GET", 32, load_secs, None).await;
    record(s, "manifest GET by tag, 32 conns (req/s)", Kind::Minio, get.rps);
    record(s, "manifest GET p99 (ms)", Kind::Minio, get.p99_ms);
    std::fs::remove_file(&file).unwrap();
    minio::delete_prefix(&minio.base, "direct");
}

/// One operation's S3 requests: `calls` over `times` repetitions in `wall`.
struct Row {
    op: String,
    times: usize,
    wall: Duration,
    calls: Vec<Call>,
}

impl Row {
    fn requests(&self) -> String {
        let mut by_api = BTreeMap::<String, usize>::new();
        for c in &self.calls {
            // Failed requests apart, with their status (a 404 HeadObject, say).
            let api = if c.status >= 300 { format!("{} {}", c.api, c.status) } else { c.api.clone() };
            *by_api.entry(api).or_default() += 1;
        }
        let per = |n: usize| {
            let v = n as f64 / self.times as f64;
            if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") }
        };
        let mut parts: Vec<(usize, String)> = by_api.into_iter().map(|(a, n)| (n, a)).collect();
        parts.sort_by(|a, b| b.cmp(a));
        let detail: Vec<String> = parts.iter().map(|(n, a)| format!("{} {a}", per(*n))).collect();
        format!("**{}** ({})", per(self.calls.len()), detail.join(", "))
    }

    fn times_ms(&self) -> String {
        let s3: Duration = self.calls.iter().map(|c| c.duration).sum();
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / self.times as f64;
        format!("{:.1} / {:.1}", per(s3), per(self.wall))
    }
}

/// Each operation once (or `times` times, averaged) under MinIO's trace.
async fn operations(server: &Server, trace: &mut Trace, mono: &Blob, chunked: &Blob) -> Vec<Row> {
    let (client, base) = (Client::new(), server.base.as_str());
    let mut rows = Vec::new();
    let mut row = |op: String, times: usize, wall: Duration, trace: &mut Trace| {
        rows.push(Row { op, times, wall, calls: trace.take() });
    };
    trace.take();
    let mib = mono.len() >> 20;
    let d = push_monolithic(&client, base, "bench/large", mono).await;
    row(format!("{mib} MiB blob push, monolithic"), 1, d, trace);
    let d = push_chunked(&client, base, "bench/large", chunked).await;
    row(format!("{mib} MiB blob push, 16 MiB chunks"), 1, d, trace);
    let (_, d) = pull(&client, &format!("{base}/v2/bench/large/blobs/{}", mono.digest)).await;
    row(format!("{mib} MiB blob pull"), 1, d, trace);
    let t = Instant::now();
    small_blobs(base, "bench/small", 20, 1, 99).await;
    row("4 KiB blob push (mean of 20)".into(), 20, t.elapsed(), trace);
    let t = Instant::now();
    let path = push_image(&client, base, "bench/image").await;
    row("image push: 2 small blobs + manifest".into(), 1, t.elapsed(), trace);
    for (method, times, op) in [
        ("GET", 1, "manifest GET by tag, first"),
        ("GET", 100, "manifest GET by tag (mean of the next 100)"),
        ("HEAD", 100, "manifest HEAD by tag (mean of 100)"),
    ] {
        let t = Instant::now();
        for _ in 0..times {
            let r = client
                .request(method.parse().unwrap(), format!("{base}{path}"))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{method} manifest");
            r.bytes().await.unwrap();
        }
        row(op.into(), times, t.elapsed(), trace);
    }
    rows
}

async fn profile(args: &Args, bins: &Binaries, minio: &Server, mono: &Blob, chunked: &Blob) -> String {
    let mut trace = Trace::start(&minio.base);
    let mut by_kind = Vec::new();
    for kind in REGISTRIES {
        eprintln!("S3 requests: {}", kind.label());
        let prefix = format!("{}-profile", short(kind));
        let server = start(kind, bins, minio, &prefix).await;
        by_kind.push(operations(&server, &mut trace, mono, chunked).await);
        drop(server);
        minio::delete_prefix(&minio.base, &prefix);
    }
    let mut out = format!(
        "S3 requests per operation, by API, traced by MinIO (one client, nothing else running; large blob {} MiB). \
         Times: sum of the S3 requests' durations / the operation's, ms.\n\n\
         | operation | berth | berth S3 / total ms | distribution v3.1.1 | distribution S3 / total ms |\n|---|---|---|---|---|\n",
        args.blob_mib
    );
    for (b, d) in by_kind[0].iter().zip(&by_kind[1]) {
        out += &format!("| {} | {} | {} | {} | {} |\n", b.op, b.requests(), b.times_ms(), d.requests(), d.times_ms());
    }
    out
}
