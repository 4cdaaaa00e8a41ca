//! Traces and log lines, from the real binary (each process has one global
//! subscriber): with an OTLP endpoint in the environment, spans for each
//! request and storage operation reach a collector stand-in on loopback; with
//! none, nothing is sent, not even to the default endpoint. Each request
//! leaves one JSON log line with its method, route, status, bytes and time.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// An OTLP/HTTP receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Collector {
    async fn serve(&self, addr: &str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("binding the collector stand-in");
        let local = listener.local_addr().unwrap();
        let requests = self.requests.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let decoded = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                requests.lock().unwrap().push(decoded);
                ""
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        local
    }

    /// The same over gRPC (OTLP's `TraceService/Export`), with TLS when given
    /// a certificate and key.
    async fn serve_grpc(&self, tls: Option<(&str, &str)>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the gRPC stand-in");
        let local = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
        }
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(server.add_service(service).serve_with_incoming(incoming));
        local
    }

    /// Every span received.
    fn spans(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for request in self.requests.lock().unwrap().iter() {
            for resource in &request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect();
                    out.push(Received {
                        name: span.name.clone(),
                        attributes,
                        service: service.clone(),
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
        }
        out
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A span as the collector got it, its attributes as strings.
#[derive(Debug)]
struct Received {
    name: String,
    attributes: Vec<(String, String)>,
    service: String,
    /// Trace, span and parent span ids in hex (the parent empty for a root).
    trace: String,
    id: String,
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The binary on a free port, with exactly the `OTEL_*` variables given.
    fn start(otel: &[(&str, &str)]) -> Server {
        Server::start_with("{}", otel)
    }

    /// The same with a configuration file of `yaml`.
    fn start_with(yaml: &str, otel: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .arg("--root")
            .arg(dir.path().join("data"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            command.env_remove(k);
        }
        // Spans leave in small batches at once, so the test need not wait.
        command.env("OTEL_BSP_SCHEDULE_DELAY", "100").envs(otel.iter().copied());
        Server { child: command.spawn().unwrap(), base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{}/readyz", self.base)).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} never became ready", self.base);
    }

    /// A manifest GET of `repository:reference`, with a `traceparent` header when given.
    async fn pull(&self, repository: &str, reference: &str, traceparent: Option<&str>) -> u16 {
        let mut get = reqwest::Client::new()
            .get(format!("{}/v2/{repository}/manifests/{reference}", self.base))
            .header("accept", "application/vnd.oci.image.manifest.v1+json");
        if let Some(traceparent) = traceparent {
            get = get.header("traceparent", traceparent);
        }
        get.send().await.unwrap().status().as_u16()
    }

    async fn round_trip(&self) {
        let client = reqwest::Client::new();
        self.ready().await;
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
        let blob = client
            .post(format!("{}/v2/traced/app/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", self.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), 201);
        let put = client
            .put(format!("{}/v2/traced/app/manifests/v1", self.base))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let get = client
            .get(format!("{}/v2/traced/app/manifests/v1", self.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
        let blob = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let pulled = client.get(format!("{}/v2/traced/app/blobs/{blob}", self.base)).send().await.unwrap();
        assert_eq!(pulled.bytes().await.unwrap().as_ref(), b"{}");
        let missing = client.get(format!("{}/v2/traced/app/manifests/nope", self.base)).send().await.unwrap();
        assert_eq!(missing.status(), 404);
    }

    /// Stops the process (SIGTERM, so it sends its last spans) and returns its log lines.
    fn stop(mut self) -> Vec<serde_json::Value> {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_the_configured_collector_with_the_repository_and_reference() {
    let collector = Collector::default();
    let addr = collector.serve("127.0.0.1:0").await;
    let endpoint = format!("http://{addr}");
    let server =
        Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_SERVICE_NAME", "berth-under-test")]);
    server.round_trip().await;
    let lines = server.stop();
    let spans = collector.spans();
    let find =
        |name: &str, reference: &str| spans.iter().find(|s| s.name == name && s.attr("reference") == Some(reference));
    let request = find("GET manifest", "v1").unwrap_or_else(|| panic!("no request span for the pull: {spans:#?}"));
    assert_eq!(request.attr("repository"), Some("traced/app"));
    assert_eq!(request.attr("http.route"), Some("manifest"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.service, "berth-under-test", "OTEL_SERVICE_NAME names the service");
    assert!(find("tag_manifest", "v1").is_some(), "a span for the storage read: {spans:#?}");
    let put = spans.iter().find(|s| s.name == "manifest_put").expect("a span for the storage write");
    assert_eq!(put.attr("repository"), Some("traced/app"));
    assert!(put.attr("reference").is_some_and(|r| r.starts_with("sha256:")), "{put:?}");
    let missing = find("GET manifest", "nope").expect("a span for the 404");
    assert_eq!(missing.attr("http.response.status_code"), Some("404"));

    // One access line per API request, with what an operator greps for.
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "berth_registry::access").collect();
    let api: Vec<_> = access.iter().filter(|l| l["fields"]["route"] != "health").collect();
    assert_eq!(api.len(), 5, "POST blob, PUT, GET, blob GET, GET 404: {access:#?}");
    let get =
        api.iter().find(|l| l["fields"]["path"] == "/v2/traced/app/manifests/v1" && l["fields"]["method"] == "GET");
    let get = get.expect("the pull's line");
    assert_eq!(get["level"], "INFO");
    assert_eq!(get["fields"]["status"], 200);
    assert_eq!(get["fields"]["route"], "manifest");
    assert!(get["fields"]["bytes_out"].as_u64().unwrap() > 100);
    assert!(get["fields"]["duration_ms"].as_f64().is_some());
    assert_eq!(get["fields"]["complete"], true);
    // A streamed blob is complete at its announced length, which hyper stops at.
    let pulled = api.iter().find(|l| l["fields"]["route"] == "blob").expect("the blob pull's line");
    assert_eq!((&pulled["fields"]["bytes_out"], &pulled["fields"]["complete"]), (&2.into(), &true.into()));
    let blob = api.iter().find(|l| l["fields"]["method"] == "POST").unwrap();
    assert_eq!(blob["fields"]["bytes_in"], 2);
    assert_eq!(blob["fields"]["status"], 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_endpoint_nothing_is_sent_not_even_to_the_default_one() {
    // The default OTLP/HTTP endpoint: an exporter made by mistake would post here.
    let collector = Collector::default();
    collector.serve("127.0.0.1:4318").await;
    let server = Server::start(&[("OTEL_SERVICE_NAME", "berth-under-test")]);
    server.round_trip().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = server.stop();
    assert!(collector.requests.lock().unwrap().is_empty(), "spans were sent with no endpoint configured");
    assert!(lines.iter().any(|l| l["target"] == "berth_registry::access"), "the process ran and logged");

    // And switched off explicitly, with an endpoint set.
    let server =
        Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_SDK_DISABLED", "true")]);
    server.round_trip().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    assert!(collector.requests.lock().unwrap().is_empty(), "OTEL_SDK_DISABLED=true still sent spans");

    // Sampled out: requests make no spans, so none are sent.
    let server = Server::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_TRACES_SAMPLER", "always_off"),
    ]);
    server.round_trip().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    assert!(collector.requests.lock().unwrap().is_empty(), "always_off still sent spans");
}

#[test]
fn a_protocol_that_is_not_built_in_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .args(["--listen", "127.0.0.1:0", "--root", "/nonexistent/never"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http/json") && stderr.contains("grpc"), "{stderr}");
}

/// Runs a round trip against a registry exporting over gRPC to `endpoint`
/// (with `extra` in its environment) and says whether its spans reached
/// `collector` while it ran (within 5 s), then checks what arrived.
async fn round_trip_over_grpc(collector: &Collector, endpoint: &str, extra: &[(&str, &str)]) -> bool {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "berth-over-grpc"),
    ];
    env.extend_from_slice(extra);
    let server = Server::start(&env);
    server.round_trip().await;
    // Sent in batches while the process runs, not only at its stop.
    let pulled = |spans: &[Received]| spans.iter().any(|s| s.name == "GET manifest");
    for _ in 0..100 {
        if pulled(&collector.spans()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = pulled(&collector.spans());
    server.stop();
    if arrived {
        let spans = collector.spans();
        let pull = spans.iter().find(|s| s.name == "GET manifest" && s.attr("reference") == Some("v1"));
        let pull = pull.unwrap_or_else(|| panic!("no request span over gRPC: {spans:#?}"));
        assert_eq!((pull.attr("repository"), pull.service.as_str()), (Some("traced/app"), "berth-over-grpc"));
        let storage = spans.iter().find(|s| s.name == "tag_manifest" && s.trace == pull.trace);
        assert_eq!(storage.map(|s| &s.parent), Some(&pull.id), "the storage span under the request's: {spans:#?}");
    }
    arrived
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_grpc_collector_when_the_protocol_is_grpc() {
    let collector = Collector::default();
    let addr = collector.serve_grpc(None).await;
    assert!(round_trip_over_grpc(&collector, &format!("http://{addr}"), &[]).await, "no span arrived over gRPC");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_collector_over_tls_is_trusted_through_the_systems_roots_and_only_then() {
    let (ca, cert, key) = test_certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let collector = Collector::default();
    let addr = collector.serve_grpc(Some((&cert, &key))).await;
    let endpoint = format!("https://localhost:{}", addr.port());
    // Its CA unknown to the system, the collector is not trusted.
    assert!(!round_trip_over_grpc(&collector, &endpoint, &[("SSL_CERT_FILE", "/dev/null")]).await);
    assert!(collector.requests.lock().unwrap().is_empty(), "spans went to an untrusted collector");
    // Known through SSL_CERT_FILE, it gets the spans.
    let trusted = [("SSL_CERT_FILE", ca_file.to_str().unwrap())];
    assert!(round_trip_over_grpc(&collector, &endpoint, &trusted).await, "no span arrived over gRPC with TLS");
}

/// A test CA's certificate, and a certificate for `localhost` it signed with its key (PEM).
fn test_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "berth telemetry test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A `traceparent` header of `trace`, its caller's span `parent`, sampled or not.
fn traceparent(trace: &str, parent: &str, sampled: bool) -> String {
    format!("00-{trace}-{parent}-{}", if sampled { "01" } else { "00" })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_inside_a_callers_trace_continues_it_as_the_caller_sampled_it() {
    let collector = Collector::default();
    let endpoint = format!("http://{}", collector.serve("127.0.0.1:0").await);
    let (caller, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let unsampled = "0af7651916cd43dd8448eb211c80319c";

    // The default sampler (parentbased_always_on) follows the caller.
    let server = Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    server.ready().await;
    assert_eq!(server.pull("traced/app", "sampled", Some(&traceparent(caller, parent, true))).await, 404);
    assert_eq!(server.pull("traced/app", "unsampled", Some(&traceparent(unsampled, parent, false))).await, 404);
    assert_eq!(server.pull("traced/app", "malformed", Some("00-xyz-00f067aa0ba902b7-01")).await, 404);
    assert_eq!(server.pull("traced/app", "alone", None).await, 404);
    server.stop();
    let spans = collector.spans();
    let request =
        |reference: &str| spans.iter().find(|s| s.name == "GET manifest" && s.attr("reference") == Some(reference));
    let continued = request("sampled").unwrap_or_else(|| panic!("no span for the sampled caller: {spans:#?}"));
    assert_eq!((continued.trace.as_str(), continued.parent.as_str()), (caller, parent), "{continued:?}");
    let storage = spans.iter().find(|s| s.name == "tag_manifest" && s.attr("reference") == Some("sampled"));
    assert_eq!(storage.map(|s| (&s.trace, &s.parent)), Some((&continued.trace, &continued.id)), "{spans:#?}");
    assert!(request("unsampled").is_none(), "the caller did not sample its trace: {spans:#?}");
    assert!(spans.iter().all(|s| s.trace != unsampled), "nothing of the unsampled trace is exported");
    let malformed = request("malformed").expect("a malformed header starts a trace of its own");
    assert!(malformed.parent.is_empty() && malformed.trace != caller, "{malformed:?}");
    assert!(request("alone").is_some_and(|s| s.parent.is_empty()), "a request with no caller is a root");

    // Without parentbased_ the configured sampler decides alone; with it, the caller.
    collector.requests.lock().unwrap().clear();
    let server = Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_TRACES_SAMPLER", "always_off")]);
    server.ready().await;
    server.pull("traced/app", "off", Some(&traceparent(caller, parent, true))).await;
    server.stop();
    let server =
        Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_TRACES_SAMPLER", "parentbased_always_off")]);
    server.ready().await;
    server.pull("traced/app", "followed", Some(&traceparent(caller, parent, true))).await;
    server.pull("traced/app", "root", None).await;
    server.stop();
    let spans = collector.spans();
    let references: Vec<_> =
        spans.iter().filter(|s| s.name == "GET manifest").filter_map(|s| s.attr("reference")).collect();
    assert_eq!(references, ["followed"], "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirrors_upstream_fetch_carries_the_trace_to_the_upstream() {
    let collector = Collector::default();
    let endpoint = format!("http://{}", collector.serve("127.0.0.1:0").await);
    let upstream = Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_SERVICE_NAME", "upstream")]);
    upstream.round_trip().await;
    let mirror = Server::start_with(
        &format!("mirrors: [{{prefix: up, url: \"{}\"}}]", upstream.base),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_SERVICE_NAME", "mirror")],
    );
    mirror.ready().await;
    let (caller, parent) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    assert_eq!(mirror.pull("up/traced/app", "v1", Some(&traceparent(caller, parent, true))).await, 200);
    mirror.stop();
    upstream.stop();
    let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace == caller).collect();
    let find = |service: &str, name: &str| spans.iter().find(|s| s.service == service && s.name == name);
    let pull = find("mirror", "GET manifest").unwrap_or_else(|| panic!("the mirror's request span: {spans:#?}"));
    assert_eq!(pull.parent, parent);
    let fetch = find("mirror", "GET upstream").unwrap_or_else(|| panic!("the mirror's upstream fetch: {spans:#?}"));
    assert_eq!(fetch.parent, pull.id, "the fetch is part of the pull");
    assert_eq!(fetch.attr("http.response.status_code"), Some("200"));
    assert_eq!(fetch.attr("repository"), Some("traced/app"));
    let served = spans.iter().find(|s| s.service == "upstream" && s.name == "GET manifest" && s.parent == fetch.id);
    let served = served.unwrap_or_else(|| panic!("the upstream's span, child of the fetch: {spans:#?}"));
    assert_eq!(served.attr("reference"), Some("v1"));
}
