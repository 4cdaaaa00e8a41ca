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
    ] {
        assert!(yaml.contains(needle), "CRD lacks {needle:?}");
    }
}
