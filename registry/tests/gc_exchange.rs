//! The collector's exchange with the operator on a real kube-apiserver, with a
//! token of an account that holds exactly what the operator's Role
//! `<name>-registry` grants: `get` on the requests ConfigMap, `get`/`patch`/
//! `update` on the report ConfigMap.

use std::path::{Path, PathBuf};

use berth_registry::config::CollectorKubernetes;
use berth_registry::gc::exchange::{Exchange, ExchangeError, FIELD_MANAGER};
use berth_registry::report::{Collection, HEALTH_KEY, REPORT_KEY, Report, StorageHealth, Usage};
use berth_testcontrolplane::ControlPlane;

const ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cache-registry, namespace: berth}
rules:
- {apiGroups: [''], resources: [configmaps], resourceNames: [cache-gc-requests], verbs: [get]}
- {apiGroups: [''], resources: [configmaps], resourceNames: [cache-usage], verbs: [get, patch, update]}
";

/// A kubeconfig for the same API server with the ServiceAccount's token.
fn account_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    cp.kubectl_ok(&["create", "namespace", "berth"]);
    cp.kubectl_ok(&["create", "serviceaccount", "cache-registry", "-n", "berth"]);
    cp.apply(ROLE);
    cp.kubectl_ok(&[
        "create",
        "rolebinding",
        "cache-registry",
        "--role=cache-registry",
        "--serviceaccount=berth:cache-registry",
        "-n",
        "berth",
    ]);
    let token = cp.kubectl_ok(&["create", "token", "cache-registry", "-n", "berth", "--duration", "1h"]);
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let own: Vec<String> = admin
        .lines()
        .map(|l| if l.trim_start().starts_with("token:") { format!("    token: {}", token.trim()) } else { l.into() })
        .collect();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, own.join("\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_report_out() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = account_kubeconfig(&cp, dir.path());
    let exchange = Exchange::new(&CollectorKubernetes {
        namespace: "berth".into(),
        requests: "cache-gc-requests".into(),
        report: "cache-usage".into(),
        kubeconfig: Some(kubeconfig),
    });

    // No requests yet: the protected references are unknown, which is an
    // error (collecting then could delete a running image), not an empty list.
    let unknown = exchange.requests().await.unwrap_err();
    assert!(matches!(unknown, ExchangeError::NotPublished(_)), "{unknown}");
    cp.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cache-gc-requests, namespace: berth}\ndata: {protected: \"app:v1\\napp@sha256:00\\n\", collect: '2024-05-01'}\n",
    );
    let requests = exchange.requests().await.unwrap();
    assert_eq!(requests.protected, ["app:v1", "app@sha256:00"]);
    assert_eq!(requests.collect.as_deref(), Some("2024-05-01"));

    // The report ConfigMap as the operator applies it: without data.
    cp.kubectl_ok(&["create", "configmap", "cache-usage", "-n", "berth"]);
    let report = Report {
        usage: Usage {
            bytes: 1234,
            blobs: 3,
            volume_bytes: Some(10_000),
            volume_available_bytes: Some(900),
            ..Default::default()
        },
        last_collection: Some(Collection { request: Some("2024-05-01".into()), bytes_freed: 99, ..Default::default() }),
    };
    exchange.publish(&report).await.unwrap();
    exchange.publish(&report).await.unwrap();
    let cm: serde_json::Value = serde_json::from_str(&cp.kubectl_ok(&[
        "get",
        "configmap",
        "cache-usage",
        "-n",
        "berth",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let written: Report = serde_json::from_str(cm["data"]["report.json"].as_str().unwrap()).unwrap();
    assert_eq!(written, report);
    let managers: Vec<&str> =
        cm["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&FIELD_MANAGER), "{managers:?}");

    // The storage health goes beside the report, under a manager of its own,
    // so neither write takes the other's key away.
    let health = StorageHealth { writable: false, message: Some("read-only".into()), since: "x".into(), pod: None };
    exchange.publish_health(&health).await.unwrap();
    exchange.publish(&report).await.unwrap();
    let data = |cp: &ControlPlane| -> serde_json::Value {
        let cm = cp.kubectl_ok(&["get", "configmap", "cache-usage", "-n", "berth", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&cm).unwrap()["data"].clone()
    };
    let both = data(&cp);
    let written: StorageHealth = serde_json::from_str(both[HEALTH_KEY].as_str().unwrap()).unwrap();
    assert_eq!(written, health);
    assert!(both[REPORT_KEY].is_string());
    exchange.publish_health(&StorageHealth { writable: true, ..health }).await.unwrap();
    let both = data(&cp);
    assert!(both[REPORT_KEY].is_string(), "the report stays: {both}");
    assert!(both[HEALTH_KEY].as_str().unwrap().contains("\"writable\":true"));

    // The account reaches nothing else: another ConfigMap's report is refused.
    let other = Exchange::new(&CollectorKubernetes {
        namespace: "berth".into(),
        requests: "cache-config".into(),
        report: "cache-config".into(),
        kubeconfig: Some(dir.path().join("kubeconfig")),
    });
    assert!(other.publish(&report).await.is_err());
    assert!(other.requests().await.is_err(), "a ConfigMap outside the Role must not be readable");
}
