//! Bad input: every client mistake is a 4xx with the spec's error code.

mod common;

use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn base_endpoint() {
    let reg = Registry::start().await;
    let r = reg.get("/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-distribution-api-version"), "registry/2.0");
    assert_eq!(reg.get("/v2").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalid_repository_names() {
    let reg = Registry::start().await;
    let long = "a".repeat(256);
    for name in ["UPPER", "a/..%2fb", "a//b", "_x", "a-", "a%00b", &long] {
        let r = reg.get(&format!("/v2/{name}/tags/list")).await;
        assert_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        let r = reg.req(Method::POST, &format!("/v2/{name}/blobs/uploads/")).send().await.unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    }
    // HTTP clients normalise these away, so send them raw.
    for path in ["/v2/%2e%2e/tags/list", "/v2/a/%2E%2e/b/tags/list", "/v2/../etc/tags/list", "/v2/a/./b/tags/list"] {
        assert_eq!(raw_get_status(&reg.base, path).await, 400, "{path}");
    }
}

#[tokio::test]
async fn invalid_digests() {
    let reg = Registry::start().await;
    for digest in ["sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", "nocolon", "sha256:../../etc"] {
        let r = reg.get(&format!("/v2/x/blobs/{digest}")).await;
        assert!(
            r.status() == StatusCode::BAD_REQUEST || r.status() == StatusCode::NOT_FOUND,
            "{digest}: {}",
            r.status()
        );
        let r = reg.req(Method::POST, &format!("/v2/x/blobs/uploads/?digest={digest}")).body("x").send().await.unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    let r = reg.get("/v2/x/blobs/sha256:abc").await;
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn unknown_things() {
    let reg = Registry::start().await;
    let digest = berth_registry::digest::Digest::of(berth_registry::digest::Algorithm::Sha256, b"none");
    assert_error(reg.get(&format!("/v2/x/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let r = reg.req(Method::GET, "/v2/x/manifests/latest").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_error(reg.get("/v2/x/whatever").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_error(reg.get("/v3/").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = reg.req(Method::PATCH, "/v2/x/manifests/latest").send().await.unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let r = reg.req(Method::DELETE, "/v2/x/manifests/nope").send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn error_bodies_follow_the_spec_format() {
    let reg = Registry::start().await;
    let r = reg.get("/v2/UPPER/tags/list").await;
    assert_eq!(header(&r, "content-type"), "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["message"].as_str().unwrap().contains("UPPER"));
}
