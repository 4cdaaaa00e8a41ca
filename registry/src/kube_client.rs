//! The registry's own Kubernetes client (token reviews, the collector's
//! exchange with the operator): from a kubeconfig when one is given, otherwise
//! the pod's ServiceAccount (or `KUBECONFIG`).

use std::path::Path;

/// Builds a client; the caller makes it lazily, so the registry starts even
/// while the API server is unreachable.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(|e| e.to_string())?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
