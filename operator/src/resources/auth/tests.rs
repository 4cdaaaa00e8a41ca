use berth_crds::Anonymous;
use berth_registry::config::{Action, Config};
use k8s_openapi::api::core::v1::{PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::resources::{CONFIG_FILE, config_map, deployment, service};

use super::*;

use crate::resources::tests::registry;

/// The config the registry reads, parsed and validated as the registry does.
fn config(reg: &Registry) -> Config {
    Config::from_yaml(&config_map(reg).data.unwrap()[CONFIG_FILE]).unwrap()
}

fn pod(reg: &Registry) -> PodSpec {
    deployment(reg, "img").spec.template.spec.unwrap()
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Volume> {
    pod.volumes.as_ref().unwrap().iter().find(|v| v.name == name)
}

fn mount<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a VolumeMount> {
    pod.containers[0].volume_mounts.as_ref().unwrap().iter().find(|m| m.name == name)
}

#[test]
fn a_registry_that_says_nothing_refuses_strangers_and_reviews_kubernetes_tokens() {
    let reg = registry("{}");
    let auth = config(&reg).auth;
    assert_eq!(auth.anonymous, Anonymous::None);
    assert!(!auth.is_open());
    assert_eq!(auth.realm, "cache");
    assert_eq!(auth.cache_secs, 10);
    assert!(auth.htpasswd.is_none());
    let kubernetes = auth.kubernetes.expect("Kubernetes tokens are accepted by default");
    assert_eq!(kubernetes.audience, "berth.dev/team/cache");
    assert_eq!(kubernetes.audience, audience(&reg));
    assert!(kubernetes.kubeconfig.is_none(), "in cluster: the pod's own ServiceAccount");
    assert!(config(&reg).tls.is_none());

    // The pod runs as its own account, with the token it needs for the reviews.
    let pod = pod(&reg);
    assert_eq!(pod.service_account_name.as_deref(), Some("cache-registry"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    let names: Vec<&str> = pod.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["config", "data"], "no Secret is mounted unless named");

    // The account mounts nothing by itself; the Registry owns it.
    let sa = service_account(&reg);
    assert_eq!(sa.metadata.name.as_deref(), Some("cache-registry"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(sa.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    assert_eq!(sa.automount_service_account_token, Some(false));
}

#[test]
fn the_binding_grants_the_reviews_to_the_registry_account_only() {
    let reg = registry("{}");
    let crb = cluster_role_binding(&reg);
    assert_eq!(crb.metadata.name.as_deref(), Some("berth:registry:team:cache"));
    assert!(crb.metadata.namespace.is_none(), "cluster-scoped");
    assert!(crb.metadata.owner_references.is_none(), "a namespaced Registry cannot own it");
    let annotations = crb.metadata.annotations.unwrap();
    assert_eq!(annotations[OWNER_UID], "uid-1");
    assert_eq!(annotations[REGISTRY], "team/cache");
    assert_eq!(crb.metadata.labels.unwrap()["app.kubernetes.io/instance"], "cache");
    assert_eq!(crb.role_ref.kind, "ClusterRole");
    assert_eq!(crb.role_ref.name, "system:auth-delegator");
    assert_eq!(crb.role_ref.api_group.as_deref(), Some("rbac.authorization.k8s.io"));
    let subjects = crb.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        ("ServiceAccount", "cache-registry", Some("team"))
    );
    // Another namespace's Registry of the same name gets its own binding.
    let mut other = registry("{}");
    other.metadata.namespace = Some("other".into());
    assert_ne!(cluster_role_binding_name(&other), cluster_role_binding_name(&reg));
}

#[test]
fn kubernetes_auth_off_renders_no_kubernetes_config() {
    let reg = registry("auth: {kubernetes: {enabled: false}, htpasswd: {secretName: users}}");
    assert!(!kubernetes_auth(&reg));
    assert!(config(&reg).auth.kubernetes.is_none());
    let pod = pod(&reg);
    // The token stays: the collector reads its requests and writes its report
    // through the API (the Role <name>-registry), reviews or not.
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("cache-registry"));
}

#[test]
fn a_configured_audience_is_used_as_is() {
    let reg = registry("auth: {kubernetes: {audience: registry.example.com}, cacheSecs: 60}");
    assert_eq!(audience(&reg), "registry.example.com");
    let auth = config(&reg).auth;
    assert_eq!(auth.kubernetes.unwrap().audience, "registry.example.com");
    assert_eq!(auth.cache_secs, 60);
}

#[test]
fn htpasswd_mounts_only_its_key_read_only_where_the_config_points() {
    let reg = registry(
        "auth:\n  htpasswd:\n    secretName: users\n    key: creds\n    access:\n    - {users: [ci], repositories: ['team/*'], actions: [pull, push]}\n    - {users: ['*'], repositories: ['*'], actions: [pull]}",
    );
    let htpasswd = config(&reg).auth.htpasswd.expect("htpasswd configured");
    assert_eq!(htpasswd.access.len(), 2);
    assert_eq!(htpasswd.access[0].users, ["ci"]);
    assert_eq!(htpasswd.access[0].actions, [Action::Pull, Action::Push]);

    let pod = pod(&reg);
    let secret = volume(&pod, "htpasswd").unwrap().secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("users"));
    let items = secret.items.as_ref().unwrap();
    assert_eq!(items.len(), 1, "only the configured key");
    assert_eq!(items[0].key, "creds");
    assert_eq!(secret.default_mode, Some(0o440));
    let m = mount(&pod, "htpasswd").unwrap();
    assert_eq!(m.read_only, Some(true));
    assert_eq!(m.mount_path, HTPASSWD_DIR);
    // The registry reads exactly the file the kubelet writes.
    assert_eq!(htpasswd.path, std::path::PathBuf::from(format!("{}/{}", m.mount_path, items[0].path)));
    assert_eq!(htpasswd.path, std::path::PathBuf::from("/etc/berth/htpasswd/creds"));
}

#[test]
fn htpasswd_key_defaults_to_htpasswd() {
    let reg = registry("auth: {htpasswd: {secretName: users}}");
    assert_eq!(config(&reg).auth.htpasswd.unwrap().path, std::path::PathBuf::from("/etc/berth/htpasswd/htpasswd"));
}

fn probes(pod: &PodSpec) -> [&Probe; 2] {
    let c = &pod.containers[0];
    [c.readiness_probe.as_ref().unwrap(), c.liveness_probe.as_ref().unwrap()]
}

#[test]
fn tls_mounts_the_certificate_and_serves_https() {
    let reg = registry("tls: {secretName: registry-cert}");
    let tls = config(&reg).tls.expect("tls configured");
    let pod = pod(&reg);
    let secret = volume(&pod, "tls").unwrap().secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("registry-cert"));
    let keys: Vec<&str> = secret.items.as_ref().unwrap().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["tls.crt", "tls.key"]);
    let m = mount(&pod, "tls").unwrap();
    assert_eq!((m.mount_path.as_str(), m.read_only), (TLS_DIR, Some(true)));
    assert_eq!(tls.cert_file, std::path::PathBuf::from("/etc/berth/tls/tls.crt"));
    assert_eq!(tls.key_file, std::path::PathBuf::from("/etc/berth/tls/tls.key"));

    // The main port is named for HTTPS; the probes still speak plain HTTP to the metrics port.
    assert_speaks(&reg, "https");
    assert_eq!(service(&reg).spec.unwrap().ports.unwrap()[0].app_protocol.as_deref(), Some("https"));
}

/// The main container port and Service port are named `port`; both probes ask
/// the plain-HTTP `metrics` port, which needs neither certificate nor credentials.
fn assert_speaks(reg: &Registry, port: &str) {
    let pod = pod(reg);
    assert_eq!(pod.containers[0].ports.as_ref().unwrap()[0].name.as_deref(), Some(port));
    for probe in probes(&pod) {
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTP"));
        assert_eq!(get.port, IntOrString::String("metrics".into()));
    }
    let service_port = &service(reg).spec.unwrap().ports.unwrap()[0];
    assert_eq!(service_port.name.as_deref(), Some(port));
    assert_eq!(service_port.target_port, Some(IntOrString::String(port.into())));
}

#[test]
fn without_tls_everything_is_plain_http() {
    let reg = registry("{}");
    assert!(volume(&pod(&reg), "tls").is_none());
    assert_speaks(&reg, "http");
    assert!(service(&reg).spec.unwrap().ports.unwrap()[0].app_protocol.is_none());
}

#[test]
fn anonymous_all_renders_an_open_registry() {
    let reg = registry("auth: {anonymous: all, kubernetes: {enabled: false}}");
    let auth = config(&reg).auth;
    assert!(auth.is_open());
    assert!(!auth.has_authenticators());
    let pull = config(&registry("auth: {anonymous: pull}")).auth;
    assert_eq!(pull.anonymous, Anonymous::Pull);
    assert!(!pull.is_open());
}

#[test]
fn the_auth_config_is_part_of_the_pod_template_hash() {
    let hash = |reg: &Registry| {
        deployment(reg, "img").spec.template.metadata.unwrap().annotations.unwrap()[crate::resources::CONFIG_HASH]
            .clone()
    };
    assert_ne!(hash(&registry("{}")), hash(&registry("auth: {anonymous: pull}")));
    assert_ne!(hash(&registry("{}")), hash(&registry("tls: {secretName: a}")));
    // A renewed certificate or a new password is a Secret update, not a new config.
    assert_eq!(hash(&registry("tls: {secretName: a}")), hash(&registry("tls: {secretName: b}")));
}
