//! The collector's side of the exchange with the operator: two ConfigMaps in
//! the registry's namespace. The operator writes `requests` (key `protected`:
//! image references pods use, one per line; key `collect`: a value that asks
//! for a collection whenever it changes); the registry writes its [`Report`]
//! into key `report.json` of `report`, under its own field manager, so the
//! operator (which applies that ConfigMap without data) never takes it back.
//!
//! The registry's ServiceAccount may `get` the one and `get`/`patch` the other,
//! by name, and nothing else (the operator's Role `<name>-registry`).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::OnceCell;

use crate::config::CollectorKubernetes;
use crate::report::{COLLECT_KEY, HEALTH_KEY, PROTECTED_KEY, REPORT_KEY, Report, StorageHealth};

/// The field manager of the report: the registry's, not the operator's.
pub const FIELD_MANAGER: &str = "berth-registry";
/// The health key's own manager, so applying one key never drops the other.
pub const HEALTH_MANAGER: &str = "berth-registry-health";

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No kubeconfig, no in-cluster account, or one that cannot be used.
    #[error("no Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
    /// The operator has not listed the protected references yet: collecting
    /// now could delete what a pod runs.
    #[error("ConfigMap {0} has no protected references yet")]
    NotPublished(String),
}

/// What the operator asks of the collector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// `repo:tag` or `repo@digest` references never to delete.
    pub protected: Vec<String>,
    /// The latest on-demand request; a collection runs when it changes.
    pub collect: Option<String>,
}

pub struct Exchange {
    namespace: String,
    requests: String,
    report: String,
    kubeconfig: Option<PathBuf>,
    client: OnceCell<kube::Client>,
}

impl Exchange {
    pub fn new(config: &CollectorKubernetes) -> Exchange {
        Exchange {
            namespace: config.namespace.clone(),
            requests: config.requests.clone(),
            report: config.report.clone(),
            kubeconfig: config.kubeconfig.clone(),
            client: OnceCell::new(),
        }
    }

    /// The API client, made on first use (and again after a failure), as
    /// [`crate::auth::kubernetes`] makes its own: the registry starts even while
    /// the API server is unreachable.
    async fn client(&self) -> Result<&kube::Client, ExchangeError> {
        self.client
            .get_or_try_init(|| async {
                crate::kube_client::connect(self.kubeconfig.as_deref()).await.map_err(ExchangeError::Client)
            })
            .await
    }

    async fn config_maps(&self) -> Result<Api<ConfigMap>, ExchangeError> {
        Ok(Api::namespaced(self.client().await?.clone(), &self.namespace))
    }

    /// The operator's requests; an error until it has listed the protected
    /// references (it does so once it has seen every Pod).
    pub async fn requests(&self) -> Result<Requests, ExchangeError> {
        let not_yet = || ExchangeError::NotPublished(format!("{}/{}", self.namespace, self.requests));
        let cm = self.config_maps().await?.get_opt(&self.requests).await?.ok_or_else(not_yet)?;
        let data = cm.data.unwrap_or_default();
        let protected = data.get(PROTECTED_KEY).ok_or_else(not_yet)?.lines().map(str::trim).filter(|l| !l.is_empty());
        let protected = protected.map(str::to_owned).collect();
        let collect = data.get(COLLECT_KEY).map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
        Ok(Requests { protected, collect })
    }

    /// Writes `report` into the report ConfigMap (server-side apply of the one
    /// key). The ConfigMap must exist: the operator creates it, and the
    /// registry's account may not.
    pub async fn publish(&self, report: &Report) -> Result<(), ExchangeError> {
        self.apply_key(FIELD_MANAGER, REPORT_KEY, serde_json::to_string(report)?).await
    }

    /// Writes what the storage probe found into the report ConfigMap's
    /// health key, for the operator's `StorageHealthy` condition.
    pub async fn publish_health(&self, health: &StorageHealth) -> Result<(), ExchangeError> {
        self.apply_key(HEALTH_MANAGER, HEALTH_KEY, serde_json::to_string(health)?).await
    }

    /// Server-side apply of one key of the report ConfigMap under `manager`.
    async fn apply_key(&self, manager: &str, key: &str, value: String) -> Result<(), ExchangeError> {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.report, "namespace": self.namespace},
            "data": {key: value},
        });
        let params = PatchParams::apply(manager).force();
        self.config_maps().await?.patch(&self.report, &params, &Patch::Apply(&doc)).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl super::schedule::Requests for Exchange {
    async fn fetch(&self) -> Result<(super::ProtectedSet, Option<String>), String> {
        let requests = self.requests().await.map_err(|e| e.to_string())?;
        Ok((super::ProtectedSet::parse(&requests.protected.join("\n")), requests.collect))
    }

    async fn publish(&self, report: &Report) -> Result<(), String> {
        Exchange::publish(self, report).await.map_err(|e| e.to_string())
    }
}
