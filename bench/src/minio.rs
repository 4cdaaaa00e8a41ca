//! MinIO, the object store of the S3 benchmark: requests to it are signed by curl
//! (SigV4), and its admin trace tells how many S3 requests a registry makes for
//! each operation.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const USER: &str = "berth-test";
pub const PASSWORD: &str = "berth-test-secret";
pub const BUCKET: &str = "berth";

/// curl with the root user's SigV4 signature, for `endpoint` + `path`.
pub fn curl(endpoint: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--aws-sigv4", "aws:amz:us-east-1:s3", "-u", &format!("{USER}:{PASSWORD}")]);
    c.arg(format!("{endpoint}{path}"));
    c
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.stderr(Stdio::inherit()).output().unwrap_or_else(|e| panic!("{what}: curl: {e}"));
    assert!(out.status.success(), "{what}: curl failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn make_bucket(endpoint: &str) {
    let mut c = curl(endpoint, &format!("/{BUCKET}"));
    c.args(["-f", "-X", "PUT"]);
    run(c, "creating the bucket");
}

/// Deletes every object under `prefix` at once (MinIO's force delete), so the
/// runs do not fill the disk.
pub fn delete_prefix(endpoint: &str, prefix: &str) {
    let mut c = curl(endpoint, &format!("/{BUCKET}/{prefix}/"));
    c.args(["-f", "-X", "DELETE", "-H", "x-minio-force-delete: true"]);
    run(c, "deleting a prefix");
}

/// Lets anyone GET the objects under `prefix` (a bucket policy), so a plain HTTP
/// client can load MinIO itself.
pub fn public_read(endpoint: &str, prefix: &str) {
    use sha2::Digest;
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":["*"]}},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::{BUCKET}/{prefix}/*"]}}]}}"#
    );
    let hash = hex::encode(sha2::Sha256::digest(&policy));
    // `policy=`, not `policy`: curl signs a bare query key wrongly.
    let mut c = curl(endpoint, &format!("/{BUCKET}?policy="));
    c.args(["-f", "-X", "PUT", "-H", &format!("x-amz-content-sha256: {hash}"), "--data-binary", &policy]);
    run(c, "setting the bucket policy");
}

/// Whether any object's key starts with `prefix`.
pub fn has_objects(endpoint: &str, prefix: &str) -> bool {
    let c = curl(endpoint, &format!("/{BUCKET}?list-type=2&max-keys=1&prefix={prefix}"));
    !run(c, "listing").contains("<KeyCount>0</KeyCount>")
}

/// One S3 request as MinIO traced it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The S3 API, e.g. `PutObjectPart`.
    pub api: String,
    pub path: String,
    pub status: u16,
    pub duration: Duration,
}

/// The S3 requests MinIO serves while this lives (its admin trace, streamed by curl).
pub struct Trace {
    endpoint: String,
    child: Child,
    calls: Arc<Mutex<Vec<Call>>>,
    markers: u32,
}

impl Trace {
    pub fn start(endpoint: &str) -> Trace {
        let mut c = curl(endpoint, "/minio/admin/v3/trace?s3=true");
        // The admin API wants the payload's hash signed (here: an empty body's).
        c.args(["-N", "-H", "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]);
        c.stdout(Stdio::piped());
        let mut child = c.spawn().expect("curl");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (sink, stdout) = (calls.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else { continue };
                let api = v["funcname"].as_str().unwrap_or("?");
                sink.lock().unwrap().push(Call {
                    api: api.trim_start_matches("s3.").to_owned(),
                    path: v["path"].as_str().unwrap_or("").to_owned(),
                    status: v["http"]["response"]["statuscode"].as_u64().unwrap_or(0) as u16,
                    duration: Duration::from_nanos(v["dur"].as_u64().unwrap_or(0)),
                });
            }
        });
        let mut trace = Trace { endpoint: endpoint.to_owned(), child, calls, markers: 0 };
        trace.take(); // subscribed once the first marker comes through
        trace
    }

    /// The requests served since the last call. A request for a marker object
    /// shows where "since" ends, as the trace arrives asynchronously.
    pub fn take(&mut self) -> Vec<Call> {
        self.markers += 1;
        let marker = format!("/{BUCKET}/trace-marker-{}", self.markers);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "MinIO's trace did not show {marker}");
            let mut c = curl(&self.endpoint, &marker);
            c.args(["-I", "-o", "/dev/null"]).status().expect("curl");
            std::thread::sleep(Duration::from_millis(100));
            let mut calls = self.calls.lock().unwrap();
            if let Some(i) = calls.iter().position(|c| c.path == marker) {
                return calls.drain(..=i).filter(|c| !c.path.contains("/trace-marker-")).collect();
            }
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
