use super::*;
use crate::config::{IndexPolicy, ManifestsConfig};
use serde_json::json;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn policy() -> Policy {
    Policy::new(&ManifestsConfig::default()).unwrap()
}

fn oci_image() -> serde_json::Value {
    json!({
        "schemaVersion": 2,
        "mediaType": oci_manifest::MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 3}],
        "subject": {"mediaType": oci_manifest::MEDIA_TYPE, "digest": D1, "size": 5},
        "annotations": {"a": "b"}
    })
}

fn bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[test]
fn oci_image_manifest_lists_config_and_layers() {
    let p = policy().parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&oci_image())).unwrap();
    assert_eq!(p.kind, Kind::OciImageManifest);
    assert_eq!(p.blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>(), [D1, D2]);
    assert_eq!(p.subject.unwrap().to_string(), D1);
    assert_eq!(p.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
}

#[test]
fn content_type_must_match_media_type_field() {
    let err = policy().parse(Some(oci_index::MEDIA_TYPE), &bytes(&oci_image())).unwrap_err();
    assert!(matches!(err, Error::ManifestInvalid(_)), "{err}");
}

#[test]
fn missing_content_type_is_sniffed() {
    let p = policy().parse(None, &bytes(&oci_image())).unwrap();
    assert_eq!(p.kind, Kind::OciImageManifest);
    let index = json!({"schemaVersion": 2, "manifests": []});
    assert_eq!(policy().parse(Some("application/json"), &bytes(&index)).unwrap().kind, Kind::OciImageIndex);
}

#[test]
fn refuses_malformed_manifests() {
    let p = policy();
    let mut bad_version = oci_image();
    bad_version["schemaVersion"] = json!(1);
    let mut bad_digest = oci_image();
    bad_digest["layers"][0]["digest"] = json!("sha256:abc");
    let mut no_layers = oci_image();
    no_layers.as_object_mut().unwrap().remove("layers");
    let mut negative = oci_image();
    negative["config"]["size"] = json!(-1);
    for (name, body) in [("version", bad_version), ("digest", bad_digest), ("layers", no_layers), ("size", negative)] {
        assert!(p.parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&body)).is_err(), "{name} accepted");
    }
    assert!(p.parse(Some(oci_manifest::MEDIA_TYPE), b"{not json").is_err());
    assert!(p.parse(Some("text/plain"), &bytes(&oci_image())).is_err());
}

#[test]
fn docker_types_require_their_media_type_field() {
    let s2 = json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D1, "size": 1},
        "layers": []
    });
    assert!(policy().parse(Some(docker_schema2::MEDIA_TYPE), &bytes(&s2)).is_err());
    let mut s2 = s2;
    s2["mediaType"] = json!(docker_schema2::MEDIA_TYPE);
    assert_eq!(policy().parse(Some(docker_schema2::MEDIA_TYPE), &bytes(&s2)).unwrap().blobs.len(), 1);

    let list = json!({
        "schemaVersion": 2,
        "mediaType": docker_manifest_list::MEDIA_TYPE,
        "manifests": [{"mediaType": docker_schema2::MEDIA_TYPE, "digest": D1, "size": 1}]
    });
    let err = policy().parse(Some(docker_manifest_list::MEDIA_TYPE), &bytes(&list)).unwrap_err();
    assert!(err.to_string().contains("platform"), "{err}");
}

#[test]
fn schema1_is_off_by_default_and_named_in_the_error() {
    let m = json!({
        "schemaVersion": 1, "name": "a", "tag": "b", "architecture": "amd64",
        "fsLayers": [{"blobSum": D1}, {"blobSum": D1}], "history": [{}, {}]
    });
    let err = policy().parse(Some(docker_schema1::MEDIA_TYPE), &bytes(&m)).unwrap_err();
    assert!(err.to_string().contains(docker_schema1::MEDIA_TYPE), "{err}");
    let mut config = ManifestsConfig::default();
    config.docker.schema1 = true;
    let p = Policy::new(&config).unwrap().parse(Some(docker_schema1::MEDIA_TYPE), &bytes(&m)).unwrap();
    assert_eq!(p.blobs.len(), 1);
}

#[test]
fn disabled_oci_index_is_refused() {
    let mut config = ManifestsConfig::default();
    config.oci.image_index = false;
    let index = json!({"schemaVersion": 2, "manifests": []});
    let err = Policy::new(&config).unwrap().parse(Some(oci_index::MEDIA_TYPE), &bytes(&index)).unwrap_err();
    assert!(err.to_string().contains("disabled"), "{err}");
}

#[test]
fn foreign_layers_follow_the_url_policy_and_are_not_required() {
    let mut m = oci_image();
    m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip");
    m["layers"][0]["urls"] = json!(["https://mirror.example.com/layer"]);
    let p = policy().parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&m)).unwrap();
    assert_eq!(p.blobs.len(), 1, "only the config must be pushed");

    let mut config = ManifestsConfig::default();
    config.validation.urls.allow = vec!["^https://allowed\\.example\\.com/".into()];
    assert!(Policy::new(&config).unwrap().parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&m)).is_err());
    config.validation.urls.allow.clear();
    config.validation.urls.deny = vec!["mirror".into()];
    assert!(Policy::new(&config).unwrap().parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&m)).is_err());
    m["layers"][0]["urls"] = json!(["ftp://x/y"]);
    assert!(policy().parse(Some(oci_manifest::MEDIA_TYPE), &bytes(&m)).is_err());
}

#[test]
fn index_platform_policy_selects_required_children() {
    let index = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": oci_manifest::MEDIA_TYPE, "digest": D1, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": oci_manifest::MEDIA_TYPE, "digest": D2, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}}
    ]});
    let parsed = policy().parse(Some(oci_index::MEDIA_TYPE), &bytes(&index)).unwrap();
    assert_eq!(policy().required_manifests(&parsed).len(), 2);
    let mut config = ManifestsConfig::default();
    config.validation.indexes = IndexPolicy {
        platforms: IndexPlatforms::List,
        platform_list: vec![Platform { os: "linux".into(), architecture: "arm64".into(), variant: None }],
    };
    let only_arm = Policy::new(&config).unwrap();
    assert_eq!(only_arm.required_manifests(&parsed).iter().map(|d| d.to_string()).collect::<Vec<_>>(), [D2]);
    config.validation.indexes.platforms = IndexPlatforms::None;
    assert!(Policy::new(&config).unwrap().required_manifests(&parsed).is_empty());
}
