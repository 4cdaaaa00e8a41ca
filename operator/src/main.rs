//! `berth-operator`: runs the Registry controller while it holds the leader Lease.

use std::sync::Arc;

use berth_operator::{controller, http, metrics::Metrics, telemetry};
use clap::Parser;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

#[derive(Parser)]
#[command(name = "berth-operator", version, about = "Reconciles berth.dev Registry resources")]
struct Args {
    /// Address of /healthz and /metrics.
    #[arg(long, env = "BERTH_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Registry image for Registries that name none: the one this operator was built with.
    #[arg(long, env = "BERTH_REGISTRY_IMAGE", default_value = concat!("berth:", env!("CARGO_PKG_VERSION")))]
    registry_image: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "berth-operator")]
    lease_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the TLS provider"))?;
    let telemetry = telemetry::init()?;
    let args = Args::parse();
    let outcome = run(args).await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok();
    outcome
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());

    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz and /metrics");
    tokio::spawn(axum::serve(listener, http::router(metrics.clone())).into_future());

    // Two replicas are safe: only the holder of the Lease reconciles.
    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, _lease_task) = lease.watch().await;
    while !*leader.borrow_and_update() {
        leader.changed().await?;
    }
    tracing::info!(lease = %args.lease_name, "leading");

    let ctx = controller::Context::new(client, metrics, args.registry_image);
    tokio::select! {
        _ = controller::run(ctx) => Ok(()),
        _ = async {
            while leader.changed().await.is_ok() && *leader.borrow() {}
        } => {
            // Another replica may already be reconciling: stop at once.
            tracing::error!("lost the leader Lease");
            std::process::exit(1);
        }
    }
}
