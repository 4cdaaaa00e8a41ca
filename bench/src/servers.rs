//! The servers under test, each started fresh on a free loopback port with its
//! own storage directory, or its own prefix of a MinIO bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::minio;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Berth,
    Distribution,
    DebianRegistry,
    Nginx,
    /// The object store itself, for the S3 benchmark.
    Minio,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::Distribution => "distribution v3.1.1",
            Kind::DebianRegistry => "docker-registry 2.8 (Debian)",
            Kind::Nginx => "nginx sendfile",
            Kind::Minio => "MinIO direct (curl)",
        }
    }
}

pub struct Binaries {
    pub berth: PathBuf,
    pub distribution: PathBuf,
    pub debian_registry: PathBuf,
    pub nginx: PathBuf,
}

pub struct Server {
    pub base: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The user every authenticated benchmark logs in as.
pub const USER: (&str, &str) = ("bench", "bench-password");

/// An htpasswd file with [`USER`], bcrypt cost 5 (what `htpasswd -B` uses).
fn htpasswd(dir: &Path) -> PathBuf {
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{}:{}\n", USER.0, bcrypt::hash(USER.1, 5).unwrap())).unwrap();
    path
}

/// The `Authorization` value of [`USER`].
pub fn authorization() -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", USER.0, USER.1)))
}

/// A registry's place in the bucket of a MinIO server started by [`Server::start_minio`].
pub struct S3<'a> {
    pub minio: &'a Server,
    /// Key prefix (berth) or root directory (Distribution), without slashes.
    pub prefix: &'a str,
}

fn berth_config(dir: &Path, auth: bool, s3: Option<&S3>) -> PathBuf {
    let path = dir.join("berth.yaml");
    let mut yaml = String::new();
    if auth {
        yaml += &format!("auth: {{anonymous: none, htpasswd: {{path: {}}}}}\n", htpasswd(dir).display());
    }
    if let Some(s3) = s3 {
        yaml += &format!(
            "storage: {{s3: {{bucket: {}, endpoint: '{}', prefix: {}, credentialsDir: {}}}}}\n",
            minio::BUCKET,
            s3.minio.base,
            s3.prefix,
            s3.minio.dir.path().join("creds").display()
        );
    }
    std::fs::write(&path, yaml).unwrap();
    path
}

fn distribution_config(dir: &Path, port: u16, auth: bool, s3: Option<&S3>) -> PathBuf {
    let path = dir.join("config.yml");
    let auth = if auth {
        format!("auth: {{htpasswd: {{realm: bench, path: {}}}}}\n", htpasswd(dir).display())
    } else {
        String::new()
    };
    // On S3 it serves blobs itself, as berth does by default, rather than redirecting.
    let storage = match s3 {
        None => format!("filesystem: {{rootdirectory: {}}}", dir.join("data").display()),
        Some(s3) => format!(
            "s3: {{region: us-east-1, regionendpoint: '{}', forcepathstyle: true, bucket: {}, rootdirectory: /{}, accesskey: {}, secretkey: {}, secure: false}}\n  redirect: {{disable: true}}",
            s3.minio.base,
            minio::BUCKET,
            s3.prefix,
            minio::USER,
            minio::PASSWORD
        ),
    };
    let yaml = format!(
        "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage:\n  {storage}\n  delete: {{enabled: true}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n{auth}"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn nginx_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("nginx.conf");
    let d = dir.display();
    // Run as root, nginx's workers would switch to an unprivileged user that
    // cannot reach files below /root.
    use std::os::unix::fs::MetadataExt;
    let user = if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 { "user root;\n" } else { "" };
    let conf = format!(
        "{user}daemon off;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n  }}\n}}\n"
    );
    std::fs::create_dir_all(dir.join("www")).unwrap();
    // nginx's workers drop privileges; let them read the served file.
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.to_path_buf(), dir.join("www")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(&path, conf).unwrap();
    path
}

impl Server {
    pub async fn start(kind: Kind, bins: &Binaries) -> Server {
        Server::launch(kind, bins, false, None).await
    }

    /// A registry that lets only [`USER`] in (htpasswd).
    pub async fn start_authenticated(kind: Kind, bins: &Binaries) -> Server {
        assert!(matches!(kind, Kind::Berth | Kind::Distribution), "{kind:?} has no htpasswd setup here");
        Server::launch(kind, bins, true, None).await
    }

    /// A registry that keeps its content in a MinIO bucket.
    pub async fn start_on_s3(kind: Kind, bins: &Binaries, s3: &S3<'_>) -> Server {
        assert!(matches!(kind, Kind::Berth | Kind::Distribution), "{kind:?} has no S3 setup here");
        Server::launch(kind, bins, false, Some(s3)).await
    }

    /// berth-registry with `yaml` as its configuration file and `env` beside
    /// `RUST_LOG=error` (which `env` may override).
    pub async fn start_berth(bins: &Binaries, yaml: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-bench.").tempdir_in(bench_tmp()).unwrap();
        let port = free_port();
        let config = dir.path().join("berth.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut c = Command::new(&bins.berth);
        c.args(["--listen", &format!("127.0.0.1:{port}"), "--root"]).arg(dir.path().join("data"));
        c.arg("--config").arg(config).env("RUST_LOG", "error").envs(env.iter().copied());
        Server::spawn(Kind::Berth, c, dir, port).await
    }

    /// Distribution v3 on the file system with `log` as its `log:` setting and
    /// `extra` (top-level YAML, e.g. a `proxy:` section) at the end of its
    /// configuration. What it logs goes to `dir/stderr.log`.
    pub async fn start_distribution(bins: &Binaries, log: &str, extra: &str) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-bench.").tempdir_in(bench_tmp()).unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog: {log}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n{extra}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).unwrap();
        let mut c = Command::new(&bins.distribution);
        c.arg("serve").arg(config).env("OTEL_TRACES_EXPORTER", "none");
        Server::spawn(Kind::Distribution, c, dir, port).await
    }

    /// MinIO (single drive) with the bucket [`minio::BUCKET`]; the root user's
    /// credentials are in the files of `dir/creds`, as berth's `credentialsDir` reads them.
    pub async fn start_minio(bin: &Path) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-bench.").tempdir_in(bench_tmp()).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("accessKeyId"), minio::USER).unwrap();
        std::fs::write(creds.join("secretAccessKey"), minio::PASSWORD).unwrap();
        let port = free_port();
        let mut c = Command::new(bin);
        c.arg("server").arg(dir.path().join("data")).arg("--quiet");
        c.args(["--address", &format!("127.0.0.1:{port}")]);
        c.args(["--console-address", &format!("127.0.0.1:{}", free_port())]);
        c.env("MINIO_ROOT_USER", minio::USER).env("MINIO_ROOT_PASSWORD", minio::PASSWORD).env("MINIO_BROWSER", "off");
        let server = Server::spawn(Kind::Minio, c, dir, port).await;
        minio::make_bucket(&server.base);
        server
    }

    async fn launch(kind: Kind, bins: &Binaries, auth: bool, s3: Option<&S3<'_>>) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-bench.").tempdir_in(bench_tmp()).unwrap();
        let port = free_port();
        let cmd = match kind {
            Kind::Berth => {
                let mut c = Command::new(&bins.berth);
                c.args(["--listen", &format!("127.0.0.1:{port}"), "--root"]).arg(dir.path().join("data"));
                c.env("RUST_LOG", "error");
                if auth || s3.is_some() {
                    c.arg("--config").arg(berth_config(dir.path(), auth, s3));
                }
                c
            }
            Kind::Distribution | Kind::DebianRegistry => {
                let bin = if kind == Kind::Distribution { &bins.distribution } else { &bins.debian_registry };
                let mut c = Command::new(bin);
                c.arg("serve").arg(distribution_config(dir.path(), port, auth, s3));
                c.env("OTEL_TRACES_EXPORTER", "none");
                c
            }
            Kind::Nginx => {
                let mut c = Command::new(&bins.nginx);
                c.arg("-c").arg(nginx_config(dir.path(), port)).arg("-e").arg(dir.path().join("error.log"));
                c
            }
            Kind::Minio => panic!("MinIO starts with Server::start_minio"),
        };
        Server::spawn(kind, cmd, dir, port).await
    }

    async fn spawn(kind: Kind, mut cmd: Command, dir: tempfile::TempDir, port: u16) -> Server {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and allocates nothing. The server is
        // killed when the benchmark dies, whatever it died of.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Whatever a server writes to its working directory goes to its own.
        let child = cmd
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e}"));
        let base = format!("http://127.0.0.1:{port}");
        // Any answer will do, a 401 included: the server is up. MinIO answers
        // this one with 200 only once it serves requests.
        let probe = match kind {
            Kind::Nginx => format!("{base}/"),
            Kind::Minio => format!("{base}/minio/health/cluster"),
            _ => format!("{base}/v2/"),
        };
        // Owned by the Server at once, so that a panic below still kills and reaps it.
        let mut server = Server { base, child, dir };
        let client = reqwest::Client::new();
        for _ in 0..1200 {
            match client.get(&probe).send().await {
                Ok(r) if kind != Kind::Minio || r.status().is_success() => return server,
                _ => {}
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{kind:?} exited with {status} at start: {}", server.stderr());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{kind:?} did not start: {}", server.stderr());
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user and system) the server process used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
        // SAFETY: sysconf only reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }

    /// Peak resident set size of the server process since it started, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Benchmarks write gigabytes; keep them on the disk under test, not in tmpfs.
pub fn bench_tmp() -> PathBuf {
    let dir = std::env::var_os("BERTH_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
