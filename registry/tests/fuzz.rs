//! A randomized request fuzzer against the in-process server. Requests are built
//! from a seeded generator and sent as raw bytes over TCP, so malformed requests
//! that HTTP clients refuse to send reach the server too. The environment
//! overrides the defaults: `FUZZ_SEED`, `FUZZ_REQUESTS`, `FUZZ_CONCURRENCY`
//! (requests in flight; with 1 a seed replays exactly) and `FUZZ_SHOW="Manifest
//! PUT"` (print every response to that kind of request, to tune the generator). What the server learns is fed back: upload
//! sessions, blobs and manifests it reports are reused, so requests go deep into
//! the API rather than stopping at the first check.
//!
//! Every response must be well-formed HTTP, none may be a 5xx, none may take
//! more than a few seconds, and `GET /v2/` must keep answering 200.

mod common;

use std::time::{Duration, Instant};

use berth_registry::digest::{Algorithm, Digest};
use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_SEED: u64 = 0x5EED_BE27;
const DEFAULT_REQUESTS: usize = 10_000;
/// Requests between two checks that `GET /v2/` still answers.
const BATCH: usize = 100;
const DEFAULT_CONCURRENCY: usize = 4;
/// The longest any request may take.
const DEADLINE: Duration = Duration::from_secs(5);

/// xorshift64*: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn chars_of(&mut self, alphabet: &str, n: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..n).map(|_| *self.pick(&chars)).collect()
    }

    /// Between `min` and `max` characters of `alphabet`.
    fn text(&mut self, alphabet: &str, min: usize, max: usize) -> String {
        let n = min + self.below(max - min + 1);
        self.chars_of(alphabet, n)
    }

    /// Mostly small sizes, sometimes large.
    fn size(&mut self) -> usize {
        match self.below(10) {
            0..=5 => self.below(64),
            6..=8 => self.below(4096),
            _ => self.below(64 * 1024),
        }
    }
}

/// What the fuzzer knows exists on the server.
#[derive(Default)]
struct World {
    repos: Vec<String>,
    /// (repository, digest) of blobs.
    blobs: Vec<(String, String)>,
    /// (repository, digest) of manifests.
    manifests: Vec<(String, String)>,
    /// Upload session URLs (paths).
    uploads: Vec<String>,
    /// (repository, tag).
    tags: Vec<(String, String)>,
}

impl World {
    /// Learns from a `Location` header what the server just created.
    fn learn(&mut self, location: &str) {
        let Some(rest) = location.strip_prefix("/v2/") else { return };
        let path = rest.split('?').next().unwrap_or_default();
        if let Some((repo, _)) = path.rsplit_once("/blobs/uploads/") {
            self.add_repo(repo);
            let url = format!("/v2/{path}");
            if !self.uploads.contains(&url) {
                self.uploads.push(url);
            }
        } else if let Some((repo, digest)) = path.rsplit_once("/blobs/") {
            self.add_repo(repo);
            self.blobs.push((repo.to_owned(), digest.to_owned()));
        } else if let Some((repo, digest)) = path.rsplit_once("/manifests/") {
            self.add_repo(repo);
            self.manifests.push((repo.to_owned(), digest.to_owned()));
        }
        // Bounded, so old entries give way to new ones.
        if self.uploads.len() > 64 {
            self.uploads.remove(0);
        }
        for list in [&mut self.blobs, &mut self.manifests] {
            if list.len() > 256 {
                list.remove(0);
            }
        }
    }

    /// Learns from a response what exists now.
    fn learn_from(&mut self, req: &Request, response: &Response) {
        if let Some(location) = response.header("location") {
            self.learn(location);
        }
        if (200..300).contains(&response.status)
            && req.method == "PUT"
            && let Ok(target) = std::str::from_utf8(&req.target)
            && let Some((repo, tag)) = target.split('?').next().unwrap_or_default().rsplit_once("/manifests/")
            && !tag.contains(':')
            && self.tags.len() < 256
        {
            let entry = (repo.trim_start_matches("/v2/").to_owned(), tag.to_owned());
            if !self.tags.contains(&entry) {
                self.tags.push(entry);
            }
        }
    }

    fn add_repo(&mut self, repo: &str) {
        if !self.repos.iter().any(|r| r == repo) && self.repos.len() < 64 {
            self.repos.push(repo.to_owned());
        }
    }
}

/// One request, as bytes on the wire.
struct Request {
    kind: Kind,
    method: String,
    target: Vec<u8>,
    headers: Vec<Vec<u8>>,
    body: Vec<u8>,
    chunked: bool,
    keep_alive: bool,
}

impl Request {
    fn wire(&self, host: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
        if !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        for h in &self.headers {
            out.extend_from_slice(h);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in self.body.chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            if !self.body.is_empty() || matches!(self.method.as_str(), "PUT" | "POST" | "PATCH") {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// A short description for failure reports.
    fn describe(&self) -> String {
        let target = String::from_utf8_lossy(&self.target);
        let target: String = target.chars().take(300).collect();
        let headers: Vec<String> =
            self.headers.iter().map(|h| String::from_utf8_lossy(h).chars().take(120).collect()).collect();
        format!(
            "{} {target} headers={headers:?} body={} bytes{}{}",
            self.method,
            self.body.len(),
            if self.chunked { " (chunked)" } else { "" },
            if self.body.len() <= 200 { format!(" {:?}", String::from_utf8_lossy(&self.body)) } else { String::new() }
        )
    }
}

const MEDIA_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_SCHEMA2,
    DOCKER_LIST,
    DOCKER_SCHEMA1,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "application/octet-stream",
    "text/plain; charset=utf-8",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    "*/*",
    "",
    "application/",
    ";;;",
];

fn random_digest(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => format!("sha256:{}", rng.chars_of("0123456789abcdef", 64)),
        1 => format!("sha512:{}", rng.chars_of("0123456789abcdef", 128)),
        2 => format!("sha256:{}", rng.chars_of("0123456789ABCDEF", 64)),
        3 => format!("sha256:{}", rng.text("0123456789abcdef", 0, 129)),
        4 => format!("sha384:{}", rng.chars_of("0123456789abcdef", 96)),
        5 => "sha256:".into(),
        6 => format!("md5:{}", rng.chars_of("0123456789abcdef", 32)),
        7 => format!("sha256%3A{}", rng.chars_of("0123456789abcdef", 64)),
        8 => format!("sha256:../../{}", rng.chars_of("0123456789abcdef./", 60)),
        9 => String::new(),
        10 => format!("{}:{}", rng.text("abcxyz+._-", 1, 10), rng.chars_of("0123456789abcdef", 64)),
        _ => junk_segment(rng),
    }
}

fn junk_segment(rng: &mut Rng) -> String {
    match rng.below(14) {
        0 => "..".into(),
        1 => ".".into(),
        2 => "%2e%2e".into(),
        3 => "%2F".into(),
        4 => "%00".into(),
        5 => "%ff%fe".into(),
        6 => "%zz".into(),
        7 => "ünïcödé".into(),
        8 => "a".repeat(200 + rng.below(400)),
        9 => String::new(),
        10 => "_catalog".into(),
        11 => rng.text("abcdefABC0123._-~!$&'()*+,;=:@%", 1, 20),
        12 => "blobs".into(),
        _ => "manifests".into(),
    }
}

fn name(rng: &mut Rng, world: &World) -> String {
    if !world.repos.is_empty() && rng.chance(60) {
        return rng.pick(&world.repos).clone();
    }
    match rng.below(10) {
        0..=3 => {
            let parts = 1 + rng.below(3);
            let seps = [".", "_", "__", "-", "--"];
            (0..parts)
                .map(|_| {
                    let mut c = rng.text("abcdefghijklmnopqrstuvwxyz0123456789", 1, 6);
                    if rng.chance(20) {
                        c.push_str(rng.pick::<&str>(&seps));
                        c.push_str(&rng.text("abc123", 1, 3));
                    }
                    c
                })
                .collect::<Vec<_>>()
                .join("/")
        }
        4 => rng.text("abcdefghijklmnopqrstuvwxyzABC0123456789._-/", 1, 40),
        5 => format!("{}/{}", rng.chars_of("abc", 3), junk_segment(rng)),
        6 => "a/".repeat(1 + rng.below(200)) + "b",
        7 => format!("a{}", "b".repeat(250 + rng.below(20))),
        8 => "fuzz/blobs/manifests/tags".into(),
        _ => junk_segment(rng),
    }
}

fn reference(rng: &mut Rng, world: &World) -> String {
    match rng.below(10) {
        0..=2 if !world.manifests.is_empty() => rng.pick(&world.manifests).1.clone(),
        0..=4 if !world.tags.is_empty() => rng.pick(&world.tags).1.clone(),
        5 => rng.text("abcXYZ019._-", 1, 20),
        6 => format!("-{}", rng.chars_of("abc", 3)),
        7 => "x".repeat(120 + rng.below(20)),
        8 => random_digest(rng),
        _ => junk_segment(rng),
    }
}

fn digest(rng: &mut Rng, world: &World) -> String {
    match rng.below(10) {
        0..=3 if !world.blobs.is_empty() => rng.pick(&world.blobs).1.clone(),
        4..=5 if !world.manifests.is_empty() => rng.pick(&world.manifests).1.clone(),
        _ => random_digest(rng),
    }
}

fn upload_path(rng: &mut Rng, world: &World, repo: &str) -> String {
    match rng.below(8) {
        0..=4 if !world.uploads.is_empty() => rng.pick(&world.uploads).clone(),
        5 => format!("/v2/{repo}/blobs/uploads/{}", uuid::Uuid::new_v4()),
        6 => format!("/v2/{repo}/blobs/uploads/{}", uuid::Uuid::new_v4().to_string().to_uppercase()),
        _ => format!("/v2/{repo}/blobs/uploads/{}", junk_segment(rng)),
    }
}

/// The API resource a generated path aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Blob,
    UploadStart,
    Upload,
    Manifest,
    Listing,
    Other,
}

impl Kind {
    /// The methods the resource serves.
    fn methods(self) -> &'static [&'static str] {
        match self {
            Kind::Blob => &["GET", "GET", "HEAD", "DELETE"],
            Kind::UploadStart => &["POST"],
            Kind::Upload => &["PATCH", "PATCH", "PUT", "PUT", "GET", "DELETE"],
            Kind::Manifest => &["PUT", "PUT", "GET", "GET", "HEAD", "DELETE"],
            Kind::Listing | Kind::Other => &["GET"],
        }
    }
}

fn path(rng: &mut Rng, world: &World) -> (String, Kind) {
    let repo = name(rng, world);
    let (mut p, kind) = match rng.below(20) {
        0..=2 if !world.blobs.is_empty() && rng.chance(50) => {
            let (repo, digest) = rng.pick(&world.blobs);
            (format!("/v2/{repo}/blobs/{digest}"), Kind::Blob)
        }
        9..=11 if !world.manifests.is_empty() && rng.chance(50) => {
            let (repo, digest) = rng.pick(&world.manifests).clone();
            let tags: Vec<&String> = world.tags.iter().filter(|(r, _)| *r == repo).map(|(_, t)| t).collect();
            let reference = if !tags.is_empty() && rng.chance(50) { rng.pick(&tags).to_string() } else { digest };
            (format!("/v2/{repo}/manifests/{reference}"), Kind::Manifest)
        }
        14 if !world.manifests.is_empty() && rng.chance(50) => {
            let (repo, digest) = rng.pick(&world.manifests);
            (format!("/v2/{repo}/referrers/{digest}"), Kind::Listing)
        }
        0..=2 => (format!("/v2/{repo}/blobs/{}", digest(rng, world)), Kind::Blob),
        3..=4 => (format!("/v2/{repo}/blobs/uploads/"), Kind::UploadStart),
        5 => (format!("/v2/{repo}/blobs/uploads"), Kind::UploadStart),
        6..=8 => (upload_path(rng, world, &repo), Kind::Upload),
        9..=11 => (format!("/v2/{repo}/manifests/{}", reference(rng, world)), Kind::Manifest),
        12 => (format!("/v2/{repo}/tags/list"), Kind::Listing),
        13 => ("/v2/_catalog".into(), Kind::Listing),
        14 => (format!("/v2/{repo}/referrers/{}", digest(rng, world)), Kind::Listing),
        15 => {
            let p = rng.pick(&["/v2/", "/v2", "/", "/v3/", "/v2//", "/v2/_catalog/", "*", "/v2/tags/list"]);
            (p.to_string(), Kind::Other)
        }
        16 => (format!("/v2/{repo}"), Kind::Other),
        17 => (format!("/v2/{repo}/{}", junk_segment(rng)), Kind::Other),
        18 => (format!("http://example.com/v2/{repo}/tags/list"), Kind::Listing),
        _ => (format!("/v2/{}/{}/{}", junk_segment(rng), junk_segment(rng), junk_segment(rng)), Kind::Other),
    };
    // Whole-path mutations.
    match rng.below(30) {
        0 => p = p.replacen("/v2/", "/v2/../v2/", 1),
        1 => p = p.replace('/', "//"),
        2 => p.push('/'),
        3 => p = p.replacen('/', "/./", 2),
        4 => p.push_str("#fragment"),
        5 => p = p.replace(':', "%3a"),
        6 => p = p.replace('/', "%2F"),
        _ => {}
    }
    (p, kind)
}

fn query(rng: &mut Rng, world: &World, blob_digest: Option<&str>) -> String {
    let mut pairs = Vec::new();
    for _ in 0..rng.below(4) {
        let key =
            *rng.pick(&["digest", "mount", "from", "n", "last", "tag", "digest-algorithm", "artifactType", "junk"]);
        let value = match rng.below(10) {
            0..=2 => match key {
                "digest" | "mount" => blob_digest.map(str::to_owned).unwrap_or_else(|| digest(rng, world)),
                "from" => name(rng, world),
                "n" => rng.below(5).to_string(),
                "last" => reference(rng, world),
                "tag" => reference(rng, world),
                "digest-algorithm" => rng.pick(&["sha256", "sha512", "sha384", "SHA256"]).to_string(),
                _ => rng.chars_of("abc", 3),
            },
            3 => String::new(),
            4 => "-1".into(),
            5 => "99999999999999999999999".into(),
            6 => "%zz%".into(),
            7 => "a&b=c&&==".into(),
            8 => "%E2%9C%93%00".into(),
            _ => junk_segment(rng),
        };
        pairs.push(format!("{key}={value}"));
    }
    if let Some(d) = blob_digest
        && rng.chance(50)
    {
        pairs.push(format!("digest={d}"));
    }
    if rng.chance(5) {
        pairs.push("&&=&".into());
    }
    pairs.join("&")
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// A manifest body: often valid and referencing what exists, sometimes broken.
fn manifest_body(rng: &mut Rng, world: &World, repo: &str) -> Vec<u8> {
    let blobs: Vec<&String> = world.blobs.iter().filter(|(r, _)| r == repo).map(|(_, d)| d).collect();
    let blob = |rng: &mut Rng| -> String {
        if !blobs.is_empty() && rng.chance(80) { rng.pick(&blobs).to_string() } else { digest(rng, world) }
    };
    let manifests: Vec<&String> = world.manifests.iter().filter(|(r, _)| r == repo).map(|(_, d)| d).collect();
    let child = |rng: &mut Rng| -> String {
        if !manifests.is_empty() && rng.chance(80) { rng.pick(&manifests).to_string() } else { digest(rng, world) }
    };
    let mut value = match rng.below(6) {
        0..=2 => {
            let layers: Vec<_> = (0..rng.below(4)).map(|_| descriptor(OCI_LAYER, &blob(rng), rng.below(100))).collect();
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, &blob(rng), 2),
                "layers": layers,
            })
        }
        3 => {
            let children: Vec<_> = (0..rng.below(4))
                .map(|_| {
                    let mut d = descriptor(OCI_MANIFEST, &child(rng), 100);
                    if rng.chance(50) {
                        d["platform"] =
                            serde_json::json!({"os": "linux", "architecture": *rng.pick(&["amd64", "arm64"])});
                    }
                    d
                })
                .collect();
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        }
        4 => {
            let layers: Vec<_> = (0..rng.below(3))
                .map(|_| descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &blob(rng), 10))
                .collect();
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_SCHEMA2,
                "config": descriptor("application/vnd.docker.container.image.v1+json", &blob(rng), 2),
                "layers": layers,
            })
        }
        _ => {
            let children: Vec<_> = (0..rng.below(3))
                .map(|_| {
                    let mut d = descriptor(DOCKER_SCHEMA2, &child(rng), 100);
                    d["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
                    d
                })
                .collect();
            serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": children})
        }
    };
    if rng.chance(20) {
        value["subject"] = descriptor(OCI_MANIFEST, &child(rng), 10);
        value["artifactType"] = "application/vnd.example+type".into();
    }
    if rng.chance(10) {
        value["annotations"] = serde_json::json!({"k": rng.chars_of("abc\u{e9}\"\\", 5)});
    }
    // Mutations: wrong types, missing fields, extra fields.
    match rng.below(24) {
        0 => value["schemaVersion"] = serde_json::json!(rng.pick(&[1, 3, -1, 0])),
        1 => value["layers"] = serde_json::json!("not a list"),
        2 => value["config"] = serde_json::json!({"digest": 7}),
        3 => {
            value.as_object_mut().map(|o| o.remove("mediaType"));
        }
        4 => value["size"] = serde_json::json!(u64::MAX),
        5 => value["config"]["size"] = serde_json::json!(-5),
        _ => {}
    }
    serde_json::to_vec(&value).unwrap()
}

fn body(rng: &mut Rng, world: &World, repo: &str) -> Vec<u8> {
    match rng.below(10) {
        0..=2 => Vec::new(),
        3..=4 => {
            let n = rng.size();
            rng.bytes(n)
        }
        5..=7 => manifest_body(rng, world, repo),
        8 => {
            let mut m = manifest_body(rng, world, repo);
            let keep = rng.below(m.len());
            m.truncate(keep);
            m
        }
        _ => rng
            .pick(&[
                &b"{"[..],
                b"null",
                b"[]",
                b"{\"schemaVersion\":",
                b"{\"schemaVersion\":2,\"manifests\":[{}]}",
                b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":null}",
                b"\xff\xfe\x00",
                b"{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:../../etc\"}}",
                b"{\"a\":1e999999}",
                b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            ])
            .to_vec(),
    }
}

fn headers(rng: &mut Rng, world: &World, body: &[u8]) -> Vec<Vec<u8>> {
    let mut h: Vec<Vec<u8>> = Vec::new();
    if rng.chance(50) {
        h.push(format!("Content-Type: {}", rng.pick(MEDIA_TYPES)).into_bytes());
    }
    if rng.chance(25) {
        let len = body.len().max(1);
        let value = match rng.below(8) {
            0..=2 => format!("0-{}", len - 1),
            3 => format!("bytes 0-{}/{len}", len - 1),
            4 => format!("{}-{}", rng.below(100), rng.below(100)),
            5 => "0-18446744073709551615".into(),
            6 => "bytes=*/*".into(),
            _ => rng.text("0123456789-/ bytes*", 1, 20),
        };
        h.push(format!("Content-Range: {value}").into_bytes());
    }
    if rng.chance(20) {
        let value = match rng.below(8) {
            0 => format!("bytes={}-{}", rng.below(50), rng.below(100)),
            1 => format!("bytes=-{}", rng.below(100)),
            2 => format!("bytes={}-", rng.below(100)),
            3 => "bytes=0-0,5-6".into(),
            4 => "bytes=99999999999999999999-".into(),
            5 => "bytes=-0".into(),
            6 => "items=0-1".into(),
            _ => rng.text("bytes=0123456789-, ", 1, 20),
        };
        h.push(format!("Range: {value}").into_bytes());
    }
    if rng.chance(40) {
        let n = 1 + rng.below(3);
        let accept: Vec<&str> = (0..n).map(|_| *rng.pick(MEDIA_TYPES)).collect();
        h.push(format!("Accept: {}", accept.join(", ")).into_bytes());
    }
    if rng.chance(10) {
        let value = match rng.below(4) {
            0 => "*".to_owned(),
            1 if !world.manifests.is_empty() => format!("\"{}\"", rng.pick(&world.manifests).1),
            2 => format!("W/\"{}\", \"x\"", digest(rng, world)),
            _ => rng.text("\"W/,* abc", 1, 20),
        };
        h.push(format!("If-None-Match: {value}").into_bytes());
    }
    if rng.chance(5) {
        // Malformed or unusual header lines.
        let line: Vec<u8> = match rng.below(8) {
            0 => b"NoColonHere".to_vec(),
            1 => b"Bad Name: x".to_vec(),
            2 => b"X-Bytes: \xff\xfe\x80".to_vec(),
            3 => format!("X-Long: {}", "v".repeat(10_000 + rng.below(60_000))).into_bytes(),
            4 => b": empty name".to_vec(),
            5 => b"Content-Type: \x01\x02".to_vec(),
            6 => b"Expect: 100-continue".to_vec(),
            _ => b"Accept-Encoding: gzip, br, zstd".to_vec(),
        };
        h.push(line);
    }
    h
}

/// The repository a path names, if it has the shape of one.
fn repo_of(path: &str) -> String {
    let rest = path.strip_prefix("/v2/").unwrap_or_default();
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .find_map(|marker| rest.split_once(marker).map(|(repo, _)| repo.to_owned()))
        .unwrap_or_default()
}

fn request(rng: &mut Rng, world: &World) -> Request {
    let (mut p, mut kind) = path(rng, world);
    if rng.chance(5) && !world.blobs.is_empty() {
        // A push that can succeed: into a repository that holds blobs, by tag.
        let repo = rng.pick(&world.blobs).0.clone();
        p = format!("/v2/{repo}/manifests/{}", rng.text("abcdefghijklmnopqrstuvwxyz0123456789._-", 1, 10));
        p = p.replace("manifests/.", "manifests/x").replace("manifests/-", "manifests/y");
        kind = Kind::Manifest;
    }
    let method = match rng.below(40) {
        0..=29 => *rng.pick(kind.methods()),
        30..=32 => "GET",
        33 => "HEAD",
        34 => "PUT",
        35 => "POST",
        36 => "PATCH",
        37 => "DELETE",
        38 => "OPTIONS",
        _ => *rng.pick(&["get", "TRACE", "CONNECT", "PROPFIND", "BREW", "G@T", "X-CUSTOM"]),
    };
    let repo = repo_of(&p);
    let mut headers = Vec::new();
    let body = match (kind, method) {
        (Kind::Manifest, "PUT") if rng.chance(80) => {
            let m = manifest_body(rng, world, &repo);
            if rng.chance(60) {
                let media_type = serde_json::from_slice::<serde_json::Value>(&m)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                headers.push(format!("Content-Type: {media_type}").into_bytes());
            }
            m
        }
        (Kind::Upload | Kind::UploadStart, "PATCH" | "PUT" | "POST") if rng.chance(70) => {
            let n = rng.size();
            rng.bytes(n)
        }
        _ => body(rng, world, &repo),
    };
    // A digest that matches the body, so that some pushes succeed.
    let body_digest = rng.chance(60).then(|| Digest::of(Algorithm::Sha256, &body).to_string());
    let q = query(rng, world, body_digest.as_deref());
    let mut target = p.into_bytes();
    if !q.is_empty() || rng.chance(3) {
        target.push(b'?');
        target.extend_from_slice(q.as_bytes());
    }
    if rng.chance(2) {
        // Bytes that are not allowed in a request target.
        let bad: [&[u8]; 5] = [b" x", b"\x7f", b"\xc3\xa9", b"<>", b"\"{}|\\^`"];
        target.extend_from_slice(rng.pick::<&[u8]>(&bad));
    }
    headers.extend(self::headers(rng, world, &body));
    Request {
        kind,
        method: method.to_owned(),
        target,
        headers,
        body,
        chunked: rng.chance(10),
        keep_alive: rng.chance(25),
    }
}

/// A parsed response head.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The start of the body, for reports.
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Parses one complete response from the start of `buf`: `Ok(None)` when more
/// bytes are needed, else the response and the bytes it took. Interim (1xx)
/// responses are skipped.
fn parse_response(buf: &[u8], head_request: bool, eof: bool) -> Result<Option<(Response, usize)>, String> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if eof {
                Err(format!(
                    "connection closed inside the response head: {:?}",
                    String::from_utf8_lossy(&rest[..rest.len().min(300)])
                ))
            } else {
                Ok(None)
            };
        };
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "response head is not UTF-8".to_owned())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(format!("bad status line {status_line:?}"));
        }
        let status: u16 = match code.parse() {
            Ok(s) if (100..600).contains(&s) && code.len() == 3 => s,
            _ => return Err(format!("bad status code in {status_line:?}")),
        };
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| format!("header line without a colon: {line:?}"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                return Err(format!("bad header name {name:?}"));
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = Response { status, headers, body: String::new() };
        let body_start = at + end + 4;
        if (100..200).contains(&status) {
            at = body_start;
            continue;
        }
        let body = &buf[body_start..];
        response.body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let chunked = response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = match response.header("content-length") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| format!("bad Content-Length {v:?}"))?),
            None => None,
        };
        if head_request || status == 204 || status == 304 {
            return Ok(Some((response, body_start)));
        }
        if chunked {
            return match chunked_len(body)? {
                Some(n) => Ok(Some((response, body_start + n))),
                None if eof => Err("connection closed inside a chunked body".into()),
                None => Ok(None),
            };
        }
        return match length {
            Some(n) if body.len() >= n => Ok(Some((response, body_start + n))),
            Some(n) if eof => Err(format!("body of {} bytes, Content-Length {n}", body.len())),
            Some(_) => Ok(None),
            None if eof => Ok(Some((response, buf.len()))),
            None => Ok(None),
        };
    }
}

/// The length of a complete chunked body at the start of `b`, or `None` if incomplete.
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = std::str::from_utf8(&b[at..at + eol]).map_err(|_| "chunk size is not UTF-8".to_owned())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = b[at..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return Ok(None);
        }
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// Reads one response from `stream`, with whatever of it is already in `buf`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Result<Response, String> {
    let mut eof = false;
    loop {
        if eof && buf.is_empty() {
            return Err("no response".into());
        }
        if let Some((response, used)) = parse_response(buf, head, eof)? {
            buf.drain(..used);
            return Ok(response);
        }
        if eof {
            return Err("incomplete response".into());
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A server that answers before reading the whole body may reset the
            // connection once it closes; what it sent before is still here.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => eof = true,
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

/// Sends `req` and reads its response; on a kept-alive connection, checks that the
/// connection still serves `GET /v2/` afterwards.
async fn exchange(addr: &str, req: &Request) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before taking the whole body.
    let _ = stream.write_all(&req.wire(addr)).await;
    let mut buf = Vec::new();
    let response = read_response(&mut stream, &mut buf, req.method == "HEAD").await?;
    if req.keep_alive
        && response.status < 400
        && !response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        let again = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if stream.write_all(again.as_bytes()).await.is_ok() {
            match read_response(&mut stream, &mut buf, false).await {
                Ok(r) if r.status == 200 => {}
                Ok(r) => return Err(format!("GET /v2/ on the same connection answered {}", r.status)),
                // The server may close a connection between requests.
                Err(e) if e == "no response" => {}
                Err(e) => return Err(format!("GET /v2/ on the same connection: {e}")),
            }
        }
    }
    Ok(response)
}

async fn base_ok(addr: &str) -> Result<(), String> {
    let req = Request {
        kind: Kind::Other,
        method: "GET".into(),
        target: b"/v2/".to_vec(),
        headers: vec![],
        body: vec![],
        chunked: false,
        keep_alive: false,
    };
    match tokio::time::timeout(DEADLINE, exchange(addr, &req)).await {
        Ok(Ok(r)) if r.status == 200 => Ok(()),
        Ok(Ok(r)) => Err(format!("GET /v2/ answered {}", r.status)),
        Ok(Err(e)) => Err(format!("GET /v2/: {e}")),
        Err(_) => Err("GET /v2/ timed out".into()),
    }
}

/// Some content to find, so that valid-looking requests reach real data.
async fn seed_world(reg: &Registry, world: &mut World) {
    for (repo, tag, layer) in [("fuzz/a", "latest", &b"layer a"[..]), ("library/b", "v1", b"layer b")] {
        let (digest, _) = reg.push_image(repo, tag, layer).await;
        world.add_repo(repo);
        world.manifests.push((repo.to_owned(), digest.to_string()));
        world.tags.push((repo.to_owned(), tag.to_owned()));
        for blob in [&b"{}"[..], layer] {
            world.blobs.push((repo.to_owned(), Digest::of(Algorithm::Sha256, blob).to_string()));
        }
        let subject = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": 10});
        let mut referrer = reg.image_manifest(repo, b"signature", Some(subject)).await;
        referrer["artifactType"] = "application/vnd.example.sig".into();
        let bytes = serde_json::to_vec(&referrer).unwrap();
        let referrer_digest = Digest::of(Algorithm::Sha256, &bytes);
        let r = reg.put_manifest(repo, &referrer_digest.to_string(), OCI_MANIFEST, &bytes).await;
        assert_eq!(r.status(), 201);
        world.manifests.push((repo.to_owned(), referrer_digest.to_string()));
        for _ in 0..4 {
            let r = reg.req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
            world.learn(&header(&r, "location"));
        }
    }
    world.tags.extend([("fuzz/a".to_owned(), "missing".to_owned()), ("library/b".to_owned(), "v2".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_break_the_server() {
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let count = std::env::var("FUZZ_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_REQUESTS);
    let concurrency: usize =
        std::env::var("FUZZ_CONCURRENCY").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CONCURRENCY).max(1);
    println!(
        "fuzz: seed {seed}, {count} requests, {concurrency} at a time \
         (FUZZ_SEED={seed} FUZZ_REQUESTS={count} FUZZ_CONCURRENCY={concurrency}; 1 is fully reproducible)"
    );

    let reg = Registry::start().await;
    let addr = reg.base.trim_start_matches("http://").to_owned();
    let mut world = World::default();
    seed_world(&reg, &mut world).await;

    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<(Kind, String), std::collections::BTreeMap<u16, usize>>::new();
    let (mut slowest, mut slowest_request) = (Duration::ZERO, String::new());
    let started = Instant::now();
    for first in (0..count).step_by(BATCH) {
        // A batch is generated from what was known before it and sent a few at a
        // time; the responses are learnt from in request order.
        let batch: Vec<Request> = (0..BATCH.min(count - first)).map(|_| request(&mut rng, &world)).collect();
        let addr = addr.as_str();
        let outcomes: Vec<_> = futures_util::stream::iter(&batch)
            .map(|req| async move {
                let t = Instant::now();
                (tokio::time::timeout(DEADLINE, exchange(addr, req)).await, t.elapsed())
            })
            .buffered(concurrency)
            .collect()
            .await;
        for (j, (req, (outcome, took))) in batch.iter().zip(outcomes).enumerate() {
            let i = first + j;
            if took > slowest {
                (slowest, slowest_request) = (took, req.describe());
            }
            match outcome {
                Ok(Ok(response)) => {
                    let method = if req.kind.methods().contains(&req.method.as_str()) { &req.method } else { "other" };
                    *statuses.entry((req.kind, method.to_owned())).or_default().entry(response.status).or_default() +=
                        1;
                    if response.status >= 500 {
                        failures.push(format!("#{i}: {} {:?} for {}", response.status, response.body, req.describe()));
                    }
                    if std::env::var("FUZZ_SHOW").is_ok_and(|k| k == format!("{:?} {}", req.kind, req.method)) {
                        println!("{} {:?} for {}", response.status, response.body, req.describe());
                    }
                    world.learn_from(req, &response);
                }
                Ok(Err(e)) => failures.push(format!("#{i}: {e} for {}", req.describe())),
                Err(_) => failures.push(format!("#{i}: no response within {DEADLINE:?} for {}", req.describe())),
            }
        }
        if let Err(e) = base_ok(addr).await {
            failures.push(format!("after request #{}: {e}", first + batch.len() - 1));
        }
    }
    if let Err(e) = base_ok(&addr).await {
        failures.push(format!("at the end: {e}"));
    }
    println!(
        "fuzz: {count} requests in {:.1?}; known: {} repositories, {} blobs, {} manifests, {} sessions",
        started.elapsed(),
        world.repos.len(),
        world.blobs.len(),
        world.manifests.len(),
        world.uploads.len()
    );
    for ((kind, method), counts) in &statuses {
        println!("fuzz: {kind:?} {method}: {counts:?}");
    }
    println!("fuzz: slowest request {slowest:.1?}: {slowest_request}");
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures, first ones:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The response parser itself, so that a parser bug cannot hide a server bug.
#[test]
fn response_parser() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    let (r, used) = parse_response(ok, false, false).unwrap().unwrap();
    assert_eq!((r.status, used), (200, ok.len()));
    assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}", false, false).unwrap().is_none());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{}", false, true).is_err());
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 30\r\n\r\n";
    assert_eq!(parse_response(head, true, false).unwrap().unwrap().1, head.len());
    let chunked =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
    let (r, used) = parse_response(chunked, false, false).unwrap().unwrap();
    assert_eq!((r.status, used), (201, chunked.len()));
    assert!(parse_response(b"HTTP/1.1 2000 OK\r\n\r\n", false, true).is_err());
    assert!(parse_response(b"garbage\r\n\r\n", false, true).is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", false, true).is_err());
    assert!(parse_response(b"", false, true).is_err());
}
