//! The committed CRD must be what the Rust types generate.

#[test]
fn committed_crd_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds/registry.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == berth_crds::crd_yaml(),
        "manifests/crds/registry.yaml is stale: run `cargo run -p berth-crds --bin crdgen`"
    );
}

#[test]
fn schema_has_defaults_descriptions_and_rules() {
    let yaml = berth_crds::crd_yaml();
    for needle in [
        "x-kubernetes-validations",
        "storage.size may grow but not shrink",
        "more than one replica needs storage.accessModes to include ReadWriteMany",
        "x-kubernetes-list-type: map",
        "Manifest handlers (one per media type)",
        "imageManifest",
        "schema1",
        "shortNames",
        "scale",
        "auth.htpasswd.access: every rule names users, repositories and actions",
    ] {
        assert!(yaml.contains(needle), "CRD lacks {needle:?}");
    }
}

/// A Registry that says nothing about access lets strangers do nothing: the
/// defaults the API server fills in, not only the Rust ones.
#[test]
fn auth_defaults_are_safe_in_the_schema() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(berth_crds::Registry::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        spec["auth"]["default"],
        serde_json::json!({"anonymous": "none", "cacheSecs": 10, "kubernetes": {"enabled": true}})
    );
    assert_eq!(spec["auth"]["properties"]["anonymous"]["default"], "none");
    assert_eq!(spec["auth"]["properties"]["cacheSecs"]["maximum"], 300.0);
    assert_eq!(spec["auth"]["properties"]["htpasswd"]["properties"]["key"]["default"], "htpasswd");
    assert_eq!(spec["tls"]["required"], serde_json::json!(["secretName"]));
    let rules =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"];
    assert!(
        rules.as_array().unwrap().iter().any(|r| r["message"]
            == "nodeAccess serves plain HTTP on the nodes' localhost and cannot forward to a TLS registry yet; turn one off"),
        "no rule refuses tls with nodeAccess: {rules}"
    );
    let rust: berth_crds::RegistrySpec = serde_json::from_str("{}").unwrap();
    assert_eq!(rust.auth.anonymous, berth_crds::Anonymous::None);
    assert!(rust.auth.kubernetes.enabled && rust.tls.is_none());
}

/// `storage.s3` is an addition: the default storage is still the claim, and
/// the S3 fields default in the schema to what the registry would assume.
#[test]
fn s3_storage_in_the_schema() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(berth_crds::Registry::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let storage = &schema["spec"]["properties"]["storage"];
    assert_eq!(
        storage["default"],
        serde_json::json!({"size": "10Gi", "accessModes": ["ReadWriteOnce"], "retentionPolicy": "Retain"}),
        "existing Registries keep their claim"
    );
    let s3 = &storage["properties"]["s3"];
    assert_eq!(s3["required"], serde_json::json!(["bucket"]));
    assert_eq!(s3["properties"]["region"]["default"], "us-east-1");
    assert_eq!(s3["properties"]["pathStyle"]["default"], true);
    assert_eq!(s3["properties"]["redirect"]["default"], false);
    assert!(s3["properties"]["endpoint"]["default"].is_null() && s3["properties"]["prefix"]["default"].is_null());
    let secret = &s3["properties"]["credentialsSecret"];
    assert_eq!(secret["required"], serde_json::json!(["name"]));
    assert_eq!(secret["properties"]["accessKeyIdKey"]["default"], "accessKeyId");
    assert_eq!(secret["properties"]["secretAccessKeyKey"]["default"], "secretAccessKey");
    assert!(secret["properties"]["sessionTokenKey"]["default"].is_null());
    assert_eq!(
        schema["status"]["properties"]["storage"]["properties"]["backend"]["enum"],
        serde_json::json!(["filesystem", "s3"])
    );

    let rules: Vec<&str> =
        storage["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert!(rules.contains(&"has(self.s3) == has(oldSelf.s3)"), "no transition rule: {rules:?}");
    assert!(rules.contains(&berth_crds::S3_WITHOUT_CLAIM_FIELDS), "{rules:?}");
    let yaml = berth_crds::crd_yaml();
    for needle in [
        "storage.s3 needs no claim",
        "storage.s3 cannot be added to or removed from an existing Registry",
        "self.replicas <= 1 || has(self.storage.s3) ||",
    ] {
        assert!(yaml.contains(needle), "CRD lacks {needle:?}");
    }
}

/// The rule that keeps a claim's fields away from S3 compares them with the
/// defaults the API server fills in; these must be the Rust defaults.
#[test]
fn the_s3_rule_knows_the_claim_defaults() {
    let defaults = berth_crds::StorageSpec::default();
    let rule = berth_crds::S3_WITHOUT_CLAIM_FIELDS;
    assert!(rule.contains(&format!("quantity('{}')", defaults.size.0)), "{rule}");
    assert_eq!(defaults.access_modes, [berth_crds::AccessMode::ReadWriteOnce]);
    assert!(rule.contains("size(self.accessModes) == 1 && self.accessModes[0] == 'ReadWriteOnce'"), "{rule}");
    assert_eq!(defaults.retention_policy, berth_crds::RetentionPolicy::Retain);
    assert!(rule.contains("self.retentionPolicy == 'Retain'") && rule.contains("!has(self.storageClassName)"));
    assert!(defaults.storage_class_name.is_none() && defaults.s3.is_none());
}

/// `spec.monitoring` defaults in the schema as in Rust: scrape annotations on,
/// no ServiceMonitor; the interval is checked by a CEL rule with a message.
#[test]
fn monitoring_in_the_schema() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(berth_crds::Registry::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let monitoring = &schema["spec"]["properties"]["monitoring"];
    assert_eq!(
        monitoring["default"],
        serde_json::json!({"scrapeAnnotations": true, "serviceMonitor": {"enabled": false}})
    );
    assert_eq!(monitoring["properties"]["scrapeAnnotations"]["default"], true);
    let monitor = &monitoring["properties"]["serviceMonitor"]["properties"];
    assert_eq!(monitor["enabled"]["default"], false);
    assert_eq!(monitor["labels"]["additionalProperties"]["type"], "string");
    let rules = monitor["interval"]["x-kubernetes-validations"].as_array().expect("a rule on the interval");
    assert_eq!(rules[0]["rule"], berth_crds::INTERVAL_RULE);
    assert!(rules[0]["message"].as_str().unwrap().contains("Prometheus duration such as 30s"));
    let rust: berth_crds::RegistrySpec = serde_json::from_str("{}").unwrap();
    assert_eq!(rust.monitoring, berth_crds::MonitoringSpec::default());
    assert!(rust.monitoring.scrape_annotations && !rust.monitoring.service_monitor.enabled);
}

/// `spec.mirrors` is keyed by prefix, bounded, and defaults in the schema as
/// in Rust; the node opt-in is off by default and checked against node access.
#[test]
fn mirrors_in_the_schema() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(berth_crds::Registry::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mirrors = &spec["properties"]["mirrors"];
    assert_eq!(mirrors["x-kubernetes-list-type"], "map");
    assert_eq!(mirrors["x-kubernetes-list-map-keys"], serde_json::json!(["prefix"]));
    assert_eq!(mirrors["maxItems"], 16);
    let rules: Vec<&str> =
        mirrors["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, [berth_crds::MIRRORS_DISJOINT, berth_crds::MIRROR_HOSTS_DISTINCT]);
    let mirror = &mirrors["items"];
    assert_eq!(mirror["required"], serde_json::json!(["prefix", "url"]));
    assert_eq!(mirror["properties"]["tagTtlSeconds"]["default"], 300);
    assert_eq!(mirror["properties"]["tagTtlSeconds"]["maximum"], 86400.0);
    assert_eq!(mirror["properties"]["credentialsSecret"]["properties"]["usernameKey"]["default"], "username");
    assert_eq!(mirror["properties"]["credentialsSecret"]["properties"]["passwordKey"]["default"], "password");
    assert_eq!(mirror["properties"]["caSecret"]["properties"]["key"]["default"], "ca.crt");
    assert_eq!(mirror["properties"]["maxSize"]["maxLength"], 32);
    let node = &spec["properties"]["nodeAccess"];
    assert_eq!(
        node["default"],
        serde_json::json!({"enabled": false, "port": 5001, "containerdMirrors": {"enabled": false, "certsDir": "/etc/containerd/certs.d"}})
    );
    let spec_rules = spec["x-kubernetes-validations"].as_array().unwrap();
    assert!(spec_rules.iter().any(|r| r["rule"] == berth_crds::CONTAINERD_MIRRORS_NEEDS));
    let rust: berth_crds::RegistrySpec = serde_json::from_str("{}").unwrap();
    assert!(rust.mirrors.is_empty() && !rust.node_access.containerd_mirrors.enabled);
}
