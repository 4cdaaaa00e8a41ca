//! A real upstream registry for the pull-through cache tests: CNCF Distribution
//! v3.1.1 on a free loopback port, behind TLS from a per-upstream test CA, with
//! no auth, Basic auth (htpasswd) or Docker token auth. For token auth the token
//! server runs in the test process, on its own thread, signing with a key whose
//! certificate the same CA issued.
//!
//! Requests are counted from Distribution's access log (combined log format on
//! its stdout, kept in a file across restarts). The harness's own requests (pushes,
//! readiness probes) carry [`HARNESS_AGENT`] and are left out of every count.
//!
//! The binary is `BERTH_DISTRIBUTION`, or the pinned build `tests/lib/common.sh`
//! installs (`~/.cache/berth/gobin/registry-v3.1.1/registry`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_registry::digest::{Algorithm, Digest};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SigningKey};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use super::{OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};

pub const USERNAME: &str = "berth-upstream";
pub const PASSWORD: &str = "upstream-secret";
/// The `service` of the token challenge and the `aud` of every token.
pub const SERVICE: &str = "berth-upstream";
pub const ISSUER: &str = "berth-upstream-token-issuer";
/// The user agent of the harness's own requests, which the counts leave out.
pub const HARNESS_AGENT: &str = "berth-upstream-harness";
/// Uncompressed tar: the layers are real tar archives, not gzip'd.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const VERSION_DIR: &str = "registry-v3.1.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamAuth {
    None,
    Basic,
    Token,
}

pub struct Upstream {
    /// First, so the process is gone before its directory is removed.
    process: Option<Process>,
    pub auth: UpstreamAuth,
    pub username: String,
    pub password: String,
    port: u16,
    /// CA, certificates, config, storage, htpasswd and logs.
    dir: tempfile::TempDir,
    ca: Arc<Ca>,
    token: Option<TokenServer>,
    /// Trusts the CA and identifies itself as [`HARNESS_AGENT`].
    harness: Client,
    markers: AtomicU64,
}

/// The path of the Distribution binary.
pub fn distribution_binary() -> PathBuf {
    let path = std::env::var_os("BERTH_DISTRIBUTION").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/berth/gobin")
            .join(VERSION_DIR)
            .join("registry")
    });
    assert!(path.is_file(), "needs Distribution: run tests/run, or set BERTH_DISTRIBUTION to a registry binary");
    path
}

impl Upstream {
    pub async fn start(auth: UpstreamAuth) -> Upstream {
        let dir = tempfile::Builder::new().prefix("berth-upstream-").tempdir().unwrap();
        let ca = Arc::new(Ca::new());
        let (cert, key) = ca.server_cert();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), &key).unwrap();
        let token = (auth == UpstreamAuth::Token).then(|| TokenServer::start(ca.clone()));
        let auth_yaml = match &token {
            None if auth == UpstreamAuth::None => String::new(),
            None => {
                // The lowest cost bcrypt allows: every request checks the password.
                let hash = bcrypt::hash(PASSWORD, 4).unwrap();
                std::fs::write(dir.path().join("htpasswd"), format!("{USERNAME}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: {SERVICE}\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            Some(t) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.realm,
                dir.path().join("ca.pem").display()
            ),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-upstream-test-secret\n  tls:\n    certificate: {d}/cert.pem\n    key: {d}/key.pem\n\
             {auth_yaml}"
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let harness = client_trusting(&ca.pem(), HARNESS_AGENT);
        let mut upstream = Upstream {
            auth,
            username: USERNAME.into(),
            password: PASSWORD.into(),
            port,
            dir,
            ca,
            token,
            process: None,
            harness,
            markers: AtomicU64::new(0),
        };
        upstream.start_again().await;
        upstream
    }

    /// Runs the binary again on the same port, storage and auth (after `stop`).
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "the upstream is running");
        let d = self.dir.path();
        let mut command = Command::new(distribution_binary());
        command
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(append(d.join("access.log")))
            .stderr(append(d.join("registry.log")));
        self.process = Some(Process::spawn(command));
        self.wait_ready().await;
    }

    /// Kills the binary and waits for it: connections are refused until `start_again`.
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as image references name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client that trusts the CA and whose requests are counted.
    pub fn client(&self) -> Client {
        client_trusting(&self.ca.pem(), "berth-upstream-test-client")
    }

    /// The token endpoint (token auth only).
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(|t| t.realm.clone())
    }

    /// Token requests received, answered or refused.
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.log.requests.load(Ordering::SeqCst))
    }

    /// The scopes of the tokens granted, in order (one entry per scope).
    pub fn token_scopes(&self) -> Vec<String> {
        self.token.as_ref().map_or_else(Vec::new, |t| t.log.scopes.lock().unwrap().clone())
    }

    /// A token for `scope` (`repository:NAME:pull,push`) minted without a request,
    /// so it is not counted.
    pub fn mint_token(&self, scope: &str) -> String {
        self.token.as_ref().expect("token auth").signer.mint(USERNAME, &[scope])
    }

    /// The `authorization` header the harness sends for `repo` (push and pull).
    fn authorization(&self, repo: &str) -> Option<String> {
        match self.auth {
            UpstreamAuth::None => None,
            UpstreamAuth::Basic => Some(format!("Basic {}", STANDARD.encode(format!("{USERNAME}:{PASSWORD}")))),
            UpstreamAuth::Token => {
                Some(format!("Bearer {}", self.mint_token(&format!("repository:{repo}:pull,push,delete"))))
            }
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = || self.process.as_ref().is_some_and(|p| p.exited.load(Ordering::SeqCst));
        while Instant::now() < deadline && !exited() {
            // Any HTTP answer (401 with auth) means it is serving.
            if self.harness.get(format!("{}/v2/", self.url())).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        panic!("Distribution did not answer on {}:\n{log}", self.url());
    }

    // ----- request accounting -----

    /// Every request the upstream logged, but the harness's own, oldest first.
    /// Waits first until requests already answered are in the log (see `settle`).
    pub async fn requests(&self) -> Vec<Logged> {
        self.settle().await;
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines().filter_map(Logged::parse).filter(|r| !r.user_agent.starts_with(HARNESS_AGENT)).collect()
    }

    /// GETs of `/v2/<any>/blobs/<digest>` answered with 200 or 206.
    pub async fn blob_gets(&self, digest: &Digest) -> usize {
        let suffix = format!("/blobs/{digest}");
        let served = |r: &Logged| r.method == "GET" && r.path.ends_with(&suffix) && matches!(r.status, 200 | 206);
        self.requests().await.iter().filter(|r| served(r)).count()
    }

    /// Manifest GETs that got past auth (any status but 401), by any reference.
    pub async fn manifest_gets(&self) -> usize {
        self.manifest_requests("GET", None).await
    }

    /// Manifest HEADs that got past auth (any status but 401), by any reference.
    pub async fn manifest_heads(&self) -> usize {
        self.manifest_requests("HEAD", None).await
    }

    /// Manifest requests with `method` that got past auth, for `reference` (a tag
    /// or digest) or for any.
    pub async fn manifest_requests(&self, method: &str, reference: Option<&str>) -> usize {
        let matches = |r: &Logged| {
            r.method == method
                && r.status != 401
                && r.manifest_reference().is_some_and(|got| reference.is_none_or(|want| got == want))
        };
        self.requests().await.iter().filter(|r| matches(r)).count()
    }

    /// Waits until every request answered so far is in the access log. Distribution
    /// writes a line after its handler returns, so a client can hold the whole
    /// response before the line exists. A marker request is sent and awaited in
    /// the log, then a short pause covers lines of other connections still on their way.
    pub async fn settle(&self) {
        if self.process.is_none() {
            return; // a stopped process has written everything
        }
        let marker = format!("{HARNESS_AGENT}-marker-{}", self.markers.fetch_add(1, Ordering::SeqCst));
        let sent = self.harness.get(format!("{}/v2/", self.url())).header("user-agent", &marker).send().await;
        if sent.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let quoted = format!("\"{marker}\"");
        while !std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default().contains(&quoted) {
            assert!(Instant::now() < deadline, "the marker request never reached the access log");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // ----- pushing -----

    /// Pushes a multi-arch image (an OCI index of linux/amd64 and linux/arm64),
    /// each platform with its own config and one tar layer per entry of
    /// `layer_sizes`, all content fresh, and tags the index `tag` (moving the
    /// tag if it existed).
    pub async fn push_image(&self, repo: &str, tag: &str, layer_sizes: &[usize]) -> PushedImage {
        static PUSHES: AtomicU64 = AtomicU64::new(0);
        let seed = PUSHES.fetch_add(1, Ordering::SeqCst) ^ u64::from(std::process::id()) << 32;
        let platforms: Vec<PlatformImage> = (["amd64", "arm64"].into_iter().enumerate())
            .map(|(i, architecture)| PlatformImage::build(architecture, seed.wrapping_mul(16) + i as u64, layer_sizes))
            .collect();
        let descriptors: Vec<Value> = (platforms.iter())
            .map(|p| {
                json!({"mediaType": OCI_MANIFEST, "digest": p.manifest.digest, "size": p.manifest.bytes.len(),
                       "platform": {"architecture": p.architecture, "os": "linux"}})
            })
            .collect();
        let index = Blob::new(OCI_INDEX, json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}));
        let image = PushedImage { repo: repo.into(), tag: tag.into(), index, platforms };
        self.upload(&image).await;
        image
    }

    /// Pushes the very blobs and manifests of `image` to `repo` (the same digests
    /// in another repository), tagging the index `tag`.
    pub async fn push_copy(&self, image: &PushedImage, repo: &str, tag: &str) -> PushedImage {
        let copy = PushedImage { repo: repo.into(), tag: tag.into(), ..image.clone() };
        self.upload(&copy).await;
        copy
    }

    /// Points `tag` at an image pushed before (the same index bytes).
    pub async fn retag(&self, image: &PushedImage, tag: &str) {
        self.put_manifest(&image.repo, tag, &image.index).await;
    }

    /// Blobs first, then each platform's manifest by digest, then the index by tag.
    async fn upload(&self, image: &PushedImage) {
        let repo = &image.repo;
        for p in &image.platforms {
            for blob in p.layers.iter().chain([&p.config]) {
                self.push_blob(repo, &blob.bytes).await;
            }
            self.put_manifest(repo, &p.manifest.digest.to_string(), &p.manifest).await;
        }
        self.put_manifest(repo, &image.tag, &image.index).await;
    }

    /// Deletes a manifest by digest (storage.delete is enabled).
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) {
        let r = self.send(Method::DELETE, repo, &format!("/v2/{repo}/manifests/{digest}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap_or_default());
    }

    fn send(&self, method: Method, repo: &str, path_or_url: &str) -> reqwest::RequestBuilder {
        let url = if path_or_url.starts_with("https://") { path_or_url.to_owned() } else { self.url() + path_or_url };
        let request = self.harness.request(method, url);
        match self.authorization(repo) {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }

    /// A two-step upload (POST, then PUT with the body): what Distribution supports.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) {
        let r = self.send(Method::POST, repo, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap_or_default());
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let digest = Digest::of(Algorithm::Sha256, bytes);
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .send(Method::PUT, repo, &format!("{location}{sep}digest={digest}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    }

    async fn put_manifest(&self, repo: &str, reference: &str, manifest: &Blob) {
        let r = self
            .send(Method::PUT, repo, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", manifest.media_type)
            .body(manifest.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    }
}

fn append(path: PathBuf) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

fn client_trusting(ca_pem: &str, agent: &str) -> Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    Client::builder().tls_certs_only([ca]).user_agent(agent).build().unwrap()
}

/// One line of the access log.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

impl Logged {
    /// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "referer" "agent"`
    fn parse(line: &str) -> Option<Logged> {
        let (_, rest) = line.split_once('"')?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split(' ');
        let (method, uri) = (request.next()?, request.next()?);
        let status = rest.split_whitespace().next()?.parse().ok()?;
        let user_agent = rest.trim_end().strip_suffix('"')?.rsplit_once('"')?.1;
        let path = uri.split_once('?').map_or(uri, |(p, _)| p);
        Some(Logged { method: method.into(), path: path.into(), status, user_agent: user_agent.into() })
    }

    /// The tag or digest of a `/v2/<name>/manifests/<reference>` request.
    pub fn manifest_reference(&self) -> Option<&str> {
        self.path.strip_prefix("/v2/")?.rsplit_once("/manifests/").map(|(_, reference)| reference)
    }
}

// ----- images -----

/// Content with its digest and media type, exactly as pushed.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, value: Value) -> Blob {
        Blob::raw(media_type, serde_json::to_vec(&value).unwrap())
    }

    fn raw(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob { media_type, digest: Digest::of(Algorithm::Sha256, &bytes), bytes }
    }
}

#[derive(Clone, Debug)]
pub struct PushedImage {
    pub repo: String,
    pub tag: String,
    pub index: Blob,
    /// amd64, then arm64.
    pub platforms: Vec<PlatformImage>,
}

#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub architecture: &'static str,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl PlatformImage {
    fn build(architecture: &'static str, seed: u64, layer_sizes: &[usize]) -> PlatformImage {
        let layers: Vec<Blob> = (layer_sizes.iter().enumerate())
            .map(|(i, &size)| {
                let file = super::content(seed.wrapping_mul(64) + i as u64, size);
                Blob::raw(OCI_LAYER_TAR, tar_of_one_file(&format!("layer-{i}.bin"), &file))
            })
            .collect();
        // Uncompressed layers: each diff_id is the layer's own digest.
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        let config = Blob::new(
            OCI_CONFIG,
            json!({"architecture": architecture, "os": "linux", "config": {"Env": [format!("SEED={seed}")]},
                   "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
        );
        let descriptor = |b: &Blob| json!({"mediaType": b.media_type, "digest": b.digest, "size": b.bytes.len()});
        let manifest = Blob::new(
            OCI_MANIFEST,
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(&config),
                   "layers": layers.iter().map(descriptor).collect::<Vec<_>>()}),
        );
        PlatformImage { architecture, manifest, config, layers }
    }
}

/// A ustar archive holding one regular file.
fn tar_of_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: usize) {
        let digits = format!("{value:0width$o}", width = field.len() - 1);
        field[..digits.len()].copy_from_slice(digits.as_bytes());
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len());
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..265].copy_from_slice(b"ustar\x0000");
    // The checksum is computed with its own field as spaces.
    header[148..156].fill(b' ');
    let sum: usize = header.iter().map(|&b| usize::from(b)).sum();
    octal(&mut header[148..155], sum);
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    tar
}

// ----- TLS -----

/// A test CA: it issues the servers' certificates and the token signing certificate.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "berth upstream test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    fn server_cert(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

// ----- the token server -----

/// Signs tokens with an Ed25519 key whose certificate the CA issued. The
/// certificate travels in the `x5c` header, which Distribution checks against its
/// `rootcertbundle` (the CA); Ed25519 signatures are already the raw 64 bytes a
/// JWS wants (ECDSA ones would need converting from DER).
struct Signer {
    key: KeyPair,
    cert_der: Vec<u8>,
}

impl Signer {
    fn new(ca: &Ca) -> Signer {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "berth upstream token signer");
        let cert = params.signed_by(&key, &ca.0).unwrap();
        Signer { key, cert_der: cert.der().to_vec() }
    }

    /// A JWT granting the actions of each `type:name:actions` scope.
    fn mint(&self, subject: &str, scopes: &[&str]) -> String {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let access: Vec<Value> = (scopes.iter())
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = json!({"alg": "EdDSA", "typ": "JWT", "x5c": [STANDARD.encode(&self.cert_der)]});
        let claims = json!({"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 1,
            "iat": now, "jti": format!("{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::SeqCst)), "access": access});
        let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = self.key.sign(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// `GET /token?service=..&scope=..` over HTTPS on its own thread and runtime, so
/// it answers whatever the test's runtime is doing. Stops when dropped.
struct TokenServer {
    realm: String,
    signer: Arc<Signer>,
    log: Arc<TokenLog>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TokenServer {
    fn start(ca: Arc<Ca>) -> TokenServer {
        let (cert_pem, key_pem) = ca.server_cert();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls(&cert_pem, &key_pem)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("https://{}/token", listener.local_addr().unwrap());
        let signer = Arc::new(Signer::new(&ca));
        let log = Arc::new(TokenLog::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = (signer.clone(), log.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = stopped => {}
                    _ = accept(listener, tls, state) => {}
                }
            });
        });
        TokenServer { realm, signer, log, _stop: stop }
    }
}

fn server_tls(cert_pem: &str, key_pem: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[derive(Default)]
struct TokenLog {
    requests: AtomicUsize,
    scopes: std::sync::Mutex<Vec<String>>,
}

type TokenState = (Arc<Signer>, Arc<TokenLog>);

async fn accept(listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, state: TokenState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(answer_token(&request, &state)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// Checks the Basic credentials and the service, then grants every scope asked for.
fn answer_token<B>(request: &hyper::Request<B>, (signer, log): &TokenState) -> hyper::Response<axum::body::Body> {
    log.requests.fetch_add(1, Ordering::SeqCst);
    let reply = |status: StatusCode, body: String| {
        let mut response = hyper::Response::new(axum::body::Body::from(body));
        *response.status_mut() = status;
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", "Basic realm=\"berth-upstream-token\"".parse().unwrap());
        }
        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
        response
    };
    if request.method() != hyper::Method::GET || request.uri().path() != "/token" {
        return reply(StatusCode::NOT_FOUND, "{}".into());
    }
    let credentials = (request.headers().get("authorization"))
        .and_then(|v| v.to_str().ok()?.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, pair)| STANDARD.decode(pair.trim()).ok());
    if credentials.is_none_or(|pair| pair != format!("{USERNAME}:{PASSWORD}").as_bytes()) {
        return reply(StatusCode::UNAUTHORIZED, r#"{"details":"credentials required"}"#.into());
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
    if !query.iter().any(|(k, v)| k == "service" && v == SERVICE) {
        return reply(StatusCode::BAD_REQUEST, format!(r#"{{"details":"service must be {SERVICE}"}}"#));
    }
    // Several scope parameters, or several scopes in one separated by spaces.
    let scopes: Vec<&str> =
        query.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ')).filter(|s| !s.is_empty()).collect();
    log.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
    let token = signer.mint(USERNAME, &scopes);
    reply(StatusCode::OK, json!({"token": token, "access_token": token, "expires_in": 300}).to_string())
}

// ----- the process -----

/// Distribution, spawned from a thread that lives until the process is to stop:
/// the parent-death signal fires when the spawning thread ends, so a thread of the
/// test's runtime could take the process down early, while a dead test process
/// still takes it down. Dropping it kills the process and waits for it.
struct Process {
    stop: Option<std::sync::mpsc::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    /// Set if it ended by itself (a bad config, a port taken), to fail fast.
    exited: Arc<AtomicBool>,
}

impl Process {
    fn spawn(mut command: Command) -> Process {
        use std::os::unix::process::CommandExt;
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let exited = Arc::new(AtomicBool::new(false));
        let exited_flag = exited.clone();
        std::thread::spawn(move || {
            command.stdin(Stdio::null());
            // SAFETY: prctl is async-signal-safe and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command.spawn().expect("starting Distribution");
            started_tx.send(()).unwrap();
            // Until a message or the sender dropped, watching for an early end.
            while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(Duration::from_millis(50)) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    exited_flag.store(true, Ordering::SeqCst);
                    let _ = stop_rx.recv();
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            drop(done_tx);
        });
        started.recv().expect("Distribution did not start");
        Process { stop: Some(stop), done, exited }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.done.recv(); // returns once the thread has reaped the child
    }
}
