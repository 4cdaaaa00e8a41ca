//! Two `berth-registry` processes on one storage, the way replicas share a
//! volume or a bucket (each test runs on a directory and on a real MinIO): one
//! upload session continued through both, racing pushes of one digest, racing
//! tag pushes, and manifest deletes racing tag pushes.
//!
//! Whether a race actually happens differs from run to run; what is asserted does
//! not: every outcome must satisfy the invariants checked here, so a failure names
//! a broken guarantee, not an unlucky schedule. Each test collects every problem it
//! sees and reports them all at the end. The same clients run against a single
//! process where that makes a useful control.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{OCI_CONFIG, OCI_MANIFEST, content, verify_blob_files};
use futures_util::future::join_all;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each test's own deadline, well inside what a CI job tolerates.
const BUDGET: Duration = Duration::from_secs(50);

async fn within_budget(test: impl Future<Output = ()>) {
    if tokio::time::timeout(BUDGET, test).await.is_err() {
        panic!("the test did not finish within {BUDGET:?}: a request hung or a registry process stalled");
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Where and how `got` differs from `want`.
fn difference(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("{} bytes instead of {}", got.len(), want.len());
    }
    let Some(first) = got.iter().zip(want).position(|(a, b)| a != b) else {
        return "the same bytes".into();
    };
    let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let zeros = got[first..].iter().take_while(|b| **b == 0).count();
    format!("{differing} of {} bytes wrong, the first at offset {first}, where {zeros} zero bytes follow", got.len())
}

/// Which chunk the first wrong byte of `got` was sent in, for messages.
fn sent_in(sent: &[(u64, u64, String)], got: &[u8], want: &[u8]) -> String {
    let Some(first) = got.iter().zip(want).position(|(a, b)| a != b) else { return String::new() };
    let first = first as u64;
    match sent.iter().rev().find(|(start, end, _)| (*start..*end).contains(&first)) {
        Some((start, end, what)) => format!(" (sent in {what} as bytes {start}-{})", end - 1),
        None => String::new(),
    }
}

/// One registry process, killed when dropped (also when a test panics).
struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    async fn start(storage: &[std::ffi::OsString]) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-registry"))
            .args(["--listen", &addr])
            .args(storage)
            .env_remove("BERTH_CONFIG")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = Process { child, addr };
        let client = Client::new();
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("http://{}/v2/", process.addr)).send().await
                && r.status() == StatusCode::OK
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("berth-registry on {} did not start", process.addr);
    }
}

/// Where the processes keep their content.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// One directory, as on a shared volume.
    Fs,
    /// One prefix of a bucket on the tests' MinIO.
    S3,
}

/// Registry processes on one storage. Request helpers take a process index
/// and wrap it around, so the same code drives one process or two.
struct Replicas {
    processes: Vec<Process>,
    client: Client,
    root: PathBuf,
    s3: Option<berth_registry::config::S3Config>,
    _dir: tempfile::TempDir,
}

impl Replicas {
    async fn start(count: usize, backend: Backend) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (args, s3) = match backend {
            Backend::Fs => (vec!["--root".into(), root.clone().into_os_string()], None),
            Backend::S3 => {
                let (file, s3) = common::minio::config_file(dir.path());
                (vec!["--config".into(), file.into_os_string()], Some(s3))
            }
        };
        let mut processes = Vec::new();
        for _ in 0..count {
            processes.push(Process::start(&args).await);
        }
        // A connection per request: a registry may close a connection after refusing
        // a request whose body it did not read, and a pooled connection reused just
        // then fails on the client's side, which is no fault of the registry.
        let client = Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(0).build().unwrap();
        Replicas { processes, client, root, s3, _dir: dir }
    }

    /// Every stored blob checked against its name: (checked, problems).
    async fn verify(&self) -> (usize, Vec<String>) {
        match &self.s3 {
            Some(s3) => common::minio::verify_blobs(s3).await,
            None => verify_blob_files(&self.root),
        }
    }

    fn index(&self, i: usize) -> usize {
        i % self.processes.len()
    }

    /// `A`, `B`, ... for messages.
    fn name(&self, i: usize) -> char {
        (b'A' + self.index(i) as u8) as char
    }

    fn addr(&self, i: usize) -> &str {
        &self.processes[self.index(i)].addr
    }

    fn req(&self, i: usize, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("http://{}{path}", self.addr(i)))
    }
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    fn error_code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_default();
        body["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }

    fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        format!("{} {body}", self.status)
    }
}

/// An error with its chain of causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn send(request: RequestBuilder) -> Result<Reply, String> {
    let r = request.send().await.map_err(|e| format!("request failed: {}", chain(&e)))?;
    let (status, headers) = (r.status(), r.headers().clone());
    let body = r.bytes().await.map_err(|e| format!("reading the response body: {}", chain(&e)))?.to_vec();
    Ok(Reply { status, headers, body })
}

/// The path of a `Location` (absolute or relative), to send it to any process.
fn path_of(location: &str) -> String {
    match location.strip_prefix("http://").or_else(|| location.strip_prefix("https://")) {
        Some(rest) => rest.find('/').map(|i| rest[i..].to_owned()).unwrap_or_else(|| "/".into()),
        None => location.to_owned(),
    }
}

async fn push_blob(r: &Replicas, i: usize, repo: &str, body: &[u8]) -> Result<Reply, String> {
    let digest = sha256(body);
    send(r.req(i, Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}")).body(body.to_vec())).await
}

async fn get_blob(r: &Replicas, i: usize, repo: &str, digest: &str) -> Result<Reply, String> {
    send(r.req(i, Method::GET, &format!("/v2/{repo}/blobs/{digest}"))).await
}

async fn put_manifest(r: &Replicas, i: usize, repo: &str, reference: &str, body: &[u8]) -> Result<Reply, String> {
    send(
        r.req(i, Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(body.to_vec()),
    )
    .await
}

async fn get_manifest(r: &Replicas, i: usize, repo: &str, reference: &str) -> Result<Reply, String> {
    send(r.req(i, Method::GET, &format!("/v2/{repo}/manifests/{reference}")).header("accept", OCI_MANIFEST)).await
}

/// Every tag of `repo` as process `i` lists it, following `Link` pages.
async fn list_tags(r: &Replicas, i: usize, repo: &str) -> Result<Vec<String>, String> {
    let mut tags = Vec::new();
    let mut path = format!("/v2/{repo}/tags/list");
    loop {
        let reply = send(r.req(i, Method::GET, &path)).await?;
        if reply.status != StatusCode::OK {
            return Err(format!("GET {path} answered {}", reply.describe()));
        }
        let body: Value = serde_json::from_slice(&reply.body).map_err(|e| format!("tag list is not JSON: {e}"))?;
        for tag in body["tags"].as_array().into_iter().flatten() {
            tags.push(tag.as_str().unwrap_or_default().to_owned());
        }
        let link = reply.header("link");
        match link.split_once('<').and_then(|(_, rest)| rest.split_once('>')) {
            Some((next, _)) if link.contains("rel=\"next\"") => path = path_of(next),
            _ => return Ok(tags),
        }
    }
}

/// An OCI image manifest with the empty config `{}`, no layers, and `annotations`
/// to make it distinct.
fn manifest(annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": 2},
        "layers": [],
        "annotations": annotations,
    }))
    .unwrap()
}

/// Fails with the problems seen, the first few in full.
fn report(problems: &[String], what: &str) {
    const SHOWN: usize = 25;
    let mut lines = problems[..problems.len().min(SHOWN)].join("\n  ");
    if problems.len() > SHOWN {
        lines.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    assert!(problems.is_empty(), "{} problem(s) with {what}:\n  {lines}", problems.len());
}

// ---------------------------------------------------------------------------
// 1. One upload session through two processes.

/// Total size of the blob uploaded through both processes.
const SESSION_BLOB: usize = (12 << 20) + 12_345;
/// How long the slow client pauses mid-chunk, and how long the abandoned copy lives.
const PAUSE: Duration = Duration::from_millis(150);

#[derive(Clone, Copy, Debug)]
enum Step {
    /// The chunk goes to one process.
    One,
    /// The same chunk (same `Content-Range`) goes to both processes at once.
    Both,
    /// The chunk goes to one process slowly; meanwhile a copy goes to the other
    /// process and is abandoned part way (a retry given up, a hedged request).
    Stalled,
}

async fn patch(r: &Replicas, i: usize, location: &str, start: u64, chunk: &[u8]) -> Result<Reply, String> {
    let end = start + chunk.len() as u64 - 1;
    send(
        r.req(i, Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{end}"))
            .body(chunk.to_vec()),
    )
    .await
}

/// The upload's size as process `i` reports it; `None` once the session is gone.
async fn upload_offset(r: &Replicas, i: usize, location: &str) -> Result<Option<u64>, String> {
    let reply = send(r.req(i, Method::GET, location)).await?;
    match reply.status {
        StatusCode::NO_CONTENT => {
            let range = reply.header("range");
            let end: u64 = range
                .strip_prefix("0-")
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| format!("malformed Range {range:?} in the upload status"))?;
            // `0-0` is what an empty upload reports; no chunk here is one byte long.
            Ok(Some(if end == 0 { 0 } else { end + 1 }))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(format!("upload status answered {}", reply.describe())),
    }
}

/// Reads a whole HTTP/1.1 response from a connection the server closes after it.
async fn read_reply(mut stream: TcpStream) -> Result<Reply, String> {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "no reply within 30 s".to_owned())?;
    if let Err(e) = read
        && raw.is_empty()
    {
        return Err(format!("reading the reply: {e}"));
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the reply has no complete header")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("malformed status line in {head:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim()))
        {
            headers.append(name, value);
        }
    }
    Ok(Reply { status, headers, body: raw[end + 4..].to_vec() })
}

/// Sends `chunk` to process `p` in two parts with a pause between. During the
/// pause the same chunk, with the same `Content-Range`, goes to process `q`, which
/// gets only its first few KiB before the client closes that connection. Returns
/// the reply to the request on `p`.
async fn stalled_patch(
    r: &Replicas,
    p: usize,
    q: usize,
    location: &str,
    start: u64,
    chunk: &[u8],
) -> Result<Reply, String> {
    let head = |addr: &str| {
        format!(
            "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
             Content-Range: {start}-{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            start + chunk.len() as u64 - 1,
            chunk.len()
        )
    };
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    // More than the registry buffers (1 MiB), so part of the chunk is on disk
    // while the client pauses.
    let split = chunk.len() * 3 / 4;
    let mut slow = TcpStream::connect(r.addr(p)).await.map_err(io("connecting"))?;
    slow.write_all(head(r.addr(p)).as_bytes()).await.map_err(io("sending the slow request's header"))?;
    slow.write_all(&chunk[..split]).await.map_err(io("sending the slow request's first part"))?;
    tokio::time::sleep(PAUSE).await;
    let part = (chunk.len() / 2).min(4096);
    if part > 0 {
        let mut abandoned = TcpStream::connect(r.addr(q)).await.map_err(io("connecting"))?;
        abandoned.write_all(head(r.addr(q)).as_bytes()).await.map_err(io("sending the abandoned header"))?;
        abandoned.write_all(&chunk[..part]).await.map_err(io("sending the abandoned part"))?;
        tokio::time::sleep(PAUSE).await;
        // Dropping the connection ends that request with its body incomplete.
    }
    // A registry that refused the slow request early has closed that connection;
    // its reply is still there to read.
    let _ = slow.write_all(&chunk[split..]).await;
    read_reply(slow).await
}

/// One upload session, its chunks spread over the processes: to one at a time,
/// to two at once, and to one slowly while an abandoned copy goes to another.
/// A chunk may be refused (4xx); the client then asks for the upload's size and
/// continues from there. Whatever the registry refuses, it must never acknowledge
/// bytes it then loses, serve or store a blob whose content does not match its
/// digest, or keep serving wrong content after a verified push of that digest.
async fn upload_session_through(processes: usize, backend: Backend) {
    let r = Replicas::start(processes, backend).await;
    let repo = "twoproc/session";
    let data = content(1, SESSION_BLOB);
    let digest = sha256(&data);
    let total = data.len() as u64;
    let mut problems = Vec::new();

    let started = send(r.req(0, Method::POST, &format!("/v2/{repo}/blobs/uploads/"))).await.unwrap();
    assert_eq!(started.status, StatusCode::ACCEPTED, "starting the upload on A: {}", started.describe());
    let mut location = path_of(&started.header("location"));

    let mut offset = 0u64; // the size the registry last reported
    let mut acked = 0u64; // the largest size a 202 acknowledged since
    let mut refused = None; // why the registry gave up on the session, if it did
    let mut step = 0usize;
    let mut sent = Vec::new(); // (start, end, what) of every chunk sent
    while offset < total {
        if step == 200 {
            problems.push(format!("no progress: {offset} of {total} bytes after 200 steps"));
            break;
        }
        let kind = [Step::One, Step::Both, Step::Stalled, Step::Both][step % 4];
        let planned = match kind {
            Step::One => 96 << 10,
            Step::Both => 320 << 10,
            Step::Stalled => 2 << 20,
        } + step;
        let len = (planned as u64).min(total - offset);
        let chunk = &data[offset as usize..(offset + len) as usize];
        let end = offset + len;
        let (p, q) = (step / 4, step / 4 + 1);
        let replies = match kind {
            Step::One => vec![(r.name(p), patch(&r, p, &location, offset, chunk).await)],
            Step::Both => {
                let (x, y) =
                    tokio::join!(patch(&r, p, &location, offset, chunk), patch(&r, q, &location, offset, chunk));
                vec![(r.name(p), x), (r.name(q), y)]
            }
            Step::Stalled => vec![(r.name(p), stalled_patch(&r, p, q, &location, offset, chunk).await)],
        };
        sent.push((offset, end, format!("step {step} ({kind:?})")));
        for (process, reply) in replies {
            let what = format!("step {step} ({kind:?}): PATCH {offset}-{} to {process}", end - 1);
            match reply {
                Ok(reply) if reply.status == StatusCode::ACCEPTED => {
                    let range = reply.header("range");
                    if range != format!("0-{}", end - 1) {
                        problems.push(format!("{what} was acknowledged with Range {range:?}"));
                    }
                    acked = acked.max(end);
                    let next = reply.header("location");
                    if !next.is_empty() {
                        location = path_of(&next);
                    }
                }
                // Refused (in use, out of order): the client resynchronises below.
                Ok(reply) if reply.status.is_client_error() => {}
                Ok(reply) => problems.push(format!("{what} answered {}", reply.describe())),
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
        let status_on = step / 4 + 1;
        match upload_offset(&r, status_on, &location).await {
            Ok(Some(now)) if now > total => {
                problems
                    .push(format!("step {step}: {} reports {now} bytes of a {total}-byte upload", r.name(status_on)));
                break;
            }
            Ok(Some(now)) => {
                if now < acked {
                    problems.push(format!(
                        "step {step}: {} reports {now} bytes after {acked} were acknowledged (acknowledged bytes lost)",
                        r.name(status_on)
                    ));
                    acked = now;
                }
                offset = now;
            }
            Ok(None) => {
                refused = Some(format!("the session was gone at step {step}"));
                break;
            }
            Err(e) => {
                problems.push(format!("step {step}: {e}"));
                break;
            }
        }
        step += 1;
    }

    let mut published = false;
    if refused.is_none() && offset == total {
        // Nothing is in flight now: both processes must see the same session.
        for i in 0..processes {
            match upload_offset(&r, i, &location).await {
                Ok(Some(n)) if n == total => {}
                other => problems.push(format!(
                    "{} reports {other:?} for the upload instead of Some({total}) once all chunks are in",
                    r.name(i)
                )),
            }
        }
        match send(r.req(1, Method::PUT, &format!("{location}?digest={digest}"))).await {
            Ok(reply) if reply.status == StatusCode::CREATED => published = true,
            Ok(reply) if reply.status.is_client_error() => {
                refused = Some(format!("the final PUT was refused: {}", reply.describe()))
            }
            Ok(reply) => problems.push(format!("the final PUT answered {}", reply.describe())),
            Err(e) => problems.push(format!("the final PUT: {e}")),
        }
    }
    for i in 0..processes {
        match get_blob(&r, i, repo, &digest).await {
            Ok(reply) if reply.status == StatusCode::OK => {
                if reply.body != data {
                    problems.push(format!(
                        "after the final PUT ({}), {} serves {digest} with {}{}",
                        if published { "201" } else { "refused" },
                        r.name(i),
                        difference(&reply.body, &data),
                        sent_in(&sent, &reply.body, &data)
                    ));
                }
            }
            Ok(reply) if reply.status == StatusCode::NOT_FOUND && !published => {}
            Ok(reply) => problems.push(format!(
                "GET {digest} from {} after the final PUT answered {}",
                r.name(i),
                reply.describe()
            )),
            Err(e) => problems.push(format!("GET {digest} from {}: {e}", r.name(i))),
        }
    }
    let (checked, bad) = r.verify().await;
    if published && checked == 0 {
        problems.push("no file under blobs/sha256 although the upload was acknowledged".into());
    }
    let stored_wrong = !bad.is_empty();
    problems.extend(bad.into_iter().map(|b| format!("after the upload: {b}")));

    // A verified push of the same digest must leave it stored and served intact.
    match push_blob(&r, 0, repo, &data).await {
        Ok(reply) if reply.status == StatusCode::CREATED => {}
        Ok(reply) => problems.push(format!("the monolithic re-push of {digest} answered {}", reply.describe())),
        Err(e) => problems.push(format!("the monolithic re-push of {digest}: {e}")),
    }
    for i in 0..processes {
        match get_blob(&r, i, repo, &digest).await {
            Ok(reply) if reply.status == StatusCode::OK && reply.body == data => {}
            Ok(reply) if reply.status == StatusCode::OK => problems.push(format!(
                "after a verified monolithic push of {digest}, {} still serves {}{}{}",
                r.name(i),
                difference(&reply.body, &data),
                sent_in(&sent, &reply.body, &data),
                if stored_wrong { " (the blob file already there was kept without verifying it)" } else { "" }
            )),
            Ok(reply) => problems.push(format!(
                "GET {digest} from {} after the re-push answered {}",
                r.name(i),
                reply.describe()
            )),
            Err(e) => problems.push(format!("GET {digest} from {} after the re-push: {e}", r.name(i))),
        }
    }
    let (_, bad) = r.verify().await;
    problems.extend(bad.into_iter().map(|b| format!("after the re-push: {b}")));

    eprintln!(
        "upload through {processes} process(es): {step} steps, {}",
        refused.as_deref().unwrap_or(if published { "published" } else { "not finished" })
    );
    report(&problems, &format!("one upload session continued through {processes} process(es)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_upload_session_through_two_processes() {
    within_budget(upload_session_through(2, Backend::Fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_upload_session_through_two_processes_on_s3() {
    within_budget(upload_session_through(2, Backend::S3)).await;
}

/// The same client against a single process: a control for the test above, since
/// one process serialises the requests on a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_upload_session_through_one_process() {
    within_budget(upload_session_through(1, Backend::Fs)).await;
}

// ---------------------------------------------------------------------------
// 2. Racing pushes of one digest with different bodies.

const DIGEST_ROUNDS: usize = 10;

/// A push of `body` as blob `digest`: monolithic, or as a session started on
/// `start_on` with its first half PATCHed through `patch_on` and finished on
/// `put_on` (the second half in its own PATCH through `start_on`, or in the PUT).
#[derive(Clone, Copy)]
enum Push {
    Monolithic { on: usize },
    Chunked { start_on: usize, patch_on: usize, put_on: usize, last_in_put: bool },
}

async fn push_as(r: &Replicas, repo: &str, digest: &str, body: &[u8], how: Push) -> Result<Reply, String> {
    let (start_on, patch_on, put_on, last_in_put) = match how {
        Push::Monolithic { on } => {
            return send(
                r.req(on, Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}")).body(body.to_vec()),
            )
            .await;
        }
        Push::Chunked { start_on, patch_on, put_on, last_in_put } => (start_on, patch_on, put_on, last_in_put),
    };
    let started = send(r.req(start_on, Method::POST, &format!("/v2/{repo}/blobs/uploads/"))).await?;
    if started.status != StatusCode::ACCEPTED {
        return Err(format!("starting the session on {} answered {}", r.name(start_on), started.describe()));
    }
    let location = path_of(&started.header("location"));
    let half = body.len() / 2;
    let reply = patch(r, patch_on, &location, 0, &body[..half]).await?;
    if reply.status != StatusCode::ACCEPTED {
        return Err(format!("the first PATCH on {} answered {}", r.name(patch_on), reply.describe()));
    }
    let put = r.req(put_on, Method::PUT, &format!("{location}?digest={digest}"));
    if last_in_put {
        let range = format!("{half}-{}", body.len() - 1);
        return send(put.header("content-range", range).body(body[half..].to_vec())).await;
    }
    let reply = patch(r, start_on, &location, half as u64, &body[half..]).await?;
    if reply.status != StatusCode::ACCEPTED {
        return Err(format!("the second PATCH on {} answered {}", r.name(start_on), reply.describe()));
    }
    send(put).await
}

/// Pushes of one digest race through two processes, with the right body and with
/// wrong bodies of the same length, monolithic and chunked (sessions handed from
/// one process to the other between requests). Wrong bodies must be refused with
/// DIGEST_INVALID, right ones acknowledged, and the digest always served with the
/// right bytes by both processes; nothing stored may differ from its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_of_one_digest_with_different_bodies() {
    within_budget(racing_pushes_of_one_digest(Backend::Fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_of_one_digest_with_different_bodies_on_s3() {
    within_budget(racing_pushes_of_one_digest(Backend::S3)).await;
}

async fn racing_pushes_of_one_digest(backend: Backend) {
    {
        let r = Replicas::start(2, backend).await;
        let repo = "twoproc/digest";
        let good = content(2, (1 << 20) + 4321);
        let mut flipped = good.clone();
        for i in (0..flipped.len()).step_by(64 << 10) {
            flipped[i] ^= 0xff;
        }
        let other = content(3, good.len());
        let digest = sha256(&good);
        let mut problems = Vec::new();

        for round in 0..DIGEST_ROUNDS {
            let (a, b) = (round, round + 1); // A and B, swapped every round
            let pushes: Vec<(&str, &[u8], Push)> = vec![
                ("right body, monolithic", good.as_slice(), Push::Monolithic { on: a }),
                ("right body, monolithic", good.as_slice(), Push::Monolithic { on: b }),
                ("flipped bytes, monolithic", flipped.as_slice(), Push::Monolithic { on: a }),
                ("other body, monolithic", other.as_slice(), Push::Monolithic { on: b }),
                (
                    "flipped bytes, chunked",
                    flipped.as_slice(),
                    Push::Chunked { start_on: a, patch_on: b, put_on: a, last_in_put: false },
                ),
                (
                    "other body, chunked",
                    other.as_slice(),
                    Push::Chunked { start_on: b, patch_on: a, put_on: b, last_in_put: true },
                ),
                (
                    "right body, chunked",
                    good.as_slice(),
                    Push::Chunked { start_on: a, patch_on: b, put_on: b, last_in_put: true },
                ),
                (
                    "right body, chunked",
                    good.as_slice(),
                    Push::Chunked { start_on: b, patch_on: a, put_on: a, last_in_put: false },
                ),
            ];
            let replies = join_all(pushes.iter().map(|(_, body, how)| push_as(&r, repo, &digest, body, *how))).await;
            for ((what, body, how), reply) in pushes.iter().zip(replies) {
                let last = match how {
                    Push::Monolithic { on } => *on,
                    Push::Chunked { put_on, .. } => *put_on,
                };
                let what = format!("round {round}: {what} as {digest}, finished on {}", r.name(last));
                let right = *body == good.as_slice();
                match reply {
                    Ok(reply) if right && reply.status == StatusCode::CREATED => {
                        if reply.header("docker-content-digest") != digest {
                            problems.push(format!(
                                "{what}: Docker-Content-Digest {:?}",
                                reply.header("docker-content-digest")
                            ));
                        }
                    }
                    Ok(reply)
                        if !right
                            && reply.status == StatusCode::BAD_REQUEST
                            && reply.error_code() == "DIGEST_INVALID" => {}
                    Ok(reply) => problems.push(format!(
                        "{what} answered {} (expected {})",
                        reply.describe(),
                        if right { "201" } else { "400 DIGEST_INVALID" }
                    )),
                    Err(e) => problems.push(format!("{what}: {e}")),
                }
            }
            for i in 0..2 {
                match get_blob(&r, i, repo, &digest).await {
                    Ok(reply) if reply.status == StatusCode::OK && reply.body == good => {}
                    Ok(reply) if reply.status == StatusCode::OK => problems.push(format!(
                        "round {round}: {} serves {digest} with {}",
                        r.name(i),
                        difference(&reply.body, &good)
                    )),
                    Ok(reply) => problems.push(format!(
                        "round {round}: GET {digest} from {} answered {}",
                        r.name(i),
                        reply.describe()
                    )),
                    Err(e) => problems.push(format!("round {round}: GET {digest} from {}: {e}", r.name(i))),
                }
            }
        }
        for wrong in [&flipped, &other] {
            let d = sha256(wrong);
            match get_blob(&r, 0, repo, &d).await {
                Ok(reply) if reply.status == StatusCode::NOT_FOUND => {}
                Ok(reply) => problems.push(format!("a refused body is served as {d}: {}", reply.status)),
                Err(e) => problems.push(format!("GET {d}: {e}")),
            }
        }
        let (checked, bad) = r.verify().await;
        if checked == 0 {
            problems.push("no file under blobs/sha256 although pushes were acknowledged".into());
        }
        problems.extend(bad);
        report(&problems, "racing pushes of one digest with different bodies");
    }
}

// ---------------------------------------------------------------------------
// 3. Racing tag pushes.

const TAG_WRITERS: usize = 6;
const TAG_ROUNDS: usize = 12;

/// One PUT of a manifest to the shared tag.
struct SharedPut {
    digest: String,
    writer: usize,
    round: usize,
    process: char,
    status: Option<StatusCode>,
    began: Instant,
    ended: Instant,
}

/// Writers on both processes push distinct manifests to one shared tag and each
/// to tags of its own, while a reader polls the shared tag. Every acknowledged tag
/// must exist afterwards on both processes; the shared tag must point at an
/// acknowledged manifest that no later acknowledged push overwrote, and must never
/// be missing or torn while it is only being overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_tag_pushes_from_two_processes() {
    within_budget(racing_tag_pushes(Backend::Fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_tag_pushes_from_two_processes_on_s3() {
    within_budget(racing_tag_pushes(Backend::S3)).await;
}

async fn racing_tag_pushes(backend: Backend) {
    {
        let r = Replicas::start(2, backend).await;
        let repo = "twoproc/tags";
        let config = push_blob(&r, 0, repo, b"{}").await.unwrap();
        assert_eq!(config.status, StatusCode::CREATED, "pushing the config blob: {}", config.describe());
        let mut problems = Vec::new();

        let writer = |w: usize| {
            let r = &r;
            async move {
                let mut shared = Vec::new();
                let mut own = Vec::new();
                for round in 0..TAG_ROUNDS {
                    let body = manifest(json!({"writer": w.to_string(), "round": round.to_string()}));
                    let digest = sha256(&body);
                    let i = w + round;
                    let began = Instant::now();
                    let reply = put_manifest(r, i, repo, "shared", &body).await;
                    let ended = Instant::now();
                    let status = reply.as_ref().ok().map(|reply| reply.status);
                    shared.push((
                        SharedPut {
                            digest: digest.clone(),
                            writer: w,
                            round,
                            process: r.name(i),
                            status,
                            began,
                            ended,
                        },
                        reply.err(),
                    ));
                    let tag = format!("w{w}-r{round}");
                    let reply = put_manifest(r, i + 1, repo, &tag, &body).await;
                    own.push((tag, digest, r.name(i + 1), reply));
                }
                (shared, own)
            }
        };
        let done = AtomicBool::new(false);
        let writers = async {
            let results = join_all((0..TAG_WRITERS).map(writer)).await;
            done.store(true, Ordering::SeqCst);
            results
        };
        let reader = async {
            let mut seen = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                let began = Instant::now();
                seen.push((began, r.name(i), get_manifest(&r, i, repo, "shared").await));
                i += 1;
            }
            seen
        };
        let (results, seen) = tokio::join!(writers, reader);

        let mut shared = Vec::new();
        let mut own = Vec::new();
        for (s, o) in results {
            shared.extend(s);
            own.extend(o);
        }
        for (put, error) in &shared {
            match (put.status, error) {
                (Some(s), _) if s == StatusCode::CREATED || s.is_client_error() => {}
                (Some(s), _) => problems.push(format!(
                    "PUT of writer {} round {} to shared on {} answered {s}",
                    put.writer, put.round, put.process
                )),
                (None, Some(e)) => {
                    problems.push(format!("PUT of writer {} round {} to shared: {e}", put.writer, put.round))
                }
                (None, None) => unreachable!(),
            }
        }
        let acked: Vec<&SharedPut> =
            shared.iter().map(|(p, _)| p).filter(|p| p.status == Some(StatusCode::CREATED)).collect();
        let attempted: Vec<&str> = shared.iter().map(|(p, _)| p.digest.as_str()).collect();
        let first_ack = acked.iter().map(|p| p.ended).min();

        // What the reader saw while the tag was only ever overwritten.
        for (began, process, reply) in &seen {
            match reply {
                Ok(reply) if reply.status == StatusCode::OK => {
                    let served = sha256(&reply.body);
                    let named = reply.header("docker-content-digest");
                    if served != named || !attempted.contains(&served.as_str()) {
                        problems.push(format!(
                            "GET shared from {process} served content {served} as {named}, not one of the pushed manifests"
                        ));
                    }
                }
                Ok(reply) if reply.status == StatusCode::NOT_FOUND && first_ack.is_none_or(|t| *began < t) => {}
                Ok(reply) => problems.push(format!(
                    "GET shared from {process}, {:?} after the first acknowledged push, answered {}",
                    first_ack.map(|t| began.saturating_duration_since(t)),
                    reply.describe()
                )),
                Err(e) => problems.push(format!("GET shared from {process}: {e}")),
            }
        }

        // Where the shared tag ended up.
        let mut finals = Vec::new();
        for i in 0..2 {
            match get_manifest(&r, i, repo, "shared").await {
                Ok(reply) if reply.status == StatusCode::OK => finals.push(reply.header("docker-content-digest")),
                Ok(reply) => {
                    problems.push(format!("GET shared from {} at the end answered {}", r.name(i), reply.describe()))
                }
                Err(e) => problems.push(format!("GET shared from {} at the end: {e}", r.name(i))),
            }
        }
        if finals.len() == 2 && finals[0] != finals[1] {
            problems.push(format!("A and B disagree on the shared tag at the end: {} and {}", finals[0], finals[1]));
        }
        if let Some(last) = finals.first() {
            match acked.iter().find(|p| p.digest == *last) {
                None => problems.push(format!("the shared tag points at {last}, which no acknowledged PUT pushed")),
                Some(winner) => {
                    for later in acked.iter().filter(|p| p.began > winner.ended) {
                        problems.push(format!(
                            "the shared tag points at writer {} round {} (acknowledged by {}), but writer {} round {} \
                             began its acknowledged PUT (to {}) after that one was answered: a later write was lost",
                            winner.writer, winner.round, winner.process, later.writer, later.round, later.process
                        ));
                    }
                }
            }
        }

        // Every acknowledged tag of its own.
        let mut acked_tags = vec!["shared".to_owned()];
        for (tag, digest, process, reply) in &own {
            match reply {
                Ok(reply) if reply.status == StatusCode::CREATED => acked_tags.push(tag.clone()),
                Ok(reply) if reply.status.is_client_error() => continue,
                Ok(reply) => {
                    problems.push(format!("PUT to {tag} on {process} answered {}", reply.describe()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("PUT to {tag} on {process}: {e}"));
                    continue;
                }
            }
            for i in 0..2 {
                match get_manifest(&r, i, repo, tag).await {
                    Ok(reply) if reply.status == StatusCode::OK && reply.header("docker-content-digest") == *digest => {
                    }
                    Ok(reply) => problems.push(format!(
                        "tag {tag}, acknowledged by {process} for {digest}: GET from {} answered {} ({})",
                        r.name(i),
                        reply.describe(),
                        reply.header("docker-content-digest")
                    )),
                    Err(e) => problems.push(format!("GET {tag} from {}: {e}", r.name(i))),
                }
            }
        }
        for i in 0..2 {
            match list_tags(&r, i, repo).await {
                Ok(listed) => {
                    for tag in acked_tags.iter().filter(|t| !listed.contains(t)) {
                        problems.push(format!("acknowledged tag {tag} is missing from {}'s tag list", r.name(i)));
                    }
                    for tag in &listed {
                        match get_manifest(&r, i, repo, tag).await {
                            Ok(reply) if reply.status == StatusCode::OK => {}
                            Ok(reply) => problems.push(format!(
                                "tag {tag} is listed by {} but GET answered {}",
                                r.name(i),
                                reply.describe()
                            )),
                            Err(e) => problems.push(format!("GET {tag} from {}: {e}", r.name(i))),
                        }
                    }
                }
                Err(e) => problems.push(format!("listing tags on {}: {e}", r.name(i))),
            }
        }
        eprintln!(
            "racing tag pushes: {} of {} shared PUTs acknowledged, {} reads of the shared tag",
            acked.len(),
            shared.len(),
            seen.len()
        );
        report(&problems, "racing tag pushes from two processes");
    }
}

// ---------------------------------------------------------------------------
// 4. DELETE of a manifest racing tag PUTs.

/// Tags per iteration that point at the deleted manifest and are moved away
/// concurrently: each is a chance for the DELETE to read a tag as M1's and remove
/// it after it was moved to M2.
const MOVED_TAGS: usize = 8;
/// Enough for lost moves to show in most runs, small enough for a slow disk (every
/// iteration syncs some 60 files and directories).
const DELETE_ITERATIONS: usize = 100;

/// A loop over fresh manifests M1 and M2: M1 is tagged `a<i>-<j>`; then at once
/// M1 is deleted by digest, M2 is pushed to every `a<i>-<j>` and M1 is pushed
/// again to `b<i>`. Linearizability allows the DELETE before or after each PUT,
/// but in every order: the DELETE succeeds (M1 was there), an acknowledged
/// `a<i>-<j>` points at M2 (the DELETE only removes tags pointing at M1), an
/// acknowledged `b<i>` either resolves to M1 or is gone together with M1, and no
/// listed tag ever points at a manifest that is gone.
async fn delete_races_tag_push(processes: usize, backend: Backend) {
    let r = Replicas::start(processes, backend).await;
    let repo = "twoproc/delete";
    let config = push_blob(&r, 0, repo, b"{}").await.unwrap();
    assert_eq!(config.status, StatusCode::CREATED, "pushing the config blob: {}", config.describe());
    // Acknowledged tags that went missing, listed tags whose manifest is gone, the rest.
    let (mut lost, mut dangling, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let mut dangling_tags = HashSet::new();
    let answer = |got: Result<Reply, String>| match got {
        Ok(g) => format!("{} {}", g.status, g.header("docker-content-digest")).trim_end().to_owned(),
        Err(e) => e,
    };
    let get_digest = |reply: &Result<Reply, String>| match reply {
        Ok(reply) if reply.status == StatusCode::OK => Some(reply.header("docker-content-digest")),
        _ => None,
    };

    // A round trip to MinIO costs what a file write does here, and an S3
    // iteration makes ten times more of them.
    let iterations = match backend {
        Backend::Fs => DELETE_ITERATIONS,
        Backend::S3 => DELETE_ITERATIONS / 5,
    };
    for it in 0..iterations {
        let m1 = manifest(json!({"iteration": it.to_string(), "manifest": "M1"}));
        let m2 = manifest(json!({"iteration": it.to_string(), "manifest": "M2"}));
        let (d1, d2) = (sha256(&m1), sha256(&m2));
        let moved: Vec<String> = (0..MOVED_TAGS).map(|j| format!("a{it}-{j}")).collect();
        let kept = format!("b{it}");
        let query: Vec<String> = moved.iter().map(|t| format!("tag={t}")).collect();
        let setup = put_manifest(&r, it, repo, &format!("{d1}?{}", query.join("&")), &m1).await.unwrap();
        assert_eq!(setup.status, StatusCode::CREATED, "iteration {it}: tagging M1: {}", setup.describe());

        let delete = send(r.req(0, Method::DELETE, &format!("/v2/{repo}/manifests/{d1}")));
        let moves = join_all(moved.iter().enumerate().map(|(j, tag)| put_manifest(&r, j + 1, repo, tag, &m2)));
        let repush = put_manifest(&r, 1, repo, &kept, &m1);
        let (delete, moves, repush) = tokio::join!(delete, moves, repush);

        let at = format!("iteration {it}");
        match &delete {
            Ok(reply) if reply.status == StatusCode::ACCEPTED => {}
            Ok(reply) => problems.push(format!("{at}: DELETE M1 on A answered {} (M1 existed)", reply.describe())),
            Err(e) => problems.push(format!("{at}: DELETE M1: {e}")),
        }
        let mut m2_acked = false;
        for (j, (tag, reply)) in moved.iter().zip(&moves).enumerate() {
            match reply {
                Ok(reply) if reply.status == StatusCode::CREATED => m2_acked = true,
                Ok(reply) if reply.status.is_client_error() => continue,
                Ok(reply) => {
                    problems.push(format!("{at}: PUT M2 to {tag} answered {}", reply.describe()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{at}: PUT M2 to {tag}: {e}"));
                    continue;
                }
            }
            for i in 0..processes {
                let got = get_manifest(&r, i, repo, tag).await;
                if get_digest(&got).as_deref() != Some(d2.as_str()) {
                    lost.push(format!(
                        "{at}: PUT M2 to {tag} was acknowledged by {} while M1 was deleted, but GET {tag} from {} \
                         answers {} (the DELETE removed a tag that no longer pointed at M1)",
                        r.name(j + 1),
                        r.name(i),
                        answer(got)
                    ));
                }
            }
        }
        if m2_acked {
            for i in 0..processes {
                let got = get_manifest(&r, i, repo, &d2).await;
                if get_digest(&got).is_none() {
                    problems.push(format!("{at}: M2 was acknowledged but GET by digest from {} fails", r.name(i)));
                }
            }
        }
        let repushed = match &repush {
            Ok(reply) if reply.status == StatusCode::CREATED => true,
            Ok(reply) if reply.status.is_client_error() => false,
            Ok(reply) => {
                problems.push(format!("{at}: PUT M1 to {kept} answered {}", reply.describe()));
                false
            }
            Err(e) => {
                problems.push(format!("{at}: PUT M1 to {kept}: {e}"));
                false
            }
        };
        for i in 0..processes {
            let by_tag = get_digest(&get_manifest(&r, i, repo, &kept).await);
            let by_digest = get_digest(&get_manifest(&r, i, repo, &d1).await);
            let state = match (&by_tag, &by_digest) {
                (Some(t), Some(_)) if *t == d1 => continue, // DELETE, then PUT
                (None, None) => continue,                   // PUT, then DELETE (or the PUT was refused)
                (Some(t), _) if *t != d1 => format!("{kept} resolves to {t}, which was never pushed to it"),
                (Some(_), None) => format!("{kept} resolves to M1 but M1 by digest is gone"),
                (None, Some(_)) if repushed => {
                    lost.push(format!("{at}: PUT M1 to {kept} was acknowledged and M1 exists, but {kept} is gone"));
                    continue;
                }
                (None, Some(_)) => continue,
                _ => unreachable!(),
            };
            problems.push(format!("{at}: DELETE M1 raced PUT M1 to {kept}; on {}: {state}", r.name(i)));
        }
        // No listed tag of this iteration may point at a manifest that is gone.
        for i in 0..processes {
            match list_tags(&r, i, repo).await {
                Ok(listed) => {
                    for tag in listed.iter().filter(|t| **t == kept || moved.contains(t)) {
                        let got = get_manifest(&r, i, repo, tag).await;
                        if get_digest(&got).is_none() && dangling_tags.insert((i, tag.clone())) {
                            dangling.push(format!(
                                "{at}: {} lists {tag} but GET {tag} answers {} (M1 was deleted and re-pushed to {kept} \
                                 concurrently)",
                                r.name(i),
                                answer(got)
                            ));
                        }
                    }
                }
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
    }
    // Once more over every tag, on every process.
    for i in 0..processes {
        match list_tags(&r, i, repo).await {
            Ok(listed) => {
                for tag in &listed {
                    let got = get_manifest(&r, i, repo, tag).await;
                    if get_digest(&got).is_none() && dangling_tags.insert((i, tag.clone())) {
                        dangling.push(format!(
                            "at the end: {} lists {tag} but GET {tag} answers {}",
                            r.name(i),
                            answer(got)
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("at the end: {e}")),
        }
    }
    let (_, bad) = r.verify().await;
    problems.extend(bad);
    let groups = [
        ("acknowledged tags lost", lost),
        ("dangling tags (listed, but their manifest is gone)", dangling),
        ("other problems", problems),
    ];
    if groups.iter().any(|(_, g)| !g.is_empty()) {
        let counts: Vec<String> = groups.iter().map(|(what, g)| format!("{} {what}", g.len())).collect();
        let mut message = format!(
            "manifest DELETE racing tag PUTs on {processes} process(es) ({backend:?}), {iterations} iterations: {}",
            counts.join(", ")
        );
        for (what, g) in &groups {
            if !g.is_empty() {
                message.push_str(&format!(
                    "\n{what}, the first {}:\n  {}",
                    g.len().min(8),
                    g[..g.len().min(8)].join("\n  ")
                ));
            }
        }
        panic!("{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_delete_races_tag_push_one_process() {
    within_budget(delete_races_tag_push(1, Backend::Fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_delete_races_tag_push_two_processes() {
    within_budget(delete_races_tag_push(2, Backend::Fs)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_delete_races_tag_push_two_processes_on_s3() {
    within_budget(delete_races_tag_push(2, Backend::S3)).await;
}
