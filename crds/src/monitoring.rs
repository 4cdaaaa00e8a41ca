//! `spec.monitoring`: how Prometheus finds the registry's metrics. The registry
//! always serves them (with `/healthz` and `/readyz`) on a plain-HTTP port of its
//! own, `metrics` (9464), whatever TLS and access control its main port has,
//! behind the ClusterIP Service `<name>-metrics` (never on the Registry's own
//! Service, whatever its type); these fields only decide how scrapers are told
//! about it.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Condition type: whether the ServiceMonitor asked for in
/// `spec.monitoring.serviceMonitor` is in place. Absent while it is not asked for.
pub const SERVICE_MONITOR: &str = "ServiceMonitor";
/// Condition type: what the registry's storage probe (behind `/readyz`) last
/// reported. Absent until the registry reports.
pub const STORAGE_HEALTHY: &str = "StorageHealthy";

/// A Prometheus duration, with the pattern of prometheus-operator's CRD (`30s`,
/// `1m30s`): an interval it would refuse is refused here, where the user sees
/// the message, rather than when the operator applies the ServiceMonitor.
pub const INTERVAL_RULE: &str = "size(self) > 0 && self.matches('^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$')";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Annotate the registry pods with `prometheus.io/scrape`, `prometheus.io/port`
    /// and `prometheus.io/path`, which annotation-based scrape configurations
    /// follow. Values in `podAnnotations` win. With a ServiceMonitor as well, a
    /// Prometheus that also follows annotations scrapes the pods twice: turn
    /// one off.
    #[serde(default = "yes")]
    pub scrape_annotations: bool,
    /// A prometheus-operator ServiceMonitor for the registry's metrics Service
    /// `<name>-metrics`.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec { scrape_annotations: true, service_monitor: ServiceMonitorSpec::default() }
    }
}

/// A ServiceMonitor (`monitoring.coreos.com/v1`) named like the Registry and
/// owned by it, selecting the Registry's metrics Service `<name>-metrics`
/// (ClusterIP, labelled `app.kubernetes.io/component: metrics`) and scraping
/// its `metrics` port. It needs prometheus-operator's CRDs: without them the condition
/// `ServiceMonitor` says so, and the ServiceMonitor is created at the first
/// reconcile after they are installed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default)]
    pub enabled: bool,
    /// How often Prometheus scrapes, e.g. `30s`; its own default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(INTERVAL_RULE).message("monitoring.serviceMonitor.interval must be a Prometheus duration such as 30s or 1m30s"))]
    pub interval: Option<String>,
    /// Labels of the ServiceMonitor itself, so that a Prometheus's
    /// `serviceMonitorSelector` picks it (e.g. `release: prometheus`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
