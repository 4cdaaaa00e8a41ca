//! The storage lifecycle's side of the operator: the registry's `gc`,
//! `retention` and `quota` sections, the two ConfigMaps through which operator
//! and registry talk (requests one way, the usage report the other), and the
//! Role that lets the registry read the one and write the other, nothing more.
//! Pure, like the rest of [`crate::resources`].

use std::collections::{BTreeMap, BTreeSet};

use berth_crds::{COLLECT_ANNOTATION, Registry};
use berth_registry::config::{CollectorConfig, CollectorKubernetes};
use berth_registry::report::{COLLECT_KEY, PROTECTED_KEY};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::{meta, service_account_name};

/// `<name>-gc-requests`: written by the operator, read by the registry.
pub fn gc_requests_name(reg: &Registry) -> String {
    format!("{}-gc-requests", reg.name_any())
}

/// `<name>-usage`: its `report.json` is written by the registry, read by the operator.
pub fn usage_name(reg: &Registry) -> String {
    format!("{}-usage", reg.name_any())
}

/// The Role and RoleBinding of the registry's ServiceAccount, named like it.
pub fn registry_role_name(reg: &Registry) -> String {
    service_account_name(reg)
}

/// The registry's `gc` section: the Registry's schedule, with the exchange
/// through the two ConfigMaps in its namespace.
pub fn collector_config(reg: &Registry) -> CollectorConfig {
    let gc = &reg.spec.gc;
    CollectorConfig {
        // `0s` means on demand only, which the registry spells as no interval.
        interval: (!gc.interval.0.is_zero()).then_some(gc.interval),
        grace_period: gc.grace_period,
        dry_run: gc.dry_run,
        protected_file: None,
        kubernetes: Some(CollectorKubernetes {
            namespace: reg.namespace().unwrap_or_default(),
            requests: gc_requests_name(reg),
            report: usage_name(reg),
            kubeconfig: None,
        }),
    }
}

/// Every `host[:port]` (lower-case) by which a pod may name this registry: the
/// Service's DNS names and cluster IP, the node-access loopback addresses while
/// node access is on, and the Registry's extra `gc.protectedHosts`.
pub fn registry_hosts(reg: &Registry, cluster_ip: Option<&str>) -> BTreeSet<String> {
    let (name, namespace, port) = (reg.name_any(), reg.namespace().unwrap_or_default(), reg.spec.service.port);
    let mut hosts: BTreeSet<String> = ["svc", "svc.cluster.local"]
        .iter()
        .map(|suffix| format!("{name}.{namespace}.{suffix}:{port}"))
        .chain([format!("{name}.{namespace}:{port}")])
        .collect();
    if let Some(ip) = cluster_ip.filter(|ip| !ip.is_empty() && *ip != "None") {
        hosts.insert(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") });
    }
    if reg.spec.node_access.enabled {
        let node_port = reg.spec.node_access.port;
        hosts.extend([format!("localhost:{node_port}"), format!("127.0.0.1:{node_port}")]);
    }
    hosts.extend(reg.spec.gc.protected_hosts.iter().map(|h| h.to_ascii_lowercase()));
    hosts
}

/// How pods name this registry's repositories: [`registry_hosts`], and with
/// `containerdMirrors` the mirrors' image hosts, whose images the nodes pull
/// through the registry and so must be kept like its own.
pub fn image_hosts(reg: &Registry, cluster_ip: Option<&str>) -> crate::images::Hosts {
    let mirrored = if super::wants_node_mirrors(reg) {
        super::mirror_configs(reg).iter().map(|m| (m.image_host().to_ascii_lowercase(), m.prefix.clone())).collect()
    } else {
        Default::default()
    };
    crate::images::Hosts { own: registry_hosts(reg, cluster_ip), mirrored }
}

/// The requests to the registry: the images pods use (one per line) and the
/// value of the `berth.dev/collect` annotation, when there is one.
pub fn gc_requests(reg: &Registry, protected: &BTreeSet<String>) -> ConfigMap {
    let lines: String = protected.iter().map(|p| format!("{p}\n")).collect();
    let mut data = BTreeMap::from([(PROTECTED_KEY.to_owned(), lines)]);
    if let Some(collect) = reg.annotations().get(COLLECT_ANNOTATION) {
        data.insert(COLLECT_KEY.to_owned(), collect.clone());
    }
    ConfigMap { metadata: meta(reg, gc_requests_name(reg), true), data: Some(data), ..Default::default() }
}

/// The report ConfigMap, without data: applied so, the operator's field manager
/// owns only its metadata, and the registry's manager owns `report.json`.
pub fn usage_config_map(reg: &Registry) -> ConfigMap {
    ConfigMap { metadata: meta(reg, usage_name(reg), true), ..Default::default() }
}

fn config_map_rule(name: String, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        resource_names: Some(vec![name]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// Read the requests, write the report: by name, so the registry's account
/// reads no other ConfigMap of the namespace.
pub fn registry_role(reg: &Registry) -> Role {
    Role {
        metadata: meta(reg, registry_role_name(reg), true),
        rules: Some(vec![
            config_map_rule(gc_requests_name(reg), &["get"]),
            config_map_rule(usage_name(reg), &["get", "patch", "update"]),
        ]),
    }
}

pub fn registry_role_binding(reg: &Registry) -> RoleBinding {
    RoleBinding {
        metadata: meta(reg, registry_role_name(reg), true),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: registry_role_name(reg),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account_name(reg),
            namespace: reg.namespace(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests;
