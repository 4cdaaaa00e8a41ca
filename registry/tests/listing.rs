//! Tag lists, the catalog and the referrers API.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn tag_list_pagination() {
    let reg = Registry::start().await;
    let (_, body) = reg.push_image("tags", "t0", b"l").await;
    for tag in ["b", "a", "c", "d"] {
        assert_eq!(reg.put_manifest("tags", tag, OCI_MANIFEST, &body).await.status(), StatusCode::CREATED);
    }
    let all: Value = reg.get("/v2/tags/tags/list").await.json().await.unwrap();
    assert_eq!(all, json!({"name": "tags", "tags": ["a", "b", "c", "d", "t0"]}));

    let r = reg.get("/v2/tags/tags/list?n=2").await;
    assert_eq!(header(&r, "link"), "</v2/tags/tags/list?n=2&last=b>; rel=\"next\"");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["a", "b"]));
    let r = reg.get("/v2/tags/tags/list?n=2&last=b").await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["c", "d"]));
    let r = reg.get("/v2/tags/tags/list?n=10&last=c").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["d", "t0"]));
    assert_eq!(reg.get("/v2/tags/tags/list?n=0").await.json::<Value>().await.unwrap()["tags"], json!([]));
    assert_error(reg.get("/v2/tags/tags/list?n=x").await, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    assert_error(reg.get("/v2/nothing/here/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn catalog_lists_nested_repositories_in_order() {
    let reg = Registry::start().await;
    for repo in ["b/c", "a", "b", "b/c/d", "z.y"] {
        reg.push_blob(repo, b"x").await;
    }
    let all: Value = reg.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all["repositories"], json!(["a", "b", "b/c", "b/c/d", "z.y"]));
    let r = reg.get("/v2/_catalog?n=2&last=a").await;
    assert_eq!(header(&r, "link"), "</v2/_catalog?n=2&last=b%2Fc>; rel=\"next\"");
    assert_eq!(r.json::<Value>().await.unwrap()["repositories"], json!(["b", "b/c"]));
}

#[tokio::test]
async fn referrers_list_filter_and_cleanup() {
    let reg = Registry::start().await;
    let (subject, subject_body) = reg.push_image("ref", "app", b"app layer").await;
    let subject_desc = json!({"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": subject_body.len()});

    let mut sbom = reg.image_manifest("ref", b"sbom", Some(subject_desc.clone())).await;
    sbom["artifactType"] = json!("application/spdx+json");
    sbom["annotations"] = json!({"org.example": "yes"});
    let sbom = serde_json::to_vec(&sbom).unwrap();
    let sbom_digest = Digest::of(Algorithm::Sha256, &sbom);
    let r = reg.put_manifest("ref", &sbom_digest.to_string(), OCI_MANIFEST, &sbom).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), subject.to_string());

    let sig = serde_json::to_vec(&reg.image_manifest("ref", b"sig", Some(subject_desc)).await).unwrap();
    let sig_digest = Digest::of(Algorithm::Sha256, &sig);
    assert_eq!(
        reg.put_manifest("ref", &sig_digest.to_string(), OCI_MANIFEST, &sig).await.status(),
        StatusCode::CREATED
    );

    let r = reg.get(&format!("/v2/ref/referrers/{subject}")).await;
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let mut found: Vec<_> =
        index["manifests"].as_array().unwrap().iter().map(|d| d["digest"].as_str().unwrap().to_owned()).collect();
    found.sort();
    let mut expected = vec![sbom_digest.to_string(), sig_digest.to_string()];
    expected.sort();
    assert_eq!(found, expected);

    let r = reg.get(&format!("/v2/ref/referrers/{subject}?artifactType=application/spdx%2Bjson")).await;
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(
        index["manifests"],
        json!([{
            "mediaType": OCI_MANIFEST, "digest": sbom_digest.to_string(), "size": sbom.len(),
            "artifactType": "application/spdx+json", "annotations": {"org.example": "yes"}
        }])
    );
    // Without artifactType the config's media type is reported.
    let r = reg.get(&format!("/v2/ref/referrers/{subject}?artifactType={}", OCI_CONFIG.replace('+', "%2B"))).await;
    assert_eq!(r.json::<Value>().await.unwrap()["manifests"][0]["digest"], sig_digest.to_string());

    reg.req(reqwest::Method::DELETE, &format!("/v2/ref/manifests/{sbom_digest}")).send().await.unwrap();
    let index: Value = reg.get(&format!("/v2/ref/referrers/{subject}")).await.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);

    let unknown = Digest::of(Algorithm::Sha256, b"nobody");
    let index: Value = reg.get(&format!("/v2/ref/referrers/{unknown}")).await.json().await.unwrap();
    assert_eq!(index["manifests"], json!([]));
    assert_error(reg.get("/v2/ref/referrers/sha256:zz").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}
