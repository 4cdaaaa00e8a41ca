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
