//! `berth-bench --observe`: what watching berth costs. One berth, started in
//! turn with its metrics off and on, OTLP traces going to a collector
//! stand-in on loopback (which reads and drops them), and the per-request
//! access log on; manifest GETs by tag under load, interleaved over rounds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_bench::servers::{Binaries, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::workloads::{load, push_image};
use crate::{Args, median};

/// One way of running berth: its name, configuration and environment.
struct Variant {
    name: &'static str,
    yaml: &'static str,
    /// Traces go to the collector stand-in, sampled at this ratio
    /// (`parentbased_traceidratio`).
    traces: Option<&'static str>,
    log: &'static str,
}

const OFF: &str = "metrics: {enabled: false}\n";

const VARIANTS: [Variant; 6] = [
    Variant { name: "all off", yaml: OFF, traces: None, log: "error" },
    Variant { name: "metrics", yaml: "", traces: None, log: "error" },
    Variant { name: "metrics, traces sampled 1%", yaml: "", traces: Some("0.01"), log: "error" },
    Variant { name: "metrics, traces sampled 10%", yaml: "", traces: Some("0.1"), log: "error" },
    Variant { name: "metrics, every request traced", yaml: "", traces: Some("1"), log: "error" },
    Variant { name: "metrics, traces 1%, access log", yaml: "", traces: Some("0.01"), log: "info" },
];

/// Runs the rounds; returns the table as Markdown.
pub async fn run(args: &Args, bins: &Binaries) -> String {
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.addr);
    let mut rps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p99: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..args.rounds {
        for v in &VARIANTS {
            eprintln!("round {round}: {}", v.name);
            let mut env = vec![("RUST_LOG", v.log)];
            if let Some(ratio) = v.traces {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
                env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"));
                env.push(("OTEL_TRACES_SAMPLER_ARG", ratio));
            }
            let server = Server::start_berth(bins, v.yaml, &env).await;
            let client = reqwest::Client::new();
            let path = push_image(&client, &server.base, "bench/image").await;
            let got = load(&server.base, &path, "GET", 32, args.load_secs, None).await;
            rps.entry(v.name).or_default().push(got.rps);
            p99.entry(v.name).or_default().push(got.p99_ms);
        }
    }
    let off = median(&rps[VARIANTS[0].name]);
    let mut out = format!(
        "Medians of {} interleaved rounds of {} s of manifest GETs by tag over 32 connections; \
         the collector stand-in received {} OTLP requests ({} MB) in all.\n\n\
         | berth | req/s | vs off | p99 (ms) |\n|---|---|---|---|\n",
        args.rounds,
        args.load_secs,
        collector.requests.load(Ordering::Relaxed),
        collector.bytes.load(Ordering::Relaxed) / 1_000_000,
    );
    for v in &VARIANTS {
        let r = median(&rps[v.name]);
        out += &format!("| {} | {r:.0} | {:.3}x | {:.2} |\n", v.name, r / off, median(&p99[v.name]));
    }
    out
}

/// An OTLP/HTTP receiver that reads each request whole and answers 200.
struct Collector {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counts = (requests.clone(), bytes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(receive(stream, counts.clone()));
            }
        });
        Collector { addr, requests, bytes }
    }
}

/// Serves one keep-alive connection of OTLP posts.
async fn receive(mut stream: tokio::net::TcpStream, (requests, bytes): (Arc<AtomicU64>, Arc<AtomicU64>)) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}
