//! `berth-bench`: berth-registry against the Distribution registry (v3, and
//! Debian's 2.8) and nginx, measured interleaved in one run so the ratios hold on a
//! noisy machine. Prints a Markdown table (and writes it with `--out`). With
//! `--s3`, berth and Distribution v3 keep their content in one MinIO instead.

mod mirror;
mod observe;
mod s3;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_bench::servers::{self, Binaries, Kind, Server};
use clap::Parser;
use workloads::*;

#[derive(Parser)]
struct Args {
    /// Size of the large blob, MiB (default 512); with --mirror, of the whole
    /// image (default 64).
    #[arg(long)]
    blob_mib: Option<usize>,
    /// Rounds; each server is measured once per round, in turn, and the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small blobs pushed per round.
    #[arg(long, default_value_t = 2000)]
    small_blobs: usize,
    /// Seconds of manifest load per measurement.
    #[arg(long, default_value_t = 5)]
    load_secs: u64,
    /// Size of the push whose peak RSS is reported, GiB (0 to skip).
    #[arg(long, default_value_t = 4)]
    rss_gib: usize,
    #[arg(long, env = "BERTH_REGISTRY_BIN")]
    berth: PathBuf,
    #[arg(long, env = "DISTRIBUTION_BIN")]
    distribution: PathBuf,
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    debian_registry: PathBuf,
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure only berth (for profiling it).
    #[arg(long)]
    berth_only: bool,
    /// Skip the measurements with htpasswd authentication (for builds without it).
    #[arg(long)]
    no_auth: bool,
    /// berth and Distribution v3 on one MinIO (S3), against MinIO's own PUT and
    /// GET; then the S3 requests each makes per operation. No authenticated run,
    /// no huge push.
    #[arg(long)]
    s3: bool,
    /// The MinIO server binary (with --s3).
    #[arg(long, env = "BERTH_MINIO")]
    minio: Option<PathBuf>,
    /// Only berth, with its metrics, traces and access log off and on in turn:
    /// what observing costs manifest GETs.
    #[arg(long)]
    observe: bool,
    /// Pull-through caches: a berth mirror and Distribution v3's proxy, cold
    /// and warm, in front of one Distribution v3 upstream; berth with the
    /// image pushed to it is the reference for warm pulls.
    #[arg(long)]
    mirror: bool,
    /// Concurrent clients, each pulling the whole image (with --mirror).
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

impl Args {
    fn blob_mib(&self) -> usize {
        self.blob_mib.unwrap_or(512)
    }
}

const REGISTRIES: [Kind; 3] = [Kind::Berth, Kind::Distribution, Kind::DebianRegistry];

/// metric -> server -> samples
type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

fn record(s: &mut Samples, metric: &'static str, kind: Kind, v: f64) {
    s.entry(metric).or_default().entry(kind.label()).or_default().push(v);
}

/// Flushes every dirty page before a measurement, so no server pays for the
/// writeback of data another server left unsynced (Distribution never fsyncs).
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn mbps(bytes: u64, d: std::time::Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bins = Binaries {
        berth: args.berth.clone(),
        distribution: args.distribution.clone(),
        debian_registry: args.debian_registry.clone(),
        nginx: args.nginx.clone(),
    };
    if args.observe {
        let table = observe::run(&args, &bins).await;
        println!("{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).unwrap();
        }
        return;
    }
    if args.mirror {
        let (table, failures) = mirror::run(&args, &bins).await;
        println!("{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).unwrap();
        }
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        if !failures.is_empty() {
            std::process::exit(1);
        }
        return;
    }
    let client = reqwest::Client::new();
    let mut s = Samples::new();
    eprintln!("generating {} MiB blobs", args.blob_mib());
    let mono = Blob::generate(args.blob_mib(), 1, 1);
    let chunked = Blob::generate(args.blob_mib(), 1, 2);

    if args.s3 {
        let profile = s3::run(&args, &bins, &mut s, &mono, &chunked).await;
        let table = format!("{}\n{profile}", render(&s, &args));
        println!("{table}");
        if let Some(out) = &args.out {
            std::fs::write(out, &table).unwrap();
        }
        return;
    }
    let registries: &[Kind] = if args.berth_only { &REGISTRIES[..1] } else { &REGISTRIES };
    for round in 0..args.rounds {
        for &kind in registries {
            eprintln!("round {round}: {}", kind.label());
            let server = Server::start(kind, &bins).await;
            measure(&mut s, kind, &server, &args, round, (&mono, &chunked), None).await;
            drop(server);
            if kind != Kind::DebianRegistry && !args.no_auth {
                authenticated(&mut s, kind, &bins, &mono, args.load_secs).await;
            }
        }
        if args.berth_only {
            continue;
        }
        eprintln!("round {round}: nginx");
        let nginx = Server::start(Kind::Nginx, &bins).await;
        let file = nginx.dir.path().join("www/blob");
        {
            use std::io::Write;
            use std::os::unix::fs::PermissionsExt;
            let mut f = std::fs::File::create(&file).unwrap();
            for c in &mono.chunks {
                f.write_all(c).unwrap();
            }
            f.set_permissions(std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let (n, d) = pull(&client, &format!("{}/blob", nginx.base)).await;
        assert_eq!(n, mono.len());
        record(&mut s, "large pull (MB/s)", Kind::Nginx, mbps(n, d));
    }

    if args.rss_gib > 0 {
        let big = Blob::generate(16, args.rss_gib * 64, 3);
        for &kind in &registries[..registries.len().min(2)] {
            eprintln!("{} GiB push: {}", args.rss_gib, kind.label());
            let server = Server::start(kind, &bins).await;
            settle();
            let d = push_monolithic(&client, &server.base, "bench/huge", &big).await;
            record(&mut s, "peak RSS during a large push (MiB)", kind, server.peak_rss_kib() as f64 / 1024.0);
            record(&mut s, "huge push, monolithic (MB/s)", kind, mbps(big.len(), d));
        }
    }

    let table = render(&s, &args);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).unwrap();
    }
}

/// Every figure of one server in one round: large pushes and a pull, small
/// pushes, manifest GET and HEAD load; with the `minio` it stores in, the CPU
/// time each spends per manifest GET.
async fn measure(
    s: &mut Samples,
    kind: Kind,
    server: &Server,
    args: &Args,
    round: usize,
    (mono, chunked): (&Blob, &Blob),
    minio: Option<&Server>,
) {
    let client = reqwest::Client::new();
    let repo = "bench/large";
    settle();
    let d = push_monolithic(&client, &server.base, repo, mono).await;
    record(s, "large push, monolithic (MB/s)", kind, mbps(mono.len(), d));
    settle();
    let d = push_chunked(&client, &server.base, repo, chunked).await;
    record(s, "large push, 16 MiB chunks (MB/s)", kind, mbps(chunked.len(), d));
    let (n, d) = pull(&client, &format!("{}/v2/{repo}/blobs/{}", server.base, mono.digest)).await;
    assert_eq!(n, mono.len());
    record(s, "large pull (MB/s)", kind, mbps(n, d));
    settle();
    let rate = small_blobs(&server.base, "bench/small", args.small_blobs, 8, round as u64).await;
    record(s, "4 KiB blob push, 8 clients (blobs/s)", kind, rate);
    let path = push_image(&client, &server.base, "bench/image").await;
    let cpu = minio.map(|m| (server.cpu_time(), m.cpu_time()));
    let get = load(&server.base, &path, "GET", 32, args.load_secs, None).await;
    record(s, "manifest GET by tag, 32 conns (req/s)", kind, get.rps);
    record(s, "manifest GET p99 (ms)", kind, get.p99_ms);
    if let (Some(minio), Some((registry_cpu, minio_cpu))) = (minio, cpu) {
        let per_get = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / (get.rps * args.load_secs as f64);
        record(s, "manifest GET, CPU per request: registry (ms)", kind, per_get(server.cpu_time() - registry_cpu));
        record(s, "manifest GET, CPU per request: MinIO (ms)", kind, per_get(minio.cpu_time() - minio_cpu));
    }
    let head = load(&server.base, &path, "HEAD", 32, args.load_secs, None).await;
    record(s, "manifest HEAD by tag, 32 conns (req/s)", kind, head.rps);
    record(s, "manifest HEAD p99 (ms)", kind, head.p99_ms);
}

/// The same pulls with htpasswd authentication on: a Basic header on every
/// request, as clients send it.
async fn authenticated(s: &mut Samples, kind: Kind, bins: &Binaries, blob: &Blob, load_secs: u64) {
    let server = Server::start_authenticated(kind, bins).await;
    let auth = servers::authorization();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, auth.parse().unwrap());
    let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
    settle();
    push_monolithic(&client, &server.base, "bench/large", blob).await;
    settle();
    let (n, d) = pull(&client, &format!("{}/v2/bench/large/blobs/{}", server.base, blob.digest)).await;
    assert_eq!(n, blob.len());
    record(s, "large pull, htpasswd (MB/s)", kind, mbps(n, d));
    let path = push_image(&client, &server.base, "bench/image").await;
    let get = load(&server.base, &path, "GET", 32, load_secs, Some(&auth)).await;
    record(s, "manifest GET by tag, htpasswd, 32 conns (req/s)", kind, get.rps);
}

fn render(s: &Samples, args: &Args) -> String {
    let (columns, setting) = if args.s3 {
        (
            &[Kind::Berth, Kind::Distribution, Kind::Minio][..],
            "both registries on one MinIO (single drive, loopback); MinIO direct: curl's PUT and GET of the large blob, \
             anonymous GETs of a 512-byte object in the manifest rows"
                .into(),
        )
    } else {
        (
            &[Kind::Berth, Kind::Distribution, Kind::DebianRegistry, Kind::Nginx][..],
            format!("peak RSS for a {} GiB push", args.rss_gib),
        )
    };
    let mut out = format!(
        "Medians of {} interleaved rounds; large blob {} MiB; {setting}.\n\n| metric | {} | berth / distribution v3 |\n|---|{}---|\n",
        args.rounds,
        args.blob_mib(),
        columns.iter().map(|k| k.label()).collect::<Vec<_>>().join(" | "),
        "---|".repeat(columns.len())
    );
    for (metric, by_server) in s {
        let cell = |k: Kind| by_server.get(k.label()).map(|v| median(v));
        let fmt = |v: Option<f64>| {
            v.map(|v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }).unwrap_or_else(|| "–".into())
        };
        let ratio = match (cell(Kind::Berth), cell(Kind::Distribution)) {
            (Some(b), Some(d)) if d > 0.0 => format!("{:.2}x", b / d),
            _ => "–".into(),
        };
        let cells: Vec<String> = columns.iter().map(|k| fmt(cell(*k))).collect();
        out.push_str(&format!("| {metric} | {} | {ratio} |\n", cells.join(" | ")));
    }
    let get = |metric: &str, k: Kind| s.get(metric).and_then(|m| m.get(k.label())).map(|v| median(v));
    let berth = |metric: &str| get(metric, Kind::Berth);
    out.push('\n');
    for (metric, what) in [
        ("large pull (MB/s)", "pull"),
        ("large push, monolithic (MB/s)", "push"),
        ("manifest GET by tag, 32 conns (req/s)", "GET"),
    ] {
        for ceiling in [Kind::Nginx, Kind::Minio] {
            if let (Some(b), Some(c)) = (berth(metric), get(metric, ceiling)) {
                out.push_str(&format!("berth {what} / {} {what}: {:.2}\n", ceiling.label(), b / c));
            }
        }
    }
    for (with, without) in [
        ("manifest GET by tag, htpasswd, 32 conns (req/s)", "manifest GET by tag, 32 conns (req/s)"),
        ("large pull, htpasswd (MB/s)", "large pull (MB/s)"),
    ] {
        if let (Some(a), Some(b)) = (berth(with), berth(without)) {
            out.push_str(&format!("berth {with} / anonymous: {:.2}\n", a / b));
        }
    }
    out
}
