//! Pure functions from a Registry to the objects that run it. Tested without a
//! cluster; the reconciler only applies what these return.

use std::collections::BTreeMap;

use berth_crds::Registry;
use berth_registry::config::{Config, LogFormat};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

mod auth;
pub use auth::{
    audience, auth_config, cluster_role_binding, cluster_role_binding_name, kubernetes_auth, service_account,
    service_account_name, tls_config,
};
mod lifecycle;
pub use lifecycle::{
    collector_config, gc_requests, gc_requests_name, image_hosts, registry_hosts, registry_role, registry_role_binding,
    registry_role_name, usage_config_map, usage_name,
};
mod mirror;
pub use mirror::{
    HOST_CERTS_DIR, MIRRORS_DIR, NODE_MIRRORS_CONTAINER, mirror_configs, node_mirrors, wants_node_mirrors,
};
mod observe;
pub use observe::{
    METRICS_PATH, METRICS_PORT, METRICS_PORT_NAME, metrics_config, metrics_service, metrics_service_labels,
    metrics_service_name, scrape_annotations, service_monitor, service_monitor_gvk, service_monitor_name,
};
mod storage;
pub use storage::{disruption_budget, disruption_budget_name, storage_config, storage_status, wants_disruption_budget};

/// Where the registry listens inside its container.
pub const REGISTRY_PORT: i32 = 5000;
pub const CONFIG_DIR: &str = "/etc/berth";
pub const CONFIG_FILE: &str = "config.yaml";
pub const DATA_DIR: &str = "/var/lib/berth";
/// Unprivileged user and group the registry runs as.
pub const RUN_AS: i64 = 65532;
/// Hash of the rendered config in the pod template: a config change rolls the pods.
pub const CONFIG_HASH: &str = "berth.dev/config-hash";
/// Hash of everything the operator applied to an object: equal means nothing to do.
pub const APPLIED_HASH: &str = "berth.dev/applied-hash";
/// UID of the Registry a claim was created for; claims without it are never adopted.
pub const OWNER_UID: &str = "berth.dev/registry-uid";
/// Secret files: readable by their owner and by the pod's group (`fsGroup`), nobody else.
const SECRET_MODE: i32 = 0o440;

pub fn labels(reg: &Registry) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "berth-registry".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), reg.name_any()),
        ("app.kubernetes.io/managed-by".to_owned(), "berth-operator".to_owned()),
    ])
}

pub fn config_map_name(reg: &Registry) -> String {
    format!("{}-config", reg.name_any())
}

pub fn claim_name(reg: &Registry) -> String {
    format!("{}-data", reg.name_any())
}

fn owner(reg: &Registry) -> OwnerReference {
    reg.controller_owner_ref(&()).expect("a Registry read from the API has a uid")
}

fn meta(reg: &Registry, name: String, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: reg.namespace(),
        labels: Some(labels(reg)),
        owner_references: owned.then(|| vec![owner(reg)]),
        ..Default::default()
    }
}

/// The registry's own configuration for this Registry.
pub fn registry_config(reg: &Registry) -> Config {
    let mut config = Config {
        listen: format!("0.0.0.0:{REGISTRY_PORT}"),
        storage: storage_config(reg),
        delete_enabled: reg.spec.delete_enabled,
        read_only: reg.spec.read_only,
        manifests: reg.spec.manifests.clone(),
        limits: reg.spec.limits.clone(),
        auth: auth_config(reg),
        tls: tls_config(reg),
        gc: collector_config(reg),
        retention: reg.spec.retention.clone(),
        quota: reg.spec.quota.clone(),
        metrics: metrics_config(),
        mirrors: mirror_configs(reg),
        ..Config::default()
    };
    config.log.format = LogFormat::Json;
    config
}

/// What the registry would refuse to start with, found before anything is
/// applied: the running pods keep their configuration, and the Registry
/// reports Degraded instead of rolling into a crash loop. The CRD's rules
/// catch most of it at admission; this catches the rest (and Registries
/// admitted before a rule existed).
pub fn check(reg: &Registry) -> Result<(), String> {
    mirror::check(reg)?;
    registry_config(reg).validate().map_err(|e| e.to_string())
}

fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn config_map(reg: &Registry) -> ConfigMap {
    ConfigMap {
        metadata: meta(reg, config_map_name(reg), true),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), registry_config(reg).to_yaml())])),
        ..Default::default()
    }
}

pub fn claim(reg: &Registry) -> PersistentVolumeClaim {
    let mut metadata = meta(reg, claim_name(reg), false);
    metadata.annotations = Some(BTreeMap::from([(OWNER_UID.to_owned(), reg.uid().unwrap_or_default())]));
    let storage = &reg.spec.storage;
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(storage.access_modes.iter().map(|m| m.as_str().to_owned()).collect()),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), storage.size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A read-only Secret volume named `name` holding only the Secret's keys in
/// `items`, each under its file name (`(key, file)`), mounted at `dir`.
fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)], dir: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .iter()
                    .map(|(key, file)| KeyToPath { key: (*key).into(), path: (*file).into(), ..Default::default() })
                    .collect(),
            ),
            default_mode: Some(SECRET_MODE),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mount = VolumeMount { name: name.into(), mount_path: dir.into(), read_only: Some(true), ..Default::default() };
    (volume, mount)
}

/// The pod's volumes and the registry container's mounts: config, the data
/// (claim) or S3 credentials, and the Secrets the Registry names.
fn volumes(reg: &Registry) -> (Vec<Volume>, Vec<VolumeMount>) {
    let config = Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource { name: config_map_name(reg), ..Default::default() }),
        ..Default::default()
    };
    let config_mount = VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    };
    [(config, config_mount)]
        .into_iter()
        .chain(storage::data_volumes(reg))
        .chain(auth::secret_volumes(reg))
        .chain(mirror::secret_volumes(reg))
        .unzip()
}

pub fn deployment(reg: &Registry, default_image: &str) -> Deployment {
    let spec = &reg.spec;
    let config = registry_config(reg).to_yaml();
    // The user's annotations win over the scrape annotations, not over the hash.
    let mut annotations = scrape_annotations(reg);
    annotations.extend(spec.pod_annotations.clone());
    annotations.insert(CONFIG_HASH.to_owned(), sha256_hex(config.as_bytes()));
    let (volumes, mounts) = volumes(reg);
    let container = Container {
        name: "registry".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| default_image.to_owned())),
        command: Some(vec!["berth-registry".into()]),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_FILE}")]),
        ports: Some(vec![
            ContainerPort {
                name: Some(auth::port_name(reg).into()),
                container_port: REGISTRY_PORT,
                ..Default::default()
            },
            observe::metrics_container_port(),
        ]),
        // On the plain-HTTP metrics port, which needs no certificate or
        // credentials whatever the main port asks for.
        readiness_probe: Some(observe::readiness_probe()),
        liveness_probe: Some(observe::liveness_probe()),
        resources: spec.resources.clone(),
        security_context: Some(hardened()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        service_account_name: Some(service_account_name(reg)),
        // API credentials to read the collector's requests and publish its report
        // (the Role `<name>-registry`), and to review tokens while that is on.
        automount_service_account_token: Some(true),
        security_context: Some(pod_security()),
        volumes: Some(volumes),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        affinity: spec.affinity.clone(),
        ..Default::default()
    };
    Deployment {
        metadata: meta(reg, reg.name_any(), true),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector { match_labels: Some(labels(reg)), ..Default::default() },
            strategy: Some(storage::strategy(reg)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(reg)),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The registry's API, with the type the Registry asks for; its only port.
/// The metrics port is never on it (see [`metrics_service`]).
pub fn service(reg: &Registry) -> Service {
    let port = auth::port_name(reg);
    Service {
        metadata: meta(reg, reg.name_any(), true),
        spec: Some(ServiceSpec {
            type_: Some(reg.spec.service.type_.as_str().into()),
            selector: Some(labels(reg)),
            ports: Some(vec![ServicePort {
                name: Some(port.into()),
                port: reg.spec.service.port,
                target_port: Some(IntOrString::String(port.into())),
                app_protocol: reg.spec.tls.is_some().then(|| "https".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node_access_name(reg: &Registry) -> String {
    format!("{}-node-access", reg.name_any())
}

/// Where KEP-1755 says tools look for a cluster's local registry.
pub const LOCAL_REGISTRY_HOSTING: (&str, &str) = ("kube-public", "local-registry-hosting");

/// Requests of `cpu` and `memory`, and a `memory_limit`, for the small node containers.
fn small_resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity(memory_limit.into()))])),
        ..Default::default()
    }
}

/// The node forwarder: host networking, listening on the node's loopback only,
/// forwarding to the Service; on every node, control plane included. With
/// `containerdMirrors`, beside it the container that points the node's
/// containerd at the mirrors ([`node_mirrors`]): switching that off changes
/// the pod template, so the old pods are stopped and remove their files.
pub fn node_access(reg: &Registry, default_image: &str) -> DaemonSet {
    let port = reg.spec.node_access.port;
    let image = reg.spec.image.clone().unwrap_or_else(|| default_image.to_owned());
    let mut selector = labels(reg);
    selector.insert("app.kubernetes.io/component".into(), "node-access".into());
    let container = Container {
        name: "forward".into(),
        image: Some(image.clone()),
        command: Some(vec!["berth-registry".into()]),
        args: Some(vec![
            "forward".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--upstream".into(),
            endpoint(reg),
        ]),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction { host: Some("127.0.0.1".into()), port: IntOrString::Int(port) }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        resources: Some(small_resources("10m", "16Mi", "64Mi")),
        security_context: Some(hardened()),
        ..Default::default()
    };
    let mut containers = vec![container];
    let mut volumes = Vec::new();
    if wants_node_mirrors(reg) {
        let (container, volume) = node_mirrors(reg, image);
        containers.push(container);
        volumes.push(volume);
    }
    DaemonSet {
        metadata: meta(reg, node_access_name(reg), true),
        spec: DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(selector), ..Default::default() }),
                spec: Some(PodSpec {
                    containers,
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    host_network: Some(true),
                    // Resolve the Service's cluster DNS name despite host networking.
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The KEP-1755 ConfigMap (in `kube-public`, so not owned: the finalizer removes it).
pub fn local_registry_hosting(reg: &Registry) -> ConfigMap {
    let (namespace, name) = LOCAL_REGISTRY_HOSTING;
    let doc = format!(
        "host: \"localhost:{}\"\nhostFromClusterNetwork: \"{}\"\nhelp: \"https://github.com/kubernetes/enhancements/tree/master/keps/sig-cluster-lifecycle/generic/1755-communicating-a-local-registry\"\n",
        reg.spec.node_access.port,
        endpoint(reg)
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(reg)),
            annotations: Some(BTreeMap::from([(OWNER_UID.to_owned(), reg.uid().unwrap_or_default())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("localRegistryHosting.v1".to_owned(), doc)])),
        ..Default::default()
    }
}

/// The in-cluster address of the registry.
pub fn endpoint(reg: &Registry) -> String {
    format!("{}.{}.svc:{}", reg.name_any(), reg.namespace().unwrap_or_default(), reg.spec.service.port)
}

/// Marks an object with the hash of its desired content, so an unchanged object
/// is recognised without comparing server-side defaults.
pub fn with_applied_hash<K: Resource + serde::Serialize>(mut obj: K) -> K {
    let hash = sha256_hex(&serde_json::to_vec(&obj).expect("objects serialise"));
    obj.meta_mut().annotations.get_or_insert_with(BTreeMap::new).insert(APPLIED_HASH.to_owned(), hash);
    obj
}

pub fn applied_hash<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().annotations.as_ref()?.get(APPLIED_HASH).map(String::as_str)
}

/// Bytes in a Kubernetes quantity such as `10Gi`, `500M` or `1e9`; `None` when unparsable.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    Some(n * factor)
}

#[cfg(test)]
pub(crate) mod tests;
