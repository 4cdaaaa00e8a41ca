use std::collections::BTreeSet;

use berth_crds::COLLECT_ANNOTATION;
use berth_registry::config::{Config, Span};
use berth_registry::report::{COLLECT_KEY, PROTECTED_KEY};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::*;
use crate::resources::tests::registry;
use crate::resources::{CONFIG_FILE, config_map};

#[test]
fn config_renders_gc_retention_and_quota() {
    let reg = registry(
        "gc: {interval: 12h, gracePeriod: 30m, dryRun: true}\n\
         retention: {rules: [{repositories: ['ci/*'], tags: {keepMostRecent: 5}, untaggedAfter: 7d}]}\n\
         quota: {totalBytes: 1000, overrides: [{repositories: [big], bytes: 0}]}",
    );
    let config = Config::from_yaml(&config_map(&reg).data.unwrap()[CONFIG_FILE]).unwrap();
    assert_eq!(config.gc.interval, Some(Span::secs(12 * 3600)));
    assert_eq!(config.gc.grace_period, Span::secs(1800));
    assert!(config.gc.dry_run && config.gc.protected_file.is_none());
    let kubernetes = config.gc.kubernetes.unwrap();
    assert_eq!(
        (kubernetes.namespace.as_str(), kubernetes.requests.as_str(), kubernetes.report.as_str()),
        ("team", "cache-gc-requests", "cache-usage")
    );
    assert_eq!(kubernetes.kubeconfig, None, "the pod's own account");
    assert_eq!(config.retention, reg.spec.retention);
    assert_eq!(config.retention.rules[0].tags.as_ref().unwrap().keep_most_recent, Some(5));
    assert_eq!(config.quota.total_bytes, 1000);
    assert_eq!(config.quota.repository_limit("big"), None);
}

#[test]
fn gc_defaults_and_on_demand_only() {
    let gc = collector_config(&registry("{}"));
    assert_eq!((gc.interval, gc.grace_period, gc.dry_run), (Some(Span::secs(86400)), Span::secs(3600), false));
    let on_demand = registry("gc: {interval: 0s}");
    assert_eq!(collector_config(&on_demand).interval, None);
    // What the registry reads from the ConfigMap says so too (not its daily default).
    let config = Config::from_yaml(&config_map(&on_demand).data.unwrap()[CONFIG_FILE]).unwrap();
    assert_eq!(config.gc.interval, None);
}

#[test]
fn hosts_are_the_service_names_ip_node_access_and_extra_names() {
    let hosts = |spec: &str, ip: Option<&str>| registry_hosts(&registry(spec), ip).into_iter().collect::<Vec<_>>();
    assert_eq!(hosts("{}", None), ["cache.team.svc.cluster.local:5000", "cache.team.svc:5000", "cache.team:5000"]);
    let all = hosts(
        "service: {port: 443}\nnodeAccess: {enabled: true, port: 5002}\ngc: {protectedHosts: [Images.Example.com]}",
        Some("10.96.0.12"),
    );
    assert_eq!(
        all,
        [
            "10.96.0.12:443",
            "127.0.0.1:5002",
            "cache.team.svc.cluster.local:443",
            "cache.team.svc:443",
            "cache.team:443",
            "images.example.com",
            "localhost:5002",
        ]
    );
    assert!(hosts("{}", Some("fd00::12")).contains(&"[fd00::12]:5000".to_owned()));
    assert_eq!(hosts("{}", Some("None")).len(), 3, "a headless Service has no address");
}

/// With containerdMirrors, the mirrors' image hosts name the registry too;
/// without the opt-in the nodes pull those images straight from the upstream.
#[test]
fn node_mirrored_hosts_name_the_registry_under_their_prefix() {
    let spec = "nodeAccess: {enabled: true, containerdMirrors: {enabled: true}}\nmirrors: [{prefix: hub, url: 'https://registry-1.docker.io', imageHost: Docker.IO}]";
    let hosts = image_hosts(&registry(spec), None);
    assert_eq!(hosts.mirrored, [("docker.io".to_owned(), "hub".to_owned())].into());
    assert_eq!(hosts.own, registry_hosts(&registry(spec), None));
    let protected = crate::images::protected(&[pod("nginx:1.27")], &hosts);
    assert_eq!(protected.into_iter().collect::<Vec<_>>(), ["hub/library/nginx:1.27"]);
    let off = spec.replace("containerdMirrors: {enabled: true}", "containerdMirrors: {enabled: false}");
    assert!(image_hosts(&registry(&off), None).mirrored.is_empty());
}

fn pod(image: &str) -> Pod {
    let container = Container { name: "c".into(), image: Some(image.into()), ..Default::default() };
    Pod { spec: Some(PodSpec { containers: vec![container], ..Default::default() }), ..Default::default() }
}

#[test]
fn requests_list_the_images_pods_use_and_the_collect_annotation() {
    let mut reg = registry("{}");
    let pods = [pod("cache.team.svc:5000/b:2"), pod("cache.team:5000/a:1"), pod("docker.io/library/nginx:1")];
    let protected = crate::images::protected(&pods, &image_hosts(&reg, None));
    let cm = gc_requests(&reg, &protected);
    assert_eq!(cm.metadata.name.as_deref(), Some("cache-gc-requests"));
    assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    let data = cm.data.unwrap();
    assert_eq!(data[PROTECTED_KEY], "a:1\nb:2\n");
    assert!(!data.contains_key(COLLECT_KEY), "no annotation, no request");

    reg.metadata.annotations = Some([(COLLECT_ANNOTATION.to_owned(), "2024-05-01T10:00".to_owned())].into());
    let data = gc_requests(&reg, &BTreeSet::new()).data.unwrap();
    assert_eq!((data[PROTECTED_KEY].as_str(), data[COLLECT_KEY].as_str()), ("", "2024-05-01T10:00"));
}

#[test]
fn the_usage_config_map_carries_no_data() {
    let cm = usage_config_map(&registry("{}"));
    assert_eq!(cm.metadata.name.as_deref(), Some("cache-usage"));
    assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    assert!(cm.data.is_none(), "the registry's field manager owns report.json");
    let json = serde_json::to_value(&cm).unwrap();
    assert!(json.get("data").is_none(), "an applied `data` would take report.json away from the registry");
}

#[test]
fn the_role_grants_the_registry_its_two_config_maps_only() {
    let reg = registry("{}");
    let role = registry_role(&reg);
    assert_eq!(role.metadata.name.as_deref(), Some("cache-registry"));
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> =
        role.rules.unwrap().into_iter().map(|r| (r.resources.unwrap(), r.resource_names.unwrap(), r.verbs)).collect();
    let strings = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (strings(&["configmaps"]), strings(&["cache-gc-requests"]), strings(&["get"])),
            (strings(&["configmaps"]), strings(&["cache-usage"]), strings(&["get", "patch", "update"])),
        ]
    );
    let binding = registry_role_binding(&reg);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "cache-registry");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str(), subject.namespace.as_deref()),
        ("ServiceAccount", "cache-registry", Some("team"))
    );
    assert_eq!(binding.metadata.owner_references.unwrap()[0].uid, "uid-1");
}
