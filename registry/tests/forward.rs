//! The node-access forwarder: an image pushed and pulled through it is the same.

mod common;

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn push_and_pull_through_the_forwarder() {
    let reg = Registry::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let upstream = reg.base.trim_start_matches("http://").to_owned();
    let task = tokio::spawn(berth_registry::forward::run(listener, upstream, async {
        let _ = stopped.await;
    }));
    let via = reg.via(format!("http://{addr}"));

    let layer: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let (digest, _) = via.push_image("through/forwarder", "v1", &layer).await;
    let r =
        reg.req(Method::GET, "/v2/through/forwarder/manifests/v1").header("accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string(), "not stored upstream");
    let layer_digest = Digest::of(Algorithm::Sha256, &layer);
    let r = via.get(&format!("/v2/through/forwarder/blobs/{layer_digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), layer);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
}
