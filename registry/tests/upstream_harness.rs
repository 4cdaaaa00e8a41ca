//! The upstream harness itself: Distribution behind TLS answers with the auth it
//! was started with, the token flow works end to end, pushed images come back
//! byte for byte, the request counts match what was sent, and a stopped upstream
//! refuses connections until it is started again with the same content.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::upstream::{PushedImage, SERVICE, Upstream, UpstreamAuth};
use common::{OCI_INDEX, OCI_MANIFEST, header};
use reqwest::{Client, Response, StatusCode};

/// The parameters of a `Bearer k="v",k="v"` challenge.
fn bearer_challenge(response: &Response) -> HashMap<String, String> {
    let value = header(response, "www-authenticate");
    let params = value.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer challenge: {value:?}"));
    params
        .split("\",")
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// What a Docker client does: an anonymous try, then on a Bearer challenge a token
/// from its realm (for the challenge's service and scope) with Basic credentials,
/// then the same request with the token.
async fn get_via_token_flow(client: &Client, url: &str, accept: &str, user: &str, password: &str) -> Response {
    let first = client.get(url).header("accept", accept).send().await.unwrap();
    if first.status() != StatusCode::UNAUTHORIZED {
        return first;
    }
    let challenge = bearer_challenge(&first);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("service", &challenge["service"])
        .append_pair("scope", &challenge["scope"])
        .finish();
    let token: serde_json::Value = client
        .get(format!("{}?{query}", challenge["realm"]))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().expect("a token");
    client.get(url).header("accept", accept).bearer_auth(token).send().await.unwrap()
}

async fn assert_body(response: Response, expected: &[u8]) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), expected);
}

#[tokio::test]
async fn token_auth_challenges_anonymous_clients_and_serves_the_token_flow() {
    let up = Upstream::start(UpstreamAuth::Token).await;
    let image = up.push_image("team/app", "v1", &[1500, 40_000]).await;
    let client = up.client();
    let realm = up.token_realm().unwrap();

    let r = client.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = bearer_challenge(&r);
    assert_eq!((challenge["realm"].as_str(), challenge["service"].as_str()), (realm.as_str(), SERVICE));

    // The token server refuses anonymous and wrong credentials.
    let token_url = format!("{realm}?service={SERVICE}&scope=repository:team/app:pull");
    assert_eq!(client.get(&token_url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let wrong = client.get(&token_url).basic_auth(&up.username, Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(up.token_requests(), 2);

    // A manifest request's challenge names the repository and the action.
    let url = format!("{}/v2/team/app/manifests/v1", up.url());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(bearer_challenge(&r)["scope"], "repository:team/app:pull");

    let r = get_via_token_flow(&client, &url, OCI_INDEX, &up.username, &up.password).await;
    assert_eq!(header(&r, "docker-content-digest"), image.index.digest.to_string());
    assert_body(r, &image.index.bytes).await;
    assert_eq!(up.token_requests(), 3);

    let layer = &image.platforms[1].layers[1];
    let url = format!("{}/v2/team/app/blobs/{}", up.url(), layer.digest);
    assert_body(get_via_token_flow(&client, &url, "*/*", &up.username, &up.password).await, &layer.bytes).await;
    assert_eq!(up.token_requests(), 4);
    assert_eq!(up.token_scopes(), ["repository:team/app:pull", "repository:team/app:pull"]);
}

#[tokio::test]
async fn pushed_images_are_multi_arch_and_counted_exactly() {
    let up = Upstream::start(UpstreamAuth::Token).await;
    let image = up.push_image("counted", "latest", &[3000]).await;
    assert_image_shape(&image);
    // The harness's own pushes are not counted.
    assert!(up.requests().await.is_empty(), "{:?}", up.requests().await);

    let client = up.client();
    let token = up.mint_token("repository:counted:pull");
    let layer = &image.platforms[0].layers[0];
    let blob_url = format!("{}/v2/counted/blobs/{}", up.url(), layer.digest);
    assert_eq!(up.blob_gets(&layer.digest).await, 0);
    for _ in 0..2 {
        assert_body(client.get(&blob_url).bearer_auth(&token).send().await.unwrap(), &layer.bytes).await;
    }
    let ranged = client.get(&blob_url).bearer_auth(&token).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    // HEADs, refused GETs and GETs of other blobs are not GETs of this one.
    client.head(&blob_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(client.get(&blob_url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let other = &image.platforms[1].layers[0];
    client.get(format!("{}/v2/counted/blobs/{}", up.url(), other.digest)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(up.blob_gets(&layer.digest).await, 3);
    assert_eq!(up.blob_gets(&other.digest).await, 1);

    let manifest_url = format!("{}/v2/counted/manifests/latest", up.url());
    client.head(&manifest_url).bearer_auth(&token).header("accept", OCI_INDEX).send().await.unwrap();
    let arm = &image.platforms[1].manifest;
    let r = client
        .get(format!("{}/v2/counted/manifests/{}", up.url(), arm.digest))
        .bearer_auth(&token)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_body(r, &arm.bytes).await;
    assert_eq!((up.manifest_gets().await, up.manifest_heads().await), (1, 1));
    assert_eq!(up.manifest_requests("HEAD", Some("latest")).await, 1);
    assert_eq!(up.manifest_requests("GET", Some(&arm.digest.to_string())).await, 1);
    assert_eq!(up.manifest_requests("GET", Some("latest")).await, 0);

    // Pushing again under the same tag moves it; retag moves it back.
    let moved = up.push_image("counted", "latest", &[10]).await;
    let index_digest = |r: Response| header(&r, "docker-content-digest");
    let get_index = || client.get(&manifest_url).bearer_auth(&token).header("accept", OCI_INDEX).send();
    assert_eq!(index_digest(get_index().await.unwrap()), moved.index.digest.to_string());
    up.retag(&image, "latest").await;
    assert_eq!(index_digest(get_index().await.unwrap()), image.index.digest.to_string());
}

/// Two platforms with their own config and layers, described consistently.
fn assert_image_shape(image: &PushedImage) {
    let index: serde_json::Value = serde_json::from_slice(&image.index.bytes).unwrap();
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    assert_ne!(image.platforms[0].config.digest, image.platforms[1].config.digest);
    assert_ne!(image.platforms[0].layers[0].digest, image.platforms[1].layers[0].digest);
    for p in &image.platforms {
        let config: serde_json::Value = serde_json::from_slice(&p.config.bytes).unwrap();
        assert_eq!(config["architecture"], p.architecture);
        assert_eq!(config["rootfs"]["diff_ids"][0], p.layers[0].digest.to_string());
        let layer = &p.layers[0].bytes;
        assert_eq!((layer.len() % 512, &layer[257..262]), (0, &b"ustar"[..]), "a tar archive");
    }
}

#[tokio::test]
async fn basic_auth_serves_clients_with_the_credentials() {
    let up = Upstream::start(UpstreamAuth::Basic).await;
    let image = up.push_image("plain", "v1", &[700]).await;
    let client = up.client();
    let r = client.get(format!("{}/v2/", up.url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "www-authenticate").starts_with("Basic realm="), "{}", header(&r, "www-authenticate"));
    let wrong = client.get(format!("{}/v2/", up.url())).basic_auth(&up.username, Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let config = &image.platforms[1].config;
    let r = client
        .get(format!("{}/v2/plain/blobs/{}", up.url(), config.digest))
        .basic_auth(&up.username, Some(&up.password))
        .send()
        .await
        .unwrap();
    assert_body(r, &config.bytes).await;
    assert_eq!(up.blob_gets(&config.digest).await, 1);
    assert_eq!(up.token_requests(), 0);

    // A copy in another repository: the same digests, served there too.
    let copy = up.push_copy(&image, "plain-copy", "v2").await;
    let r = client
        .get(format!("{}/v2/plain-copy/manifests/v2", up.url()))
        .basic_auth(&up.username, Some(&up.password))
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), copy.index.digest.to_string());
    assert_body(r, &image.index.bytes).await;
}

#[tokio::test]
async fn a_stopped_upstream_refuses_connections_and_comes_back_with_its_content() {
    let mut up = Upstream::start(UpstreamAuth::None).await;
    let image = up.push_image("durable", "v1", &[2000]).await;
    let client = up.client();
    let layer = &image.platforms[0].layers[0];
    let url = format!("{}/v2/durable/blobs/{}", up.url(), layer.digest);
    assert_body(client.get(&url).send().await.unwrap(), &layer.bytes).await;

    up.stop();
    // A fresh client: a pooled connection would fail differently (end of stream).
    let client = up.client();
    let started = Instant::now();
    let err = client.get(&url).send().await.expect_err("the upstream is down");
    assert!(err.is_connect(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused fast, took {:?}", started.elapsed());
    // Counts survive the restart, as the log is kept.
    assert_eq!(up.blob_gets(&layer.digest).await, 1);

    let url_before = up.url();
    up.start_again().await;
    assert_eq!(up.url(), url_before);
    assert_body(client.get(&url).send().await.unwrap(), &layer.bytes).await;
    let r =
        client.get(format!("{}/v2/durable/manifests/v1", up.url())).header("accept", OCI_INDEX).send().await.unwrap();
    assert_body(r, &image.index.bytes).await;
    assert_eq!(up.blob_gets(&layer.digest).await, 2);
}
