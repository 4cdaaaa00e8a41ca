//! `berth-hostile`: runs the hostile-client load (see `berth_bench::hostile`)
//! against each registry in turn, each started fresh, and prints one result per
//! registry. Asserting on the figures is left to the caller (`tests/hostile.sh`).

use std::path::PathBuf;
use std::time::Duration;

use berth_bench::hostile::attack::Attack;
use berth_bench::hostile::{self, Options};
use berth_bench::servers::{Binaries, Kind, Server};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
struct Args {
    /// Hostile connections kept open at once, split evenly among the attacks.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Which misbehaviours the hostile connections use (all by default; one alone
    /// tells which of them a registry does not survive).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "patch,monolithic,headers,manifest")]
    attacks: Vec<Attack>,
    /// Length of each run in seconds, ramp included.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Seconds over which the hostile connections are opened.
    #[arg(long, default_value_t = 5)]
    ramp_secs: u64,
    /// A well-behaved operation taking longer than this many seconds is a failure.
    #[arg(long, default_value_t = 10)]
    op_timeout_secs: u64,
    /// Registries to run against, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "berth,distribution")]
    servers: Vec<Registry>,
    #[arg(long, env = "BERTH_REGISTRY_BIN")]
    berth: PathBuf,
    #[arg(long, env = "DISTRIBUTION_BIN")]
    distribution: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Registry {
    Berth,
    Distribution,
}

/// Thousands of sockets need more than the usual soft limit of 1024 descriptors.
/// The servers are started from here and inherit the raised limit, so each gets
/// the same one whatever it would do itself (Go raises its own; berth does not).
fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            eprintln!("descriptor limit: {}", lim.rlim_cur);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(args.secs > args.ramp_secs, "--secs must be longer than --ramp-secs");
    raise_nofile_limit();
    let bins = Binaries {
        berth: args.berth.clone(),
        distribution: args.distribution.clone(),
        debian_registry: PathBuf::new(),
        nginx: PathBuf::new(),
    };
    let opts = Options {
        connections: args.connections,
        attacks: args.attacks.clone(),
        ramp: Duration::from_secs(args.ramp_secs),
        duration: Duration::from_secs(args.secs),
        op_timeout: Duration::from_secs(args.op_timeout_secs),
    };
    for registry in &args.servers {
        let (kind, name) = match registry {
            Registry::Berth => (Kind::Berth, "berth"),
            Registry::Distribution => (Kind::Distribution, "distribution"),
        };
        eprintln!("{}: {} hostile connections for {} s", kind.label(), opts.connections, args.secs);
        let server = Server::start(kind, &bins).await;
        let report = hostile::run(&server, &opts).await;
        print!("{}", report.render(kind.label(), name));
    }
}
