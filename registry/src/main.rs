//! `berth-registry`: runs the registry from a YAML config file, flags and
//! environment variables (flags win over the file).

use std::path::PathBuf;

use berth_registry::config::{Config, LogFormat, TlsConfig};
use berth_registry::telemetry::{self, Telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-registry", version, about = "An OCI distribution-spec v1.1 registry")]
struct Args {
    /// YAML configuration file (see `--print-config` for every field).
    #[arg(long, short, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:5000.
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<String>,
    /// Storage directory.
    #[arg(long, env = "BERTH_STORAGE_ROOT")]
    root: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (needs --tls-key); re-read
    /// when it changes.
    #[arg(long, env = "BERTH_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BERTH_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "BERTH_LOG_FORMAT")]
    log_format: Option<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the configuration's JSON schema and exit.
    #[arg(long)]
    print_schema: bool,
    #[command(subcommand)]
    command: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Forward TCP connections to a registry (node access: run on every node with
    /// host networking so runtimes can pull from localhost).
    Forward {
        /// Address to listen on, e.g. 127.0.0.1:5001.
        #[arg(long)]
        listen: String,
        /// The registry to forward to, e.g. registry.default.svc:5000.
        #[arg(long)]
        upstream: String,
        /// Close a connection that moves no byte either way for this many seconds.
        #[arg(long, default_value_t = 120)]
        idle_timeout_secs: u64,
    },
    /// Point the node's containerd at the registry's mirrors through the node
    /// forwarder: writes `<dir>/<imageHost>/hosts.toml` per mirror, removes
    /// them on SIGTERM. Never touches a file another Registry or a person wrote.
    NodeMirrors {
        /// containerd's `config_path` (the node's certs.d), as mounted.
        #[arg(long)]
        dir: PathBuf,
        /// The node forwarder's port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// `<namespace>/<name>` of the Registry, written into each file.
        #[arg(long)]
        owner: berth_registry::node_mirrors::Owner,
        /// A mirror as `<imageHost>=<prefix>=<url>`; repeat for each.
        #[arg(long = "mirror", value_name = "HOST=PREFIX=URL", required = true)]
        mirrors: Vec<berth_registry::node_mirrors::NodeMirror>,
    },
    /// Run one garbage collection against the configured storage and print its
    /// report as JSON. Safe while registry processes serve the same storage;
    /// exits with 3 when another collection is running.
    Collect {
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn load(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_yaml_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(root) = &args.root {
        config.storage.root = root.clone();
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => config.tls = Some(TlsConfig { cert_file: cert.clone(), key_file: key.clone() }),
        (None, None) => {}
        _ => return Err("--tls-cert and --tls-key (BERTH_TLS_CERT, BERTH_TLS_KEY) go together".into()),
    }
    if let Some(format) = &args.log_format {
        config.log.format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(format!("unknown log format {other:?}: use text or json")),
        };
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Logs, and OTLP traces when the `OTEL_*` environment asks for them.
fn init_telemetry(config: &Config) -> Result<Telemetry, std::process::ExitCode> {
    telemetry::init("berth-registry", &config.log.level, config.log.format).map_err(|e| {
        eprintln!("berth-registry: {e}");
        std::process::ExitCode::from(2)
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Mode::Forward { listen, upstream, idle_timeout_secs }) = &args.command {
        let telemetry = match init_telemetry(&Config::default()) {
            Ok(t) => t,
            Err(code) => return code,
        };
        let code = forward(listen, upstream, *idle_timeout_secs).await;
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok();
        return code;
    }
    if let Some(Mode::NodeMirrors { dir, port, owner, mirrors }) = &args.command {
        let telemetry = match init_telemetry(&Config::default()) {
            Ok(t) => t,
            Err(code) => return code,
        };
        let code = match berth_registry::node_mirrors::run(dir, owner, *port, mirrors, shutdown_signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth-registry: node-mirrors in {}: {e}", dir.display());
                std::process::ExitCode::from(1)
            }
        };
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok();
        return code;
    }
    if args.print_schema {
        let schema = schemars::schema_for!(Config);
        println!("{}", serde_json::to_string_pretty(&schema).expect("schema serialises"));
        return std::process::ExitCode::SUCCESS;
    }
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-registry: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    let telemetry = match init_telemetry(&config) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let code = run(args, config).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok();
    code
}

/// Forwards connections to `upstream` until a signal (node access).
async fn forward(listen: &str, upstream: &str, idle_timeout_secs: u64) -> std::process::ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-registry: listening on {listen}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(%listen, %upstream, "forwarding");
    let limits = berth_registry::forward::Limits {
        idle_timeout: std::time::Duration::from_secs(idle_timeout_secs),
        ..Default::default()
    };
    match berth_registry::forward::run(listener, upstream.to_owned(), limits, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-registry: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Collects once, or serves until a signal.
async fn run(args: Args, config: Config) -> std::process::ExitCode {
    if let Some(Mode::Collect { dry_run }) = args.command {
        return match berth_registry::gc::collect_once(&config, dry_run).await {
            Ok(Some(report)) => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("berth-registry: another collection is running");
                std::process::ExitCode::from(3)
            }
            Err(e) => {
                eprintln!("berth-registry: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
    let listener = match tokio::net::TcpListener::bind(&config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-registry: listening on {}: {e}", config.listen);
            return std::process::ExitCode::from(1);
        }
    };
    for warning in berth_registry::server::startup_warnings(&config) {
        tracing::warn!("{warning}");
    }
    match berth_registry::server::serve(listener, config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-registry: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
