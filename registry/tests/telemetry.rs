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
    /// The content types of the OTLP/HTTP requests, in order.
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn serve(&self, addr: &str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("binding the collector stand-in");
        let local = listener.local_addr().unwrap();
        let app = self.http();
        tokio::spawn(async move { axum::serve(listener, app).await });
        local
    }

    /// OTLP/HTTP, protobuf or JSON as the content type says.
    fn http(&self) -> axum::Router {
        let (requests, content_types) = (self.requests.clone(), self.content_types.clone());
        axum::Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: Bytes| async move {
                let content_type = headers.get("content-type").and_then(|t| t.to_str().ok()).unwrap_or_default();
                content_types.lock().unwrap().push(content_type.to_owned());
                let decoded = if content_type == "application/json" {
                    serde_json::from_slice(&body).expect("OTLP JSON")
                } else {
                    ExportTraceServiceRequest::decode(body).expect("OTLP protobuf")
                };
                requests.lock().unwrap().push(decoded);
                ""
            }),
        )
    }

    /// OTLP/HTTP over TLS, with `pki`'s server certificate, asking for a
    /// client certificate its CA signed.
    async fn serve_https(&self, pki: &Pki) -> std::net::SocketAddr {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the HTTPS stand-in");
        let local = tcp.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
        let app = self.http();
        tokio::spawn(async move { axum::serve(TlsListener { tcp, acceptor }, app).await });
        local
    }

    /// The same over gRPC (OTLP's `TraceService/Export`); with `pki`, over
    /// TLS with its server certificate, asking for a client certificate.
    async fn serve_grpc(&self, pki: Option<&Pki>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the gRPC stand-in");
        let local = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some(pki) = pki {
            let identity = tonic::transport::Identity::from_pem(&pki.server.0, &pki.server.1);
            let client_ca = tonic::transport::Certificate::from_pem(&pki.ca);
            let tls = tonic::transport::ServerTlsConfig::new().identity(identity).client_ca_root(client_ca);
            server = server.tls_config(tls).unwrap();
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

/// The test image: an OCI manifest of the empty config and no layers.
const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

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
        // The system's roots are the machine's, unless a test says otherwise.
        command.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
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

    /// Pushes the test image's manifest (its config blob already there) as `traced/app:{tag}`.
    async fn tag(&self, tag: &str) {
        let put = reqwest::Client::new()
            .put(format!("{}/v2/traced/app/manifests/{tag}", self.base))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201);
    }

    async fn round_trip(&self) {
        let client = reqwest::Client::new();
        self.ready().await;
        let blob = client
            .post(format!("{}/v2/traced/app/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", self.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), 201);
        self.tag("v1").await;
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
fn an_unknown_protocol_half_a_client_identity_or_a_ca_file_without_a_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, der) = (dir.path().join("cert.pem"), dir.path().join("ca.der"));
    std::fs::write(&cert, Pki::new().client.0).unwrap();
    std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a]).unwrap();
    let refused = |var: &str, value: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            command.env_remove(k);
        }
        let out = command
            .args(["--listen", "127.0.0.1:0", "--root", "/nonexistent/never"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift");
    assert!(stderr.contains("thrift") && stderr.contains("http/json"), "{stderr}");
    let stderr = refused("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.to_str().unwrap());
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"), "{stderr}");
    let stderr = refused("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
    let stderr = refused("OTEL_EXPORTER_OTLP_CERTIFICATE", der.to_str().unwrap());
    assert!(stderr.contains("ca.der holds no PEM certificate"), "{stderr}");
}

/// Runs a round trip against a registry exporting with `env` (endpoint,
/// protocol, TLS files) and says whether its spans reached `collector` while
/// it ran; checks what arrived when they did.
async fn round_trip_exporting(collector: &Collector, env: &[(&str, &str)], expected: bool) -> bool {
    let mut env = env.to_vec();
    env.push(("OTEL_SERVICE_NAME", "berth-exporting"));
    let server = Server::start(&env);
    server.round_trip().await;
    // Sent in batches while the process runs, not only at its stop: given
    // 30 s when they should come, 2 s to show they do not (and the stop's flush).
    let pulled = |spans: &[Received]| spans.iter().any(|s| s.name == "GET manifest");
    for _ in 0..if expected { 600 } else { 40 } {
        if pulled(&collector.spans()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = pulled(&collector.spans());
    let lines = server.stop();
    if !arrived {
        let failed = |l: &&serde_json::Value| {
            l["level"] == "WARN" && l["fields"]["message"].as_str().is_some_and(|m| m.contains("OTLP collector failed"))
        };
        assert!(lines.iter().any(|l| failed(&l)), "an export that fails is logged: {lines:#?}");
    }
    if arrived {
        let spans = collector.spans();
        let pull = spans.iter().find(|s| s.name == "GET manifest" && s.attr("reference") == Some("v1"));
        let pull = pull.unwrap_or_else(|| panic!("no request span: {spans:#?}"));
        assert_eq!((pull.attr("repository"), pull.service.as_str()), (Some("traced/app"), "berth-exporting"));
        let storage = spans.iter().find(|s| s.name == "tag_manifest" && s.trace == pull.trace);
        assert_eq!(storage.map(|s| &s.parent), Some(&pull.id), "the storage span under the request's: {spans:#?}");
    }
    arrived
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_collector_over_grpc_or_json_when_asked() {
    let collector = Collector::default();
    let grpc = format!("http://{}", collector.serve_grpc(None).await);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", grpc.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    assert!(round_trip_exporting(&collector, &env, true).await, "no span arrived over gRPC");

    let collector = Collector::default();
    let http = format!("http://{}", collector.serve("127.0.0.1:0").await);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", http.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
    assert!(round_trip_exporting(&collector, &env, true).await, "no span arrived as JSON");
    let types = collector.content_types.lock().unwrap().clone();
    assert!(!types.is_empty() && types.iter().all(|t| t == "application/json"), "{types:?}");
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

/// A berth upstream holding the test image as `traced/app:v1` and `:quiet`,
/// and a berth mirroring it under `up/` with `sampler`, both exporting to
/// `collector` as the services `upstream` and `mirror`.
async fn mirror_and_upstream(collector: &Collector, sampler: &str) -> (Server, Server) {
    let endpoint = format!("http://{}", collector.serve("127.0.0.1:0").await);
    // The upstream samples as its callers do (the default).
    let upstream = Server::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_SERVICE_NAME", "upstream")]);
    upstream.round_trip().await;
    upstream.tag("quiet").await;
    let mirror = Server::start_with(
        &format!("mirrors: [{{prefix: up, url: \"{}\"}}]", upstream.base),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "mirror"),
            ("OTEL_TRACES_SAMPLER", sampler),
        ],
    );
    mirror.ready().await;
    (mirror, upstream)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirrors_upstream_fetch_carries_the_trace_to_the_upstream() {
    let collector = Collector::default();
    let (mirror, upstream) = mirror_and_upstream(&collector, "parentbased_always_on").await;
    let (caller, parent) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    assert_eq!(mirror.pull("up/traced/app", "v1", Some(&traceparent(caller, parent, true))).await, 200);
    mirror.stop();
    upstream.stop();
    let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace == caller).collect();
    let find = |service: &str, name: &str| spans.iter().find(|s| s.service == service && s.name == name);
    let pull = find("mirror", "GET manifest").unwrap_or_else(|| panic!("the mirror's request span: {spans:#?}"));
    assert_eq!(pull.parent, parent);
    let fetch = find("mirror", "mirror fetch").unwrap_or_else(|| panic!("the mirror's fetch: {spans:#?}"));
    assert_eq!(fetch.parent, pull.id, "the fetch is part of the pull");
    let get = find("mirror", "GET upstream").unwrap_or_else(|| panic!("the mirror's upstream request: {spans:#?}"));
    assert_eq!(get.parent, fetch.id, "the upstream request is the fetch's");
    assert_eq!(get.attr("http.response.status_code"), Some("200"));
    assert_eq!(get.attr("repository"), Some("traced/app"));
    let served = spans.iter().find(|s| s.service == "upstream" && s.name == "GET manifest" && s.parent == get.id);
    let served = served.unwrap_or_else(|| panic!("the upstream's span, child of the upstream request: {spans:#?}"));
    assert_eq!(served.attr("reference"), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_that_does_not_trace_a_pull_tells_its_upstream_not_to_trace_the_fetch() {
    let collector = Collector::default();
    let (mirror, upstream) = mirror_and_upstream(&collector, "always_off").await;
    assert_eq!(mirror.pull("up/traced/app", "quiet", None).await, 200);
    mirror.stop();
    upstream.stop();
    let spans = collector.spans();
    let fetched = spans.iter().filter(|s| s.service == "upstream" && s.attr("reference") == Some("quiet"));
    let fetched: Vec<_> = fetched.filter(|s| s.name != "PUT manifest").collect();
    assert!(fetched.is_empty(), "the upstream traced a fetch the mirror did not: {fetched:#?}");
    assert!(spans.iter().any(|s| s.name == "PUT manifest"), "the upstream exports its own requests: {spans:#?}");
}

/// Against a collector with TLS that asks for a client certificate, over
/// `protocol` at `endpoint`: the system's roots (`SSL_CERT_FILE`) or the
/// CA file make it trusted, and berth presents its client certificate.
async fn mutual_tls(collector: &Collector, protocol: &str, endpoint: &str, pki: &Pki) {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (file("ca.pem", &pki.ca), file("cert.pem", &pki.client.0), file("key.pem", &pki.client.1));
    // The system's roots, as far as the test's processes know: another CA.
    let other = file("other.pem", &Pki::new().ca);
    let empty = file("empty.pem", "");
    let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)];
    let with = |extra: &[(&'static str, &str)], files: &[(&'static str, &str)]| -> Vec<(String, String)> {
        let (extra, files) = (extra.iter().map(|(k, v)| (*k, *v)), files.iter().map(|(k, v)| (*k, *v)));
        base.iter().copied().chain(extra).chain(files).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    };
    let (cert, key) =
        (("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()));
    let no_roots = ("SSL_CERT_FILE", other.as_str());
    let ca_file = ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str());
    let cases = [
        ("a collector whose CA is unknown", with(&[no_roots], &[cert, key]), false),
        ("a client without a certificate", with(&[no_roots], &[ca_file]), false),
        ("the CA file and the client certificate", with(&[no_roots], &[ca_file, cert, key]), true),
        ("the CA among the system's roots", with(&[], &[("SSL_CERT_FILE", ca.as_str()), cert, key]), true),
        (
            "the CA file, the system having no roots",
            with(&[], &[("SSL_CERT_FILE", empty.as_str()), ca_file, cert, key]),
            true,
        ),
    ];
    for (case, env, delivered) in cases {
        collector.requests.lock().unwrap().clear();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(round_trip_exporting(collector, &env, delivered).await, delivered, "{protocol}: {case}");
        if !delivered {
            assert!(collector.requests.lock().unwrap().is_empty(), "{protocol}: {case}: spans arrived after all");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_collector_with_mutual_tls_gets_spans_from_a_client_that_trusts_it_and_has_a_certificate() {
    let pki = Pki::new();
    let collector = Collector::default();
    let endpoint = format!("https://localhost:{}", collector.serve_grpc(Some(&pki)).await.port());
    mutual_tls(&collector, "grpc", &endpoint, &pki).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_collector_with_mutual_tls_gets_spans_from_a_client_that_trusts_it_and_has_a_certificate() {
    let pki = Pki::new();
    let collector = Collector::default();
    let endpoint = format!("https://localhost:{}", collector.serve_https(&pki).await.port());
    mutual_tls(&collector, "http/protobuf", &endpoint, &pki).await;
}

/// A test CA, a server certificate for `localhost` and a client certificate
/// it signed, as PEM (certificate, key).
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "berth telemetry test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, usage| {
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            (params.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        };
        let server = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf("berth-registry", ExtendedKeyUsagePurpose::ClientAuth);
        Pki { ca: ca.pem(), server, client }
    }

    /// A rustls server configuration requiring a client certificate the CA signed.
    fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
        let chain = vec![CertificateDer::from_pem_slice(self.server.0.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.server.1.as_bytes()).unwrap();
        rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(chain, key).unwrap()
    }
}

/// TLS connections for `axum::serve`; a failed handshake is dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
