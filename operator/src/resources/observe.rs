//! Observability: the registry's `metrics` section, its plain-HTTP port
//! `metrics` (metrics, `/healthz`, `/readyz`), the probes on it, the ClusterIP
//! Service `<name>-metrics` in front of it, the scrape annotations and the
//! prometheus-operator ServiceMonitor. Pure, like the rest of
//! [`crate::resources`].

use std::collections::BTreeMap;

use berth_crds::Registry;
use berth_registry::config::MetricsConfig;
use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, Probe, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{labels, meta, owner};

/// Where the registry serves its metrics, `/healthz` and `/readyz`, in plain
/// HTTP: probes and scrapers need neither its certificate nor credentials,
/// whatever `tls` and `auth` its main port has. 9464 is the port
/// OpenTelemetry's Prometheus exporter uses.
pub const METRICS_PORT: i32 = 9464;
/// Name of the container port and the Service port.
pub const METRICS_PORT_NAME: &str = "metrics";
pub const METRICS_PATH: &str = "/metrics";
/// `app.kubernetes.io/component` of the metrics Service: what tells it apart
/// from the main Service, which carries the Registry's labels only.
pub const METRICS_COMPONENT: &str = "metrics";

/// The registry's `metrics` section: always on, on its own port.
pub fn metrics_config() -> MetricsConfig {
    MetricsConfig { enabled: true, listen: Some(format!("0.0.0.0:{METRICS_PORT}")), path: METRICS_PATH.into() }
}

pub fn metrics_container_port() -> ContainerPort {
    ContainerPort { name: Some(METRICS_PORT_NAME.into()), container_port: METRICS_PORT, ..Default::default() }
}

fn metrics_service_port() -> ServicePort {
    ServicePort {
        name: Some(METRICS_PORT_NAME.into()),
        port: METRICS_PORT,
        target_port: Some(IntOrString::String(METRICS_PORT_NAME.into())),
        app_protocol: Some("http".into()),
        ..Default::default()
    }
}

pub fn metrics_service_name(reg: &Registry) -> String {
    format!("{}-{METRICS_COMPONENT}", reg.name_any())
}

/// The metrics Service's labels: the Registry's, and the component.
pub fn metrics_service_labels(reg: &Registry) -> BTreeMap<String, String> {
    let mut labels = labels(reg);
    labels.insert("app.kubernetes.io/component".into(), METRICS_COMPONENT.into());
    labels
}

/// The Service in front of the metrics port, apart from the main Service and
/// always ClusterIP: the port answers anyone in plain HTTP, so a NodePort or
/// LoadBalancer Registry must not take it out of the cluster with its API.
/// Selects the registry pods as the main Service does.
pub fn metrics_service(reg: &Registry) -> Service {
    let mut metadata = meta(reg, metrics_service_name(reg), true);
    metadata.labels = Some(metrics_service_labels(reg));
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels(reg)),
            ports: Some(vec![metrics_service_port()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Default::default()
    }
}

/// Ready while the registry's storage probe passes (`/readyz` answers 503
/// otherwise): a pod that cannot write its storage gets no traffic.
pub fn readiness_probe() -> Probe {
    probe("/readyz", 1)
}

/// Alive while the process answers; cheap, and blind to the storage, so a
/// storage outage makes pods unready instead of restarting them all.
pub fn liveness_probe() -> Probe {
    probe("/healthz", 10)
}

/// The pod annotations that annotation-based Prometheus scrape configurations
/// follow, when `spec.monitoring.scrapeAnnotations` is on. The caller lets
/// `spec.podAnnotations` win.
pub fn scrape_annotations(reg: &Registry) -> BTreeMap<String, String> {
    if !reg.spec.monitoring.scrape_annotations {
        return BTreeMap::new();
    }
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), METRICS_PATH.to_owned()),
    ])
}

/// The ServiceMonitor kind, which the API server serves only once
/// prometheus-operator's CRDs are installed.
pub fn service_monitor_gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor")
}

/// Named like the Registry.
pub fn service_monitor_name(reg: &Registry) -> String {
    reg.name_any()
}

/// A ServiceMonitor, of the kind discovered as `resource`, owned by the
/// Registry, selecting the metrics Service by its labels (the component among
/// them, so never the main Service) and scraping the `metrics` port. The Registry's `labels` are added to its own labels (theirs
/// win: they only serve a Prometheus's `serviceMonitorSelector`).
pub fn service_monitor(reg: &Registry, resource: &ApiResource) -> DynamicObject {
    let spec = &reg.spec.monitoring.service_monitor;
    let mut own_labels = labels(reg);
    own_labels.extend(spec.labels.clone());
    let mut endpoint = serde_json::json!({"port": METRICS_PORT_NAME, "path": METRICS_PATH});
    if let Some(interval) = &spec.interval {
        endpoint["interval"] = interval.clone().into();
    }
    let mut monitor = DynamicObject::new(&service_monitor_name(reg), resource).data(serde_json::json!({
        "spec": {
            "selector": {"matchLabels": metrics_service_labels(reg)},
            "endpoints": [endpoint],
        }
    }));
    monitor.metadata.namespace = reg.namespace();
    monitor.metadata.labels = Some(own_labels);
    monitor.metadata.owner_references = Some(vec![owner(reg)]);
    monitor
}

#[cfg(test)]
mod tests;
