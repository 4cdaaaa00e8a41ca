use berth_registry::config::Config;
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use kube::api::ApiResource;

use super::*;
use crate::resources::tests::registry;
use crate::resources::{CONFIG_FILE, CONFIG_HASH, config_map, deployment, service};

fn metrics_service_selects(reg: &Registry) -> Option<BTreeMap<String, String>> {
    metrics_service(reg).spec?.selector
}

fn template(reg: &Registry) -> PodTemplateSpec {
    deployment(reg, "img").spec.template
}

fn container(reg: &Registry) -> Container {
    template(reg).spec.unwrap().containers.remove(0)
}

fn annotations(reg: &Registry) -> BTreeMap<String, String> {
    template(reg).metadata.unwrap().annotations.unwrap()
}

/// As discovery would find it.
fn service_monitors() -> ApiResource {
    ApiResource::from_gvk_with_plural(&service_monitor_gvk(), "servicemonitors")
}

#[test]
fn the_registry_serves_metrics_on_a_port_of_its_own() {
    let reg = registry("{}");
    let config = Config::from_yaml(&config_map(&reg).data.unwrap()[CONFIG_FILE]).unwrap();
    assert!(config.metrics.enabled);
    assert_eq!(config.metrics.listen.as_deref(), Some("0.0.0.0:9464"));
    assert_eq!(config.metrics.path, "/metrics");
    assert_eq!(config.listen, "0.0.0.0:5000", "the API stays where it was");

    let ports = container(&reg).ports.unwrap();
    let names: Vec<(Option<&str>, i32)> = ports.iter().map(|p| (p.name.as_deref(), p.container_port)).collect();
    assert_eq!(names, [(Some("http"), 5000), (Some("metrics"), 9464)]);
    let main = service(&reg).spec.unwrap().ports.unwrap();
    assert_eq!(main.iter().map(|p| p.port).collect::<Vec<_>>(), [5000], "the metrics port is not on the main Service");
    let svc = metrics_service(&reg).spec.unwrap().ports.unwrap();
    assert_eq!(svc.len(), 1);
    let metrics = &svc[0];
    assert_eq!((metrics.name.as_deref(), metrics.port), (Some("metrics"), 9464));
    assert_eq!(metrics.target_port, Some(IntOrString::String("metrics".into())));
}

/// The metrics port answers anyone in plain HTTP: its Service stays inside
/// the cluster whatever type the Registry asks for its own, is owned like the
/// other children, and selects the same pods as the main Service.
#[test]
fn the_metrics_service_is_cluster_ip_whatever_the_registry_asks() {
    for type_ in ["ClusterIP", "NodePort", "LoadBalancer"] {
        let reg = registry(&format!("service: {{type: {type_}, port: 443}}"));
        let svc = metrics_service(&reg);
        assert_eq!(svc.metadata.name.as_deref(), Some("cache-metrics"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("team"));
        let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Registry", "cache", "uid-1"));
        assert_eq!(owner.controller, Some(true));
        let labels = svc.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "metrics");
        assert_eq!(labels["app.kubernetes.io/instance"], "cache");
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"), "{type_}");
        assert_eq!(spec.ports.as_ref().unwrap().len(), 1);
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, None);
        assert_eq!(metrics_service_selects(&reg), service(&reg).spec.unwrap().selector);
        let pods = template(&reg).metadata.unwrap().labels.unwrap();
        assert!(metrics_service_selects(&reg).unwrap().iter().all(|(k, v)| pods.get(k) == Some(v)), "{pods:?}");
    }
}

/// Readiness follows the storage probe, liveness only the process; both ask
/// the metrics port in plain HTTP, whatever TLS and access control the main
/// port has, with the timings the probes had on `/healthz`.
#[test]
fn probes_ask_the_metrics_port_in_plain_http() {
    for spec in ["{}", "tls: {secretName: cert}", "auth: {anonymous: none, htpasswd: {secretName: users}}"] {
        let c = container(&registry(spec));
        let (ready, live) = (c.readiness_probe.unwrap(), c.liveness_probe.unwrap());
        for (probe, path, delay) in [(&ready, "/readyz", 1), (&live, "/healthz", 10)] {
            let get = probe.http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{spec}");
            assert_eq!(get.port, IntOrString::String("metrics".into()), "{spec}");
            assert_eq!(get.scheme.as_deref(), Some("HTTP"), "{spec}");
            assert_eq!((probe.initial_delay_seconds, probe.period_seconds), (Some(delay), Some(10)));
        }
    }
}

#[test]
fn pods_carry_scrape_annotations_unless_turned_off() {
    let on = annotations(&registry("{}"));
    assert_eq!(on["prometheus.io/scrape"], "true");
    assert_eq!(on["prometheus.io/port"], "9464");
    assert_eq!(on["prometheus.io/path"], "/metrics");
    assert!(on.contains_key(CONFIG_HASH));

    let off = annotations(&registry("monitoring: {scrapeAnnotations: false}"));
    assert!(off.keys().all(|k| !k.starts_with("prometheus.io/")), "{off:?}");
    assert!(off.contains_key(CONFIG_HASH));
}

#[test]
fn pod_annotations_win_over_scrape_annotations_but_not_over_the_config_hash() {
    let reg = registry("podAnnotations: {prometheus.io/scrape: 'false', berth.dev/config-hash: forged, team: a}");
    let a = annotations(&reg);
    assert_eq!(a["prometheus.io/scrape"], "false");
    assert_eq!(a["prometheus.io/port"], "9464");
    assert_eq!(a["team"], "a");
    assert_ne!(a[CONFIG_HASH], "forged");
}

#[test]
fn the_service_monitor_selects_the_service_and_scrapes_its_metrics_port() {
    let reg = registry("monitoring: {serviceMonitor: {enabled: true}}");
    let sm = service_monitor(&reg, &service_monitors());
    let types = sm.types.as_ref().unwrap();
    assert_eq!((types.api_version.as_str(), types.kind.as_str()), ("monitoring.coreos.com/v1", "ServiceMonitor"));
    assert_eq!(sm.metadata.name.as_deref(), Some("cache"));
    assert_eq!(sm.metadata.namespace.as_deref(), Some("team"));
    let owner = &sm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Registry", "cache", "uid-1"));
    assert_eq!(owner.controller, Some(true));

    let svc = metrics_service(&reg);
    let selector: BTreeMap<String, String> =
        serde_json::from_value(sm.data["spec"]["selector"]["matchLabels"].clone()).unwrap();
    assert_eq!(Some(&selector), svc.metadata.labels.as_ref());
    let endpoints = sm.data["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0], serde_json::json!({"port": "metrics", "path": "/metrics"}), "no interval: Prometheus's");
    let port_names: Vec<_> = svc.spec.unwrap().ports.unwrap().into_iter().filter_map(|p| p.name).collect();
    assert_eq!(port_names, ["metrics"], "the Service has no port {:?}", endpoints[0]["port"]);
    assert_eq!(sm.metadata.labels.as_ref(), service(&reg).metadata.labels.as_ref(), "no extra labels asked for");
}

/// matchLabels selects a Service whose labels include all of them: the main
/// Service must not be one, or Prometheus would look for the metrics port there.
#[test]
fn the_service_monitor_does_not_select_the_main_service() {
    let reg = registry("service: {type: LoadBalancer}\nmonitoring: {serviceMonitor: {enabled: true}}");
    let sm = service_monitor(&reg, &service_monitors());
    let selector: BTreeMap<String, String> =
        serde_json::from_value(sm.data["spec"]["selector"]["matchLabels"].clone()).unwrap();
    let selects = |labels: &BTreeMap<String, String>| selector.iter().all(|(k, v)| labels.get(k) == Some(v));
    assert!(selects(metrics_service(&reg).metadata.labels.as_ref().unwrap()));
    assert!(!selects(service(&reg).metadata.labels.as_ref().unwrap()), "{selector:?}");
}

#[test]
fn the_service_monitor_carries_the_interval_and_labels_asked_for() {
    let reg = registry(
        "monitoring: {serviceMonitor: {enabled: true, interval: 15s, labels: {release: prom, app.kubernetes.io/name: mine}}}",
    );
    let sm = service_monitor(&reg, &service_monitors());
    assert_eq!(sm.data["spec"]["endpoints"][0]["interval"], "15s");
    let labels = sm.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["release"], "prom");
    assert_eq!(labels["app.kubernetes.io/name"], "mine", "the Registry's labels win on the ServiceMonitor");
    assert_eq!(labels["app.kubernetes.io/instance"], "cache");
    // The selector is the metrics Service's, whatever the ServiceMonitor's own labels say.
    assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "berth-registry");
    assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "metrics");
}
