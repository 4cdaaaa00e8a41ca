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
            measure(s, kind, &server, args, round, (mono, chunked), Some(&minio)).await;
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
    let cpu = minio.cpu_time();
    let get = load(&minio.base, &path, "GET", 32, load_secs, None).await;
    record(s, "manifest GET by tag, 32 conns (req/s)", Kind::Minio, get.rps);
    record(s, "manifest GET p99 (ms)", Kind::Minio, get.p99_ms);
    let per_get = (minio.cpu_time() - cpu).as_secs_f64() * 1000.0 / (get.rps * load_secs as f64);
    record(s, "manifest GET, CPU per request: MinIO (ms)", Kind::Minio, per_get);
    std::fs::remove_file(&file).unwrap();
    minio::delete_prefix(&minio.base, "direct");
}

/// One operation's S3 requests: `calls` over `times` repetitions in `wall`,
/// and the CPU time the registry and MinIO spent meanwhile.
struct Row {
    op: String,
    times: usize,
    wall: Duration,
    calls: Vec<Call>,
    cpu: (Duration, Duration),
}

/// An operation under way: when it started, and the CPU times then.
struct Op<'a> {
    server: &'a Server,
    minio: &'a Server,
    wall: Instant,
    cpu: (Duration, Duration),
}

impl<'a> Op<'a> {
    fn begin(server: &'a Server, minio: &'a Server) -> Self {
        Op { server, minio, wall: Instant::now(), cpu: (server.cpu_time(), minio.cpu_time()) }
    }

    /// The CPU times first: the trace's marker requests cost MinIO some.
    fn end(self, op: String, times: usize, trace: &mut Trace) -> Row {
        let wall = self.wall.elapsed();
        let cpu = (self.server.cpu_time() - self.cpu.0, self.minio.cpu_time() - self.cpu.1);
        Row { op, times, wall, calls: trace.take(), cpu }
    }
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
            match v {
                _ if v.fract() == 0.0 => format!("{v:.0}"),
                _ if v < 0.1 => format!("{v:.3}"),
                _ => format!("{v:.2}"),
            }
        };
        let mut parts: Vec<(usize, String)> = by_api.into_iter().map(|(a, n)| (n, a)).collect();
        parts.sort_by(|a, b| b.cmp(a));
        let detail: Vec<String> = parts.iter().map(|(n, a)| format!("{} {a}", per(*n))).collect();
        format!("**{}** ({})", per(self.calls.len()), detail.join(", "))
    }

    /// Milliseconds per operation: in S3 requests / in all; CPU of the registry / of MinIO.
    fn times_ms(&self) -> String {
        let s3: Duration = self.calls.iter().map(|c| c.duration).sum();
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / self.times as f64;
        format!("{:.1} / {:.1} | {:.1} / {:.1}", per(s3), per(self.wall), per(self.cpu.0), per(self.cpu.1))
    }
}

/// Each operation once (or `times` times, averaged) under MinIO's trace.
async fn operations(server: &Server, minio: &Server, trace: &mut Trace, mono: &Blob, chunked: &Blob) -> Vec<Row> {
    let (client, base) = (Client::new(), server.base.as_str());
    let mut rows = Vec::new();
    trace.take();
    let mib = mono.len() >> 20;
    let op = Op::begin(server, minio);
    push_monolithic(&client, base, "bench/large", mono).await;
    rows.push(op.end(format!("{mib} MiB blob push, monolithic"), 1, trace));
    let op = Op::begin(server, minio);
    push_chunked(&client, base, "bench/large", chunked).await;
    rows.push(op.end(format!("{mib} MiB blob push, 16 MiB chunks"), 1, trace));
    let op = Op::begin(server, minio);
    pull(&client, &format!("{base}/v2/bench/large/blobs/{}", mono.digest)).await;
    rows.push(op.end(format!("{mib} MiB blob pull"), 1, trace));
    let op = Op::begin(server, minio);
    small_blobs(base, "bench/small", 50, 1, 99).await;
    rows.push(op.end("4 KiB blob push (mean of 50)".into(), 50, trace));
    let op = Op::begin(server, minio);
    let path = push_image(&client, base, "bench/image").await;
    rows.push(op.end("image push: 2 small blobs + manifest".into(), 1, trace));
    for (method, times, name) in [
        ("GET", 1, "manifest GET by tag, first"),
        ("GET", 500, "manifest GET by tag (mean of the next 500)"),
        ("HEAD", 500, "manifest HEAD by tag (mean of 500)"),
    ] {
        let op = Op::begin(server, minio);
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
        rows.push(op.end(name.into(), times, trace));
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
        by_kind.push(operations(&server, minio, &mut trace, mono, chunked).await);
        drop(server);
        minio::delete_prefix(&minio.base, &prefix);
    }
    let mut out = format!(
        "S3 requests per operation, by API, traced by MinIO (one client, nothing else running; large blob {} MiB). \
         MinIO's CPU includes its tracing. \
         Times per operation, ms: in S3 requests (their durations summed) / in all; CPU of the registry / of MinIO.\n\n\
         | operation | berth | S3 / total | CPU berth / MinIO | distribution v3.1.1 | S3 / total | CPU distribution / MinIO |\n\
         |---|---|---|---|---|---|---|\n",
        args.blob_mib()
    );
    for (b, d) in by_kind[0].iter().zip(&by_kind[1]) {
        out += &format!("| {} | {} | {} | {} | {} |\n", b.op, b.requests(), b.times_ms(), d.requests(), d.times_ms());
    }
    out
}
