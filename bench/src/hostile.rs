//! Hostile-client load: does a registry keep serving a well-behaved client while
//! thousands of connections misbehave (trickled upload bodies, headers that never
//! end, slow manifest PUTs)? Driven by `berth-hostile`, asserted by `tests/hostile.sh`.

pub mod attack;
pub mod wellbehaved;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::servers::Server;
use attack::{Attack, Stats};
use wellbehaved::{Op, OpKind};

const GOOD_REPO: &str = "hostile/good";
const HOSTILE_REPO: &str = "hostile/bad";

pub struct Options {
    /// Hostile connections kept up at once, split evenly among the attacks.
    pub connections: usize,
    pub attacks: Vec<Attack>,
    /// Hostile connections are opened evenly over this long, so that the client's
    /// own connects do not overflow the server's SYN backlog.
    pub ramp: Duration,
    /// Whole run, ramp included; the well-behaved client runs from the end of the ramp.
    pub duration: Duration,
    /// A well-behaved operation taking longer than this is a failure.
    pub op_timeout: Duration,
}

pub struct Report {
    pub connections: usize,
    pub attacks: Vec<(Attack, Arc<Stats>)>,
    pub open_at_end: i64,
    pub ops: Vec<Op>,
    /// The server's threads and open descriptors at the end of the load.
    pub threads: u64,
    pub fds: usize,
}

pub async fn run(server: &Server, opts: &Options) -> Report {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let blob = wellbehaved::random_blob(1 << 20, 0);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    wellbehaved::push(&wellbehaved::client(), &server.base, GOOD_REPO, blob.clone())
        .await
        .expect("pushing the blob to pull");

    let attacks: Vec<(Attack, Arc<Stats>)> = opts.attacks.iter().map(|&a| (a, Arc::default())).collect();
    let t0 = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The hostile load runs on a runtime of its own, so the well-behaved client's
    // timings never wait behind thousands of hostile tasks in one scheduler.
    let load = {
        let (attacks, n, ramp) = (attacks.clone(), opts.connections, opts.ramp);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                for i in 0..n {
                    let (attack, stats) = attacks[i % attacks.len()].clone();
                    let start = (t0 + ramp.mul_f64(i as f64 / n as f64)).into();
                    tokio::spawn(attack::slot(attack, addr, HOSTILE_REPO.to_owned(), start, stats));
                }
                let _ = stopped.await;
            });
            // Dropping the runtime drops every slot and so closes its connection.
        })
    };

    tokio::time::sleep_until((t0 + opts.ramp).into()).await;
    let end = t0 + opts.duration;
    let ops = wellbehaved::run(&server.base, GOOD_REPO, &blob, &digest, end, opts.op_timeout).await;
    let open_at_end = attacks.iter().map(|(_, s)| s.open.load(Relaxed)).sum();
    let (threads, fds) = process_load(server.pid());
    let _ = stop.send(());
    load.join().unwrap();
    Report { connections: opts.connections, attacks, open_at_end, ops, threads, fds }
}

fn process_load(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok());
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (threads.unwrap_or(0), fds)
}

/// Latency summary of some operations, in ms: (p50, p99, max); zeros if none.
fn percentiles<'a>(ops: impl Iterator<Item = &'a Op>) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = ops.map(|o| o.latency.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    // Nearest rank, so a single slow operation in a hundred shows in p99.
    let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    (rank(0.50), rank(0.99), ms[ms.len() - 1])
}

impl Report {
    pub fn failures(&self) -> usize {
        self.ops.iter().filter(|o| o.error.is_some()).count()
    }

    /// A summary line, indented details, and a `RESULT name=…` line for scripts.
    pub fn render(&self, label: &str, name: &str) -> String {
        let sum = |f: &dyn Fn(&Stats) -> u64| self.attacks.iter().map(|(_, s)| f(s)).sum::<u64>();
        let opened = sum(&|s| s.opened.load(Relaxed));
        let refused = sum(&|s| s.refused.load(Relaxed));
        let closed = sum(&|s| s.closed_total());
        let (p50, p99, max) = percentiles(self.ops.iter());
        let (ops, failures) = (self.ops.len(), self.failures());
        let mut out = format!(
            "{label}: hostile open at end ~{}/{} (opened {opened}, refused {refused}, closed by server {closed}); \
             well-behaved ops {ops}, failures {failures}; p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms\n",
            self.open_at_end, self.connections
        );
        for (attack, s) in &self.attacks {
            let how = s.closed.lock().unwrap().iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                out,
                "    hostile {:<32} open {:>5}, opened {:>5}, refused {:>5}, closed by server {:>5} {}",
                attack.label(),
                s.open.load(Relaxed),
                s.opened.load(Relaxed),
                s.refused.load(Relaxed),
                s.closed_total(),
                if how.is_empty() { String::new() } else { format!("({how})") }
            );
        }
        for kind in [OpKind::Pull, OpKind::Push] {
            let of_kind = || self.ops.iter().filter(move |o| o.kind == kind);
            let (p50, p99, max) = percentiles(of_kind());
            let failed = of_kind().filter(|o| o.error.is_some()).count();
            let _ = writeln!(
                out,
                "    well-behaved {:<29} ops {:>5}, failures {failed}, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
                kind.label(),
                of_kind().count()
            );
        }
        let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
        for e in self.ops.iter().filter_map(|o| o.error.as_deref()) {
            *errors.entry(e).or_default() += 1;
        }
        for (e, n) in errors.iter().take(5) {
            let _ = writeln!(out, "    failure x{n}: {e}");
        }
        let _ = writeln!(out, "    server at the end: {} threads, {} open descriptors", self.threads, self.fds);
        let _ = writeln!(
            out,
            "RESULT server={name} hostile_target={} hostile_open={} hostile_opened={opened} hostile_refused={refused} hostile_closed={closed} \
             ops={ops} failures={failures} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}",
            self.connections, self.open_at_end
        );
        out
    }
}
