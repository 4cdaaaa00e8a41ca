use super::*;
use berth_crds::{RegistrySpec, RetentionPolicy, StorageSpec};
use berth_registry::config::LimitsConfig;

/// A Registry in namespace `team` with a uid, as read from the API.
pub(crate) fn registry(yaml_spec: &str) -> Registry {
    let spec: RegistrySpec = serde_saphyr::from_str(yaml_spec).unwrap();
    let mut reg = Registry::new("cache", spec);
    reg.metadata.namespace = Some("team".into());
    reg.metadata.uid = Some("uid-1".into());
    reg
}

#[test]
fn defaults_follow_the_schema() {
    let reg = registry("{}");
    assert_eq!(reg.spec.replicas, 1);
    assert_eq!(reg.spec.storage, StorageSpec::default());
    assert_eq!(reg.spec.storage.retention_policy, RetentionPolicy::Retain);
    assert!(reg.spec.delete_enabled);
    assert!(!reg.spec.manifests.docker.schema1);
}

#[test]
fn config_map_renders_the_registry_config_type() {
    let reg = registry(
        "manifests: {docker: {schema1: true}, validation: {maxSize: 1024}}\nreadOnly: true\nlimits: {maxUploads: 7}",
    );
    let cm = config_map(&reg);
    assert_eq!(cm.metadata.name.as_deref(), Some("cache-config"));
    assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    let text = &cm.data.unwrap()[CONFIG_FILE];
    let parsed = Config::from_yaml(text).unwrap();
    assert!(parsed.manifests.docker.schema1);
    assert_eq!(parsed.manifests.validation.max_size, 1024);
    assert!(parsed.read_only);
    assert_eq!(parsed.limits.max_uploads, 7);
    assert_eq!(parsed.limits.max_connections, LimitsConfig::default().max_connections);
    assert_eq!(parsed.storage.root, std::path::PathBuf::from(DATA_DIR));
    assert_eq!(parsed.listen, "0.0.0.0:5000");
}

#[test]
fn deployment_is_hardened_and_mounts_config_and_claim() {
    let reg = registry("{}");
    let d = deployment(&reg, "example/berth:1");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("example/berth:1"));
    assert_eq!(c.args.as_ref().unwrap(), &["--config".to_owned(), "/etc/berth/config.yaml".to_owned()]);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL".to_owned()]);
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let volumes = pod.volumes.unwrap();
    assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "cache-config");
    assert_eq!(volumes[1].persistent_volume_claim.as_ref().unwrap().claim_name, "cache-data");
    // Kubernetes authentication is on by default: the registry reviews tokens.
    assert_eq!(pod.service_account_name.as_deref(), Some("cache-registry"));
    assert_eq!(pod.automount_service_account_token, Some(true));
}

#[test]
fn read_write_many_rolls_instead_of_recreating() {
    let reg = registry("replicas: 3\nstorage: {accessModes: [ReadWriteMany]}");
    let spec = deployment(&reg, "img").spec;
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let hash = |reg: &Registry| {
        deployment(reg, "img").spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH].clone()
    };
    let a = registry("{}");
    let b = registry("manifests: {oci: {imageIndex: false}}");
    assert_ne!(hash(&a), hash(&b));
    assert_eq!(hash(&a), hash(&registry("{}")));
}

#[test]
fn claim_is_not_owned_but_marked() {
    let reg = registry("storage: {size: 50Gi, storageClassName: fast}");
    let pvc = claim(&reg);
    assert!(pvc.metadata.owner_references.is_none(), "the retention policy decides its fate, not GC");
    assert_eq!(pvc.metadata.annotations.unwrap()[OWNER_UID], "uid-1");
    let spec = pvc.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "50Gi");
}

#[test]
fn service_and_endpoint() {
    let reg = registry("service: {type: NodePort, port: 443}");
    let svc = service(&reg).spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("NodePort"));
    assert_eq!(svc.ports.unwrap()[0].port, 443);
    assert_eq!(endpoint(&reg), "cache.team.svc:443");
}

/// Whatever its type, the main Service carries the registry's port and
/// nothing else: the unauthenticated metrics port is never exposed with it.
#[test]
fn the_main_service_has_only_the_registry_port() {
    for type_ in ["ClusterIP", "NodePort", "LoadBalancer"] {
        for extra in ["", ", tls: {secretName: cert}"] {
            let reg = registry(&format!("{{service: {{type: {type_}, port: 6000}}{extra}}}"));
            let svc = service(&reg);
            let spec = svc.spec.unwrap();
            assert_eq!(spec.type_.as_deref(), Some(type_));
            let ports: Vec<_> = spec.ports.unwrap().into_iter().map(|p| (p.name, p.port, p.target_port)).collect();
            let name = if extra.is_empty() { "http" } else { "https" };
            assert_eq!(ports, [(Some(name.into()), 6000, Some(IntOrString::String(name.into())))], "{type_}{extra}");
            assert_eq!(spec.selector, Some(labels(&reg)));
            assert_eq!(svc.metadata.labels, Some(labels(&reg)));
        }
    }
}

#[test]
fn applied_hash_is_stable_and_content_sensitive() {
    let a = with_applied_hash(service(&registry("{}")));
    let b = with_applied_hash(service(&registry("{}")));
    let c = with_applied_hash(service(&registry("service: {port: 6000}")));
    assert_eq!(applied_hash(&a), applied_hash(&b));
    assert_ne!(applied_hash(&a), applied_hash(&c));
}

#[test]
fn quantities() {
    assert_eq!(quantity_bytes("10Gi"), Some(10.0 * 1024f64.powi(3)));
    assert_eq!(quantity_bytes("500M"), Some(5e8));
    assert_eq!(quantity_bytes("1e3"), Some(1000.0));
    assert!(quantity_bytes("10Gi") < quantity_bytes("11Gi"));
    assert_eq!(quantity_bytes("ten"), None);
}

#[test]
fn node_access_forwards_from_node_loopback_to_the_service() {
    let reg = registry("nodeAccess: {enabled: true, port: 5555}\nservice: {port: 6000}");
    let ds = node_access(&reg, "img");
    assert_eq!(ds.metadata.name.as_deref(), Some("cache-node-access"));
    assert_eq!(ds.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false), "the forwarder needs no API access");
    assert!(pod.service_account_name.is_none());
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let c = &pod.containers[0];
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["forward", "--listen", "127.0.0.1:5555", "--upstream", "cache.team.svc:6000"].map(String::from)
    );
    assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert_eq!(c.security_context.as_ref().unwrap().run_as_non_root, Some(true));

    let cm = local_registry_hosting(&reg);
    assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-public"));
    assert_eq!(cm.metadata.name.as_deref(), Some("local-registry-hosting"));
    let doc = &cm.data.unwrap()["localRegistryHosting.v1"];
    assert!(
        doc.contains("host: \"localhost:5555\"") && doc.contains("hostFromClusterNetwork: \"cache.team.svc:6000\""),
        "{doc}"
    );
}

#[test]
fn node_access_is_off_by_default() {
    assert!(!registry("{}").spec.node_access.enabled);
}
