//! What the registry tells about itself: the metrics after a scripted push,
//! pull and delete (errors included), a separate metrics listener, and
//! readiness on a healthy storage. Traces and log lines need a process of
//! their own (one global subscriber each): `telemetry.rs`.

mod common;

use std::time::Duration;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};

/// Waits for the first storage probe to pass.
async fn ready(reg: &Registry) {
    for _ in 0..100 {
        if reg.get("/readyz").await.status() == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ready: {}", reg.get("/readyz").await.text().await.unwrap());
}

fn requests(s: &Scrape, route: &str, method: &str, status: &str) -> f64 {
    s.sum("berth_registry_http_requests_total", &[("route", route), ("method", method), ("status", status)])
}

#[tokio::test]
async fn a_push_pull_and_delete_move_the_request_byte_and_storage_metrics() {
    let reg = Registry::start().await;
    ready(&reg).await;
    let layer = content(7, 100 * 1024);
    let (digest, _) = reg.push_image("obs/app", "v1", &layer).await;
    // A chunked upload of 64 KiB.
    let chunk = content(8, 64 * 1024);
    let r = reg.req(Method::POST, "/v2/obs/app/blobs/uploads/").send().await.unwrap();
    let r = reg.req(Method::PATCH, &header(&r, "location")).body(chunk.clone()).send().await.unwrap();
    let chunk_digest = Digest::of(Algorithm::Sha256, &chunk);
    let done = format!("{}?digest={chunk_digest}", header(&r, "location"));
    assert_eq!(reg.req(Method::PUT, &done).send().await.unwrap().status(), StatusCode::CREATED);
    // Pulls, and client mistakes.
    let pulled = reg.req(Method::GET, "/v2/obs/app/manifests/v1").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(pulled.status(), StatusCode::OK);
    let layer_digest = Digest::of(Algorithm::Sha256, &layer);
    let blob = reg.get(&format!("/v2/obs/app/blobs/{layer_digest}")).await;
    assert_eq!(blob.bytes().await.unwrap().len(), layer.len());
    assert_eq!(reg.get("/v2/obs/app/manifests/nope").await.status(), StatusCode::NOT_FOUND);
    let unknown = Digest::of(Algorithm::Sha256, b"never pushed");
    let missing = reg.get(&format!("/v2/obs/app/blobs/{unknown}")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing_body = missing.bytes().await.unwrap().len();
    assert_eq!(reg.put_manifest("obs/app", "bad", OCI_MANIFEST, b"{not json").await.status(), StatusCode::BAD_REQUEST);
    let deleted = reg.req(Method::DELETE, &format!("/v2/obs/app/manifests/{digest}")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);

    let s = Scrape::of(&reg, "/metrics").await;
    assert_eq!(requests(&s, "manifest", "GET", "2xx"), 1.0);
    assert_eq!(requests(&s, "manifest", "GET", "4xx"), 1.0);
    assert_eq!(requests(&s, "manifest", "PUT", "2xx"), 1.0);
    assert_eq!(requests(&s, "manifest", "PUT", "4xx"), 1.0);
    assert_eq!(requests(&s, "manifest", "DELETE", "2xx"), 1.0);
    assert_eq!(requests(&s, "upload", "POST", "2xx"), 3.0, "two monolithic pushes and one session");
    assert_eq!(requests(&s, "upload", "PATCH", "2xx"), 1.0);
    assert_eq!(requests(&s, "upload", "PUT", "2xx"), 1.0);
    assert_eq!(requests(&s, "blob", "GET", "2xx"), 1.0);
    assert_eq!(requests(&s, "blob", "GET", "4xx"), 1.0);
    let duration = "berth_registry_http_request_duration_seconds_count";
    assert_eq!(s.sum(duration, &[("route", "manifest"), ("method", "GET")]), 2.0);
    let inf = [("route", "upload"), ("method", "POST"), ("le", "+Inf")];
    assert_eq!(s.sum("berth_registry_http_request_duration_seconds_bucket", &inf), 3.0);
    // Bytes, exactly: the config ("{}"), the layer and the chunk came in; the
    // layer and one error body went out of the blob route.
    let received = s.sum("berth_registry_http_received_bytes_total", &[("route", "upload")]);
    assert_eq!(received, (2 + layer.len() + chunk.len()) as f64);
    let sent = s.sum("berth_registry_http_sent_bytes_total", &[("route", "blob")]);
    assert_eq!(sent, (layer.len() + missing_body) as f64);
    // Storage operations, by name.
    let ops = "berth_registry_storage_operation_duration_seconds_count";
    assert_eq!(s.sum(ops, &[("operation", "tag_manifest")]), 2.0, "the GET by tag and the PUT's tag check");
    assert_eq!(s.sum(ops, &[("operation", "manifest_put")]), 1.0, "the bad manifest never reached the storage");
    assert_eq!(s.sum(ops, &[("operation", "manifest_delete")]), 1.0);
    assert!(s.sum(ops, &[("operation", "blob_read")]) >= 1.0);
    // Gauges: nothing in flight but this scrape; the probe passed.
    assert_eq!(s.sum("berth_registry_uploads_in_flight", &[]), 0.0);
    assert_eq!(s.sum("berth_registry_http_requests_in_flight", &[]), 1.0);
    assert!(s.sum("berth_registry_connections_open", &[]) >= 1.0);
    assert_eq!(s.sum("berth_registry_storage_healthy", &[]), 1.0);
    assert!(s.sum("berth_registry_storage_probe_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(s.sum("berth_registry_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    // Bounded labels: no repository, tag or digest in any series.
    for (series, _) in &s.0 {
        assert!(!series.contains("obs/app") && !series.contains("sha256") && !series.contains("v1\""), "{series}");
    }
}

#[tokio::test]
async fn metrics_can_have_a_listener_and_path_of_their_own_or_be_off() {
    let side = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let reg = Registry::with(|c| {
        c.metrics.listen = Some(side.to_string());
        c.metrics.path = "/stats".into();
    })
    .await;
    ready(&reg).await;
    assert_eq!(reg.get("/stats").await.status(), StatusCode::NOT_FOUND, "not on the API's listener");
    assert_eq!(reg.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    reg.get("/v2/").await;
    let metrics = reg.via(format!("http://{side}"));
    let s = Scrape::of(&metrics, "/stats").await;
    assert_eq!(requests(&s, "base", "GET", "2xx"), 1.0);
    assert_eq!(requests(&s, "metrics", "GET", "2xx"), 0.0, "the metrics listener's requests are not counted");
    assert_eq!(metrics.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(metrics.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(metrics.get("/v2/").await.status(), StatusCode::NOT_FOUND, "no API there");

    let off = Registry::with(|c| c.metrics.enabled = false).await;
    assert_eq!(off.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    ready(&off).await;
}

#[tokio::test]
async fn the_dashboard_asks_only_for_metrics_the_registry_exports() {
    // A mirror's series exist (at zero) from the start, once one is configured.
    let mirror = berth_registry::config::MirrorConfig::new("hub", "http://127.0.0.1:9");
    let reg = Registry::with(|c| c.mirrors = vec![mirror]).await;
    // Request series appear with the first request of their kind.
    let digest = reg.push_blob("dash/app", b"layer").await;
    assert_eq!(reg.get(&format!("/v2/dash/app/blobs/{digest}")).await.status(), StatusCode::OK);
    let text = reg.get("/metrics").await.text().await.unwrap();
    let exported: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let dashboard = include_str!("../../manifests/monitoring/grafana-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut asked = Vec::new();
    collect_exprs(&json, &mut asked);
    assert!(asked.len() > 20, "the dashboard's queries: {asked:?}");
    let names = regex::Regex::new(r"berth_registry_[a-z_]+").unwrap();
    let mut checked = 0;
    for expr in &asked {
        for name in names.find_iter(expr).map(|m| m.as_str()) {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(exported.contains(&family), "the dashboard asks for {name}, which is not exported: {expr}");
            checked += 1;
        }
    }
    assert!(checked > 20);
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
