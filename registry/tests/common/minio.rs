//! A real S3 server for the tests: one MinIO process per test binary, started on
//! first use on a free loopback port, with one bucket. Each test takes its own key
//! prefix, so tests running at once never see each other's objects.
//!
//! The binary is the pinned build (`berth_testcontrolplane::minio_binary`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use berth_registry::config::S3Config;

pub const USER: &str = "berth-test";
pub const PASSWORD: &str = "berth-test-secret";
pub const BUCKET: &str = "berth";

pub struct Minio {
    pub endpoint: String,
    /// Holds the data directory and the credentials files.
    pub dir: PathBuf,
}

static MINIO: LazyLock<Minio> = LazyLock::new(start);

/// The shared server (started on first use).
pub fn server() -> &'static Minio {
    &MINIO
}

/// A storage configuration on the shared bucket under a fresh prefix.
pub fn s3_config() -> S3Config {
    let minio = server();
    S3Config {
        bucket: BUCKET.into(),
        endpoint: Some(minio.endpoint.clone()),
        prefix: format!("t-{}", uuid_like()),
        credentials_dir: Some(minio.dir.join("creds")),
        // S3's smallest part, so blobs of a few MiB already take the multipart path.
        part_size_bytes: berth_registry::config::MIN_PART,
        ..S3Config::default()
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts MinIO from a thread that lives as long as the test process, so the
/// parent-death signal (sent when the spawning thread ends) stops it with the tests.
fn start() -> Minio {
    remove_orphans();
    let dir = std::env::temp_dir().join(format!("berth-minio-{}", uuid_like()));
    std::fs::create_dir_all(dir.join("creds")).unwrap();
    std::fs::write(dir.join("creds/accessKeyId"), USER).unwrap();
    std::fs::write(dir.join("creds/secretAccessKey"), PASSWORD).unwrap();
    let (port, console) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{port}");
    let (tx, rx) = std::sync::mpsc::channel();
    let data = dir.join("data");
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(berth_testcontrolplane::minio_binary());
        command
            .args(["server", data.to_str().unwrap(), "--quiet"])
            .args(["--address", &format!("127.0.0.1:{port}"), "--console-address", &format!("127.0.0.1:{console}")])
            .env("MINIO_ROOT_USER", USER)
            .env("MINIO_ROOT_PASSWORD", PASSWORD)
            .env("MINIO_BROWSER", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("starting minio");
        tx.send(()).unwrap();
        let _ = child.wait();
    });
    rx.recv().unwrap();
    wait_ready(&endpoint);
    make_bucket(&endpoint);
    Minio { endpoint, dir }
}

/// The data of servers whose test process is gone: a process cannot remove
/// its own on exit (statics are never dropped), so each start sweeps up.
fn remove_orphans() {
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("berth-minio-").and_then(|rest| rest.split('-').next());
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn wait_ready(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("{endpoint}/minio/health/cluster");
    while Instant::now() < deadline {
        let ok = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", &url])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("MinIO did not become ready at {endpoint}");
}

fn make_bucket(endpoint: &str) {
    let status = Command::new("curl")
        .args(["-fsS", "--aws-sigv4", "aws:amz:us-east-1:s3", "-u", &format!("{USER}:{PASSWORD}")])
        .args(["-X", "PUT", &format!("{endpoint}/{BUCKET}")])
        .stdout(Stdio::null())
        .status()
        .expect("curl");
    assert!(status.success(), "creating the bucket");
}

/// A registry configuration file on a fresh prefix of the shared bucket, for
/// `berth-registry --config`; returns its path (inside `dir`) and the storage config.
pub fn config_file(dir: &std::path::Path) -> (PathBuf, S3Config) {
    let s3 = s3_config();
    let mut config = berth_registry::Config::default();
    config.storage.s3 = Some(s3.clone());
    let path = dir.join("registry.yaml");
    std::fs::write(&path, config.to_yaml()).unwrap();
    (path, s3)
}

/// Every blob in the prefix of `s3` checked against its digest: (checked, problems).
pub async fn verify_blobs(s3: &S3Config) -> (usize, Vec<String>) {
    let storage = berth_registry::storage::S3Storage::open(s3).await.unwrap();
    storage.verify_blobs().await.unwrap()
}
