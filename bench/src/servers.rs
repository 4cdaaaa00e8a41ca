//! The servers under test, each started fresh on a free loopback port with its
//! own storage directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Berth,
    Distribution,
    DebianRegistry,
    Nginx,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::Distribution => "distribution v3.1.1",
            Kind::DebianRegistry => "docker-registry 2.8 (Debian)",
            Kind::Nginx => "nginx sendfile",
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

fn berth_config(dir: &Path) -> PathBuf {
    let path = dir.join("berth.yaml");
    let yaml = format!("auth: {{anonymous: none, htpasswd: {{path: {}}}}}\n", htpasswd(dir).display());
    std::fs::write(&path, yaml).unwrap();
    path
}

fn distribution_config(dir: &Path, port: u16, auth: bool) -> PathBuf {
    let path = dir.join("config.yml");
    let auth = if auth {
        format!("auth: {{htpasswd: {{realm: bench, path: {}}}}}\n", htpasswd(dir).display())
    } else {
        String::new()
    };
    let yaml = format!(
        "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n{auth}",
        dir.join("data").display()
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
        Server::launch(kind, bins, false).await
    }

    /// A registry that lets only [`USER`] in (htpasswd).
    pub async fn start_authenticated(kind: Kind, bins: &Binaries) -> Server {
        assert!(matches!(kind, Kind::Berth | Kind::Distribution), "{kind:?} has no htpasswd setup here");
        Server::launch(kind, bins, true).await
    }

    async fn launch(kind: Kind, bins: &Binaries, auth: bool) -> Server {
        let dir = tempfile::Builder::new().prefix("berth-bench.").tempdir_in(bench_tmp()).unwrap();
        let port = free_port();
        let mut cmd = match kind {
            Kind::Berth => {
                let mut c = Command::new(&bins.berth);
                c.args(["--listen", &format!("127.0.0.1:{port}"), "--root"]).arg(dir.path().join("data"));
                c.env("RUST_LOG", "error");
                if auth {
                    c.arg("--config").arg(berth_config(dir.path()));
                }
                c
            }
            Kind::Distribution | Kind::DebianRegistry => {
                let bin = if kind == Kind::Distribution { &bins.distribution } else { &bins.debian_registry };
                let mut c = Command::new(bin);
                c.arg("serve").arg(distribution_config(dir.path(), port, auth));
                c.env("OTEL_TRACES_EXPORTER", "none");
                c
            }
            Kind::Nginx => {
                let mut c = Command::new(&bins.nginx);
                c.arg("-c").arg(nginx_config(dir.path(), port)).arg("-e").arg(dir.path().join("error.log"));
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e}"));
        let base = format!("http://127.0.0.1:{port}");
        // Any answer will do, a 401 included: the server is up.
        let probe = if kind == Kind::Nginx { format!("{base}/") } else { format!("{base}/v2/") };
        // Owned by the Server at once, so that a panic below still kills and reaps it.
        let server = Server { base, child, dir };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(&probe).send().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{kind:?} did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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
