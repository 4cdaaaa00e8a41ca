//! HTTPS with real sockets and real rustls on both ends: certificates from a
//! test CA, HTTP/2 through ALPN, certificate rotation while a download runs,
//! refused key pairs, and plain HTTP sent to the TLS port.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use berth_registry::Config;
use berth_registry::config::TlsConfig;
use berth_registry::digest::{Algorithm, Digest};
use futures_util::StreamExt;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate authority.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, with a fresh key.
    fn leaf(&self) -> Leaf {
        let issuer: &Issuer<'static, KeyPair> = &self.0;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "berth test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), ca: self.der() }
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    /// The certificate of the CA that signed it.
    ca: CertificateDer<'static>,
}

/// Replaces `path` atomically, as a reader must never see half a file.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A registry serving HTTPS from `cert.pem` and `key.pem` in a temporary directory.
struct TlsRegistry {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl TlsRegistry {
    async fn start(leaf: &Leaf) -> TlsRegistry {
        TlsRegistry::with(leaf, |_| {}).await
    }

    async fn with(leaf: &Leaf, adjust: impl FnOnce(&mut Config)) -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        replace(&dir.path().join("cert.pem"), &leaf.cert_pem);
        replace(&dir.path().join("key.pem"), &leaf.key_pem);
        let mut config = tls_config(dir.path(), dir.path());
        adjust(&mut config);
        let (addr, stop) = common::spawn(config).await;
        wait_until_served(addr, leaf).await;
        TlsRegistry { addr, dir, _stop: stop }
    }

    /// Installs a new certificate and key (either may be left as it is).
    fn install(&self, cert_pem: Option<&str>, key_pem: Option<&str>) {
        if let Some(cert) = cert_pem {
            replace(&self.dir.path().join("cert.pem"), cert);
        }
        if let Some(key) = key_pem {
            replace(&self.dir.path().join("key.pem"), key);
        }
    }
}

/// Waits until the server presents `leaf` (it reads its files when its task runs).
async fn wait_until_served(addr: SocketAddr, leaf: &Leaf) {
    let config = client_config(std::slice::from_ref(&leaf.ca), H1);
    wait_for_certificate(addr, config, &leaf.der, Duration::from_secs(10)).await;
}

/// A config serving TLS from `<certs>/cert.pem` and `<certs>/key.pem`, storing under `root`.
fn tls_config(certs: &Path, root: &Path) -> Config {
    let mut config = Config::default();
    config.storage.root = root.join("storage");
    config.tls = Some(TlsConfig { cert_file: certs.join("cert.pem"), key_file: certs.join("key.pem") });
    config
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

async fn connect_to(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let handshake = TlsConnector::from(config).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), handshake).await.expect("the TLS handshake finishes")
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    connect_to(TcpStream::connect(addr).await?, config, name).await
}

fn peer_certificate(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("the server presented a certificate")[0].clone().into_owned()
}

/// An HTTP connection over TLS, speaking whatever ALPN chose.
enum Http {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Http {
    async fn over(tls: TlsStream<TcpStream>) -> Http {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(connection);
            Http::H2(send)
        } else {
            let (send, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Http::H1(send)
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Vec<u8>) -> Response<hyper::body::Incoming> {
        let request = Request::builder().method(method).header("content-length", body.len());
        let request = match self {
            Http::H1(_) => request.uri(path).header("host", "localhost"),
            Http::H2(_) => request.uri(format!("https://localhost{path}")),
        };
        let request = request.body(Body::from(body)).unwrap();
        let response = match self {
            Http::H1(send) => send.send_request(request).await,
            Http::H2(send) => send.send_request(request).await,
        };
        response.expect("a response")
    }

    async fn get(&mut self, path: &str) -> Response<hyper::body::Incoming> {
        self.send("GET", path, Vec::new()).await
    }
}

async fn body_bytes(response: Response<hyper::body::Incoming>) -> Vec<u8> {
    axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await.unwrap().to_vec()
}

/// Pushes `bytes` as a blob of `repo` in one request and returns its digest.
async fn push_blob(addr: SocketAddr, roots: &[CertificateDer<'static>], repo: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let mut http = Http::over(connect(addr, client_config(roots, H1)).await.unwrap()).await;
    let response = http.send("POST", &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), bytes.to_vec()).await;
    let status = response.status();
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body_bytes(response).await));
    digest
}

/// Opens new connections until one presents `expected`, for at most `limit`.
async fn wait_for_certificate(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    expected: &CertificateDer<'_>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(tls) = connect(addr, config.clone()).await
            && peer_certificate(&tls) == *expected
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no new connection saw the new certificate within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_gets_the_api_and_others_fail_the_handshake() {
    let ca = Ca::new("berth test CA");
    let leaf = ca.leaf();
    let reg = TlsRegistry::start(&leaf).await;

    for name in [ServerName::try_from("localhost").unwrap(), ServerName::IpAddress(reg.addr.ip().into())] {
        let tcp = TcpStream::connect(reg.addr).await.unwrap();
        let tls = connect_to(tcp, client_config(&[ca.der()], H1), name.clone()).await.unwrap();
        assert_eq!(peer_certificate(&tls), leaf.der, "{name:?}");
        let response = Http::over(tls).await.get("/v2/").await;
        assert_eq!(response.status(), StatusCode::OK, "{name:?}");
    }

    let error = connect(reg.addr, client_config(&[], H1)).await.expect_err("a client that trusts no one");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let stranger = Ca::new("another CA");
    let error =
        connect(reg.addr, client_config(&[stranger.der()], H1)).await.expect_err("a client that trusts another CA");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn alpn_offers_http2_and_http1_1() {
    let ca = Ca::new("berth test CA");
    let reg = TlsRegistry::start(&ca.leaf()).await;

    let tls = connect(reg.addr, client_config(&[ca.der()], H2_AND_H1)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut http = Http::over(tls).await;
    assert!(matches!(http, Http::H2(_)));
    for _ in 0..2 {
        let response = http.get("/v2/").await;
        assert_eq!((response.status(), response.version()), (StatusCode::OK, Version::HTTP_2));
    }

    let tls = connect(reg.addr, client_config(&[ca.der()], H1)).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = Http::over(tls).await.get("/v2/").await;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, Version::HTTP_11));

    // Without ALPN the client speaks HTTP/1.1 by default, and is served.
    let tls = connect(reg.addr, client_config(&[ca.der()], &[])).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let response = Http::over(tls).await.get("/v2/").await;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, Version::HTTP_11));
}

/// Kubernetes' layout of a mounted Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<timestamp>/`; an update writes a new timestamped directory and
/// renames a new `..data` link over the old one.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: &Path, leaf: &Leaf) -> SecretVolume {
        let mut volume = SecretVolume { dir: dir.to_path_buf(), generation: 0 };
        volume.update(leaf);
        std::os::unix::fs::symlink("..data/tls.crt", dir.join("cert.pem")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.join("key.pem")).unwrap();
        volume
    }

    fn update(&mut self, leaf: &Leaf) {
        self.generation += 1;
        let name = format!("..2026_01_01_00_00_0{}.000000001", self.generation);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(self.dir.join(&name).join("tls.key"), &leaf.key_pem).unwrap();
        std::os::unix::fs::symlink(&name, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
    }
}

/// A client whose socket buffers little, so that most of a large response is
/// still on the server's side while the client does not read.
async fn slow_connection(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    connect_to(tcp, config, ServerName::try_from("localhost").unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_open_ones_finish() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old, new) = (old_ca.leaf(), new_ca.leaf());
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(dir.path(), &old);
    let config = tls_config(dir.path(), dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(berth_registry::server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    wait_until_served(addr, &old).await;
    let both = [old_ca.der(), new_ca.der()];
    let blob = common::content(7, 6 << 20);
    let digest = push_blob(addr, &both, "rotation/test", &blob).await;

    // Connection A starts the download, reads a little and stops reading.
    let tls = slow_connection(addr, client_config(&[old_ca.der()], H1)).await;
    assert_eq!(peer_certificate(&tls), old.der, "connection A before the rotation");
    let mut a = Http::over(tls).await;
    let response = a.get(&format!("/v2/rotation/test/blobs/{digest}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = Body::new(response.into_body()).into_data_stream();
    let mut received = Vec::with_capacity(blob.len());
    while received.len() < 256 << 10 {
        received.extend_from_slice(&stream.next().await.expect("more of the blob").unwrap());
    }

    volume.update(&new);
    let took = wait_for_certificate(addr, client_config(&both, H2_AND_H1), &new.der, Duration::from_secs(8)).await;
    assert!(took < Duration::from_secs(6), "the new certificate took {took:?}");
    assert!(received.len() < blob.len() / 2, "connection A read {} bytes before the rotation", received.len());

    // Connection A finishes at its own pace, then sends one more request.
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.unwrap());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(received.len(), blob.len());
    assert_eq!(Digest::of(Algorithm::Sha256, &received), digest, "connection A's download");
    assert_eq!(a.get("/v2/").await.status(), StatusCode::OK, "connection A after the rotation");

    // A client that trusts only the old CA can no longer connect.
    let error = connect(addr, client_config(&[old_ca.der()], H1)).await.expect_err("the old CA no longer applies");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_certificate_without_its_key_is_not_taken_until_the_key_arrives() {
    let ca = Ca::new("berth test CA");
    let (old, new) = (ca.leaf(), ca.leaf());
    let reg = TlsRegistry::start(&old).await;
    let client = client_config(&[ca.der()], H1);

    // The certificate is renewed, the key not yet: the pair does not match.
    reg.install(Some(&new.cert_pem), None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let tls = connect(reg.addr, client.clone()).await.expect("the old pair keeps being served");
        assert_eq!(peer_certificate(&tls), old.der);
        assert_eq!(Http::over(tls).await.get("/v2/").await.status(), StatusCode::OK);
    }

    // The key follows: the new pair is served.
    reg.install(None, Some(&new.key_pem));
    wait_for_certificate(reg.addr, client, &new.der, Duration::from_secs(8)).await;
}

#[tokio::test]
async fn serve_refuses_to_start_with_an_unusable_certificate_or_key() {
    let ca = Ca::new("berth test CA");
    let (one, other) = (ca.leaf(), ca.leaf());
    let cases = [
        (one.cert_pem.as_str(), other.key_pem.as_str(), "does not match the certificate"),
        ("", one.key_pem.as_str(), "no PEM certificate found"),
        (one.cert_pem.as_str(), "", "no usable private key"),
        (one.cert_pem.as_str(), one.cert_pem.as_str(), "no usable private key"),
    ];
    for (cert, key, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        replace(&dir.path().join("cert.pem"), cert);
        replace(&dir.path().join("key.pem"), key);
        let error = serve_error(tls_config(dir.path(), dir.path())).await;
        assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        assert!(!dir.path().join("storage").exists(), "the storage was opened before the certificate was checked");
    }
    let dir = tempfile::tempdir().unwrap();
    let error = serve_error(tls_config(dir.path(), dir.path())).await;
    assert!(error.contains("reading") && error.contains("cert.pem"), "{error}");
}

/// Starts a server that must fail, and checks it accepted nothing.
async fn serve_error(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = berth_registry::server::serve(listener, config, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(10), served).await.expect("serve returns");
    assert!(TcpStream::connect(addr).await.is_err(), "the port is still open");
    result.expect_err("serve must fail")
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_closed_quickly_and_frees_its_slot() {
    let ca = Ca::new("berth test CA");
    let reg = TlsRegistry::with(&ca.leaf(), |c| {
        c.limits.max_connections = 1;
        c.limits.header_timeout_secs = 30;
    })
    .await;

    let started = Instant::now();
    let mut plain = TcpStream::connect(reg.addr).await.unwrap();
    plain.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the plain-HTTP connection was kept open");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!answer.starts_with(b"HTTP/"), "answered in plain HTTP: {:?}", String::from_utf8_lossy(&answer));

    // The only connection slot is free again.
    let client = client_config(&[ca.der()], H1);
    let mut served = false;
    for _ in 0..20 {
        if let Ok(tls) = connect(reg.addr, client.clone()).await {
            served = Http::over(tls).await.get("/v2/").await.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the plain-HTTP client's slot was not freed");
}

#[tokio::test]
async fn a_slow_handshake_neither_blocks_others_nor_outlives_the_header_timeout() {
    let ca = Ca::new("berth test CA");
    let reg = TlsRegistry::with(&ca.leaf(), |c| c.limits.header_timeout_secs = 2).await;

    // Half a TLS record header, then nothing.
    let mut stalled = TcpStream::connect(reg.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03]).await.unwrap();

    let started = Instant::now();
    let tls = connect(reg.addr, client_config(&[ca.der()], H1)).await.expect("served next to a stalled handshake");
    assert_eq!(Http::over(tls).await.get("/v2/").await.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());

    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), stalled.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the stalled handshake was not cut off");
}
