//! An in-process registry on a free loopback port, and small client helpers.
#![allow(dead_code)]

pub mod minio;
pub mod upstream;

use std::path::{Path, PathBuf};

use berth_registry::Config;
use berth_registry::digest::{Algorithm, Digest};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Registry {
    pub base: String,
    pub client: Client,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
}

impl Registry {
    pub async fn start() -> Registry {
        Registry::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::on_root(dir.path(), adjust).await;
        r._dir = Some(dir);
        r
    }

    /// A server on an existing storage root (a restart, or a second replica).
    pub async fn on_root(root: &Path, adjust: impl FnOnce(&mut Config)) -> Registry {
        let mut config = Config::default();
        config.storage.root = root.to_path_buf();
        adjust(&mut config);
        let (addr, stop) = spawn(config).await;
        Registry {
            base: format!("http://{addr}"),
            client: Client::new(),
            root: root.to_path_buf(),
            _dir: None,
            stop: Some(stop),
        }
    }

    /// Another handle on the same server, reached at `base` (through a proxy, say),
    /// that does not stop the server when dropped.
    pub fn via(&self, base: String) -> Registry {
        Registry { base, client: Client::new(), root: self.root.clone(), _dir: None, stop: None }
    }

    /// Another handle on the same server whose requests carry `authorization`.
    pub fn authorized(&self, authorization: &str) -> Registry {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, authorization.parse().unwrap());
        let client = Client::builder().default_headers(headers).build().unwrap();
        Registry { base: self.base.clone(), client, root: self.root.clone(), _dir: None, stop: None }
    }

    /// A handle that logs in with Basic credentials.
    pub fn as_user(&self, user: &str, password: &str) -> Registry {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorized(&format!("Basic {pair}"))
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) };
        self.client.request(method, url)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    /// Pushes a blob monolithically and returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(Algorithm::Sha256, bytes);
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        digest
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a config and one layer, then an OCI image manifest tagged `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Vec<u8>) {
        let manifest = serde_json::to_vec(&self.image_manifest(repo, layer, None).await).unwrap();
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        (Digest::of(Algorithm::Sha256, &manifest), manifest)
    }

    /// Pushes the blobs of an image and returns its manifest (not pushed).
    pub async fn image_manifest(&self, repo: &str, layer: &[u8], subject: Option<Value>) -> Value {
        let config = self.push_blob(repo, b"{}").await;
        let layer_digest = self.push_blob(repo, layer).await;
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.to_string(), "size": layer.len()}]
        });
        if let Some(subject) = subject {
            m["subject"] = subject;
        }
        m
    }
}

/// Serves `config` in-process on a free loopback port until the sender is
/// dropped or fired.
pub async fn spawn(config: Config) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(berth_registry::server::serve(listener, config, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts a distribution-spec error response and returns its message.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["errors"][0];
    assert_eq!(error["code"], code, "body: {body}");
    error["message"].as_str().unwrap_or_default().to_owned()
}

pub fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Sends a GET with `path` exactly as given (HTTP clients normalise `..` and
/// `%2e%2e` away) and returns the status code.
pub async fn raw_get_status(base: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Checks every stored blob, `<root>/blobs/sha256/<xx>/<hex>`: its content must
/// hash to `<hex>`. Returns how many files were checked and a description of each
/// one that does not match (hashed here with `sha2`, independently of the registry).
pub fn verify_blob_files(root: &Path) -> (usize, Vec<String>) {
    use sha2::Digest as _;
    let mut checked = 0;
    let mut bad = Vec::new();
    for path in files_below(&root.join("blobs").join("sha256")) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                bad.push(format!("{}: unreadable: {e}", path.display()));
                continue;
            }
        };
        checked += 1;
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        if actual != name {
            let zeros = bytes.iter().filter(|b| **b == 0).count();
            bad.push(format!(
                "{} holds {} bytes ({zeros} of them zero) that hash to sha256:{actual}, not to its name",
                path.display(),
                bytes.len()
            ));
        }
    }
    (checked, bad)
}

/// Cheap deterministic bytes (xorshift), different for every seed.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One scrape of `/metrics`: each sample line's series (name and labels, as
/// printed) and value.
pub struct Scrape(pub Vec<(String, f64)>);

impl Scrape {
    pub async fn of(reg: &Registry, path: &str) -> Scrape {
        let r = reg.get(path).await;
        assert_eq!(r.status(), StatusCode::OK);
        Scrape::parse(&r.text().await.unwrap())
    }

    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l}"));
                (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("a value: {l}")))
            })
            .collect();
        Scrape(samples)
    }

    /// The sum of the samples named `name` that carry every label of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}
