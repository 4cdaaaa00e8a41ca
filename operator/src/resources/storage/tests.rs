use berth_registry::config::Config;
use k8s_openapi::api::core::v1::PodSpec;

use super::*;
use crate::resources::tests::registry;
use crate::resources::{CONFIG_FILE, config_map, deployment, node_access, with_applied_hash};

const S3: &str = "replicas: 3\nstorage: {s3: {bucket: images, endpoint: 'http://minio.storage:9000', prefix: team/, \
                  credentialsSecret: {name: s3-creds}}}";

fn config_text(reg: &Registry) -> String {
    config_map(reg).data.unwrap()[CONFIG_FILE].clone()
}

fn pod(reg: &Registry) -> PodSpec {
    deployment(reg, "img").spec.template.spec.unwrap()
}

#[test]
fn s3_fields_default_as_the_schema_says() {
    let reg = registry("storage: {s3: {bucket: b, credentialsSecret: {name: c}}}");
    let s3 = reg.spec.storage.s3.as_ref().unwrap();
    assert_eq!((s3.region.as_str(), s3.path_style, s3.redirect), ("us-east-1", true, false));
    assert_eq!((s3.endpoint.as_ref(), s3.prefix.as_ref()), (None, None));
    let secret = s3.credentials_secret.as_ref().unwrap();
    assert_eq!(
        (secret.access_key_id_key.as_str(), secret.secret_access_key_key.as_str(), secret.session_token_key.as_ref()),
        ("accessKeyId", "secretAccessKey", None)
    );
    assert!(!reg.spec.storage.uses_claim());
    assert!(registry("{}").spec.storage.uses_claim());
}

#[test]
fn the_config_holds_the_bucket_and_the_credentials_directory() {
    let reg = registry(S3);
    let text = config_text(&reg);
    assert!(text.contains("s3:") && text.contains("credentialsDir: /etc/berth/s3"), "{text}");
    let config = Config::from_yaml(&text).expect("the registry accepts the rendered config");
    assert_eq!(
        config.storage.s3,
        Some(S3Config {
            bucket: "images".into(),
            endpoint: Some("http://minio.storage:9000".into()),
            region: "us-east-1".into(),
            prefix: "team/".into(),
            path_style: true,
            credentials_dir: Some(S3_CREDENTIALS_DIR.into()),
            redirect: false,
            // Not in the CRD: the registry's own defaults.
            ..S3Config::default()
        })
    );
}

#[test]
fn without_a_secret_the_registry_uses_its_environment() {
    let reg = registry("storage: {s3: {bucket: images, region: eu-west-1, pathStyle: false, redirect: true}}");
    let config = Config::from_yaml(&config_text(&reg)).unwrap();
    let s3 = config.storage.s3.unwrap();
    assert_eq!(s3.credentials_dir, None, "AWS_* variables, web identity or instance metadata");
    assert_eq!((s3.region.as_str(), s3.path_style, s3.redirect, s3.endpoint), ("eu-west-1", false, true, None));
    let pod = pod(&reg);
    let names: Vec<&str> = pod.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["config"], "no claim and no credentials volume");
    assert_eq!(pod.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
}

#[test]
fn a_claim_registry_keeps_its_storage_section() {
    let config = Config::from_yaml(&config_text(&registry("{}"))).unwrap();
    assert_eq!(config.storage, StorageConfig { root: DATA_DIR.into(), s3: None });
}

#[test]
fn s3_pods_mount_no_claim_and_the_secret_read_only() {
    let pod = pod(&registry(S3));
    let volumes = pod.volumes.as_ref().unwrap();
    assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()), "{volumes:?}");
    let secret = volumes.iter().find(|v| v.name == "s3-credentials").unwrap().secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("s3-creds"));
    let items: Vec<(&str, &str)> =
        secret.items.as_ref().unwrap().iter().map(|i| (i.key.as_str(), i.path.as_str())).collect();
    assert_eq!(items, [("accessKeyId", "accessKeyId"), ("secretAccessKey", "secretAccessKey")]);
    assert_eq!(secret.default_mode, Some(0o440));
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    assert!(mounts.iter().all(|m| m.mount_path != DATA_DIR), "{mounts:?}");
    let mount = mounts.iter().find(|m| m.name == "s3-credentials").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (S3_CREDENTIALS_DIR, Some(true)));
}

#[test]
fn chosen_keys_are_mapped_to_the_file_names_the_registry_reads() {
    let reg = registry(
        "storage: {s3: {bucket: b, credentialsSecret: {name: aws, accessKeyIdKey: AWS_ACCESS_KEY_ID, \
         secretAccessKeyKey: AWS_SECRET_ACCESS_KEY, sessionTokenKey: AWS_SESSION_TOKEN}}}",
    );
    let pod = pod(&reg);
    let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "s3-credentials").unwrap();
    let items: Vec<(&str, &str)> = volume
        .secret
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(
        items,
        [
            ("AWS_ACCESS_KEY_ID", "accessKeyId"),
            ("AWS_SECRET_ACCESS_KEY", "secretAccessKey"),
            ("AWS_SESSION_TOKEN", "sessionToken")
        ]
    );
}

#[test]
fn s3_replicas_roll_one_extra_pod_at_a_time() {
    let spec = deployment(&registry(S3), "img").spec;
    assert_eq!(spec.replicas, Some(3));
    let strategy = spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!((rolling.max_unavailable, rolling.max_surge), (Some(IntOrString::Int(0)), Some(IntOrString::Int(1))));
    // The claim's strategies are unchanged.
    assert_eq!(strategy_of("{}"), ("Recreate".to_owned(), None));
    assert_eq!(strategy_of("replicas: 2\nstorage: {accessModes: [ReadWriteMany]}"), ("RollingUpdate".to_owned(), None));
}

fn strategy_of(spec: &str) -> (String, Option<RollingUpdateDeployment>) {
    let s = strategy(&registry(spec));
    (s.type_.unwrap(), s.rolling_update)
}

#[test]
fn more_than_one_replica_gets_a_disruption_budget() {
    let reg = registry(S3);
    assert!(wants_disruption_budget(&reg));
    let pdb = disruption_budget(&reg);
    assert_eq!((pdb.metadata.name.as_deref(), pdb.metadata.namespace.as_deref()), (Some("cache"), Some("team")));
    let owner = &pdb.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Registry", "uid-1", Some(true)));
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.min_available, None);
    assert_eq!(spec.selector.unwrap().match_labels.unwrap(), labels(&reg), "the Deployment's pods");
    assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));

    assert!(!wants_disruption_budget(&registry("storage: {s3: {bucket: b}}")), "one replica: nothing to keep up");
    assert!(!wants_disruption_budget(&registry("{}")));
    assert!(wants_disruption_budget(&registry("replicas: 2\nstorage: {accessModes: [ReadWriteMany]}")));
}

#[test]
fn status_names_the_backend_and_the_bucket() {
    assert_eq!(
        storage_status(&registry(S3)),
        StorageStatus {
            backend: StorageBackend::S3,
            bucket: Some("images".into()),
            endpoint: Some("http://minio.storage:9000".into())
        }
    );
    assert_eq!(
        storage_status(&registry("{}")),
        StorageStatus { backend: StorageBackend::Filesystem, bucket: None, endpoint: None }
    );
    let text = serde_json::to_string(&storage_status(&registry("storage: {s3: {bucket: b}}"))).unwrap();
    assert_eq!(text, r#"{"backend":"s3","bucket":"b"}"#);
}

#[test]
fn node_access_is_the_same_on_s3() {
    let on_s3 = registry("nodeAccess: {enabled: true}\nstorage: {s3: {bucket: b}}");
    let on_claim = registry("nodeAccess: {enabled: true}");
    assert_eq!(
        serde_json::to_value(with_applied_hash(node_access(&on_s3, "img"))).unwrap(),
        serde_json::to_value(with_applied_hash(node_access(&on_claim, "img"))).unwrap()
    );
}

#[test]
fn part_memory_follows_the_memory_limit() {
    let buffer = |resources: &str| {
        let reg = registry(&format!("storage: {{s3: {{bucket: b}}}}\nresources: {resources}"));
        Config::from_yaml(&config_text(&reg)).unwrap().storage.s3.unwrap().buffer_bytes
    };
    assert_eq!(buffer("{}"), 1 << 30, "no limit: the registry's default");
    assert_eq!(buffer("{limits: {memory: 512Mi}}"), 128 << 20, "a quarter of the limit");
    assert_eq!(buffer("{limits: {memory: 16Gi}}"), 1 << 30, "never above the default");
    assert_eq!(buffer("{limits: {memory: 32Mi}}"), (16 << 20) + (1 << 20), "at least one part");
}
