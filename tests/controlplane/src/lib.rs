//! A real Kubernetes control plane for tests: etcd and kube-apiserver (optionally
//! kube-controller-manager, or that plus kube-scheduler and a real worker node with
//! containerd, the kubelet, kube-proxy and CoreDNS), built from pinned Go modules
//! and started by the `up` script beside this crate. Dropping the [`ControlPlane`]
//! stops every process, also when the test panics; if the test process itself is
//! killed, the watchdog started by `up` cleans up.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where `up` and `down` are. Found at run time from the running test's package
/// (cargo sets `CARGO_MANIFEST_DIR` for it): a path compiled into this crate would
/// point at whichever clone first built it, since cargo reuses the build of a path
/// dependency across clones that share a target directory.
fn scripts() -> PathBuf {
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(package) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return compiled;
    };
    [package.clone(), package.join("../tests/controlplane")]
        .into_iter()
        .find(|dir| dir.join("up").is_file())
        .unwrap_or(compiled)
}

pub struct ControlPlane {
    dir: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl ControlPlane {
    /// etcd and kube-apiserver.
    pub fn start() -> ControlPlane {
        Self::launch(None)
    }

    /// etcd, kube-apiserver and kube-controller-manager (garbage collector,
    /// deployment, replicaset, namespace, service-account and daemonset controllers).
    pub fn start_with_controller_manager() -> ControlPlane {
        Self::launch(Some("--controller-manager"))
    }

    /// The controller-manager, kube-scheduler and a real worker node named
    /// `berth-node` (`tests/node/up`), whose network lives in namespaces of its own.
    /// Needs the release `berth-registry` (the node's bootstrap registry).
    pub fn start_with_node() -> ControlPlane {
        Self::launch(Some("--node"))
    }

    fn launch(mode: Option<&str>) -> ControlPlane {
        let dir = tempfile::Builder::new().prefix("berth-cp.").tempdir().expect("temp dir").keep();
        let mut up = Command::new(scripts().join("up"));
        up.args(mode);
        let out = up.arg(&dir).env("BERTH_CP_OWNER_PID", std::process::id().to_string()).output().expect("running up");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("control plane did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export PATH="))
            .and_then(|p| p.split(':').next())
            .map(PathBuf::from)
            .expect("up printed the binary directory");
        ControlPlane { kubeconfig: dir.join("kubeconfig"), dir, bin }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with etcd, kube-apiserver, kube-controller-manager and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A `kubectl` command against this control plane.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// Runs kubectl with `args` and `stdin`, returning its output whatever the outcome.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing to kubectl");
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout; panics with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl().args(args).output().expect("running kubectl");
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies YAML from a string; panics when kubectl fails.
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_with_input(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The pids of the running processes, the node's daemons included (for tests
    /// of the harness itself).
    pub fn pids(&self) -> Vec<u32> {
        let cp = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"].map(|n| self.dir.join(n));
        let node = ["kubelet", "kube-proxy", "coredns", "containerd", "bootstrap", "bridge"]
            .map(|n| self.dir.join("node").join(n));
        cp.iter()
            .chain(node.iter())
            .filter_map(|p| std::fs::read_to_string(p.with_extension("pid")).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// The directory of this control plane; the node's is `node/` inside it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command run inside the node's network namespace, where Service IPs,
    /// pod IPs, cluster DNS (on the node IP) and the bootstrap registry on
    /// `localhost:5000` are reachable. Panics without a node.
    pub fn in_node(&self, program: &str) -> Command {
        let names = std::fs::read_to_string(self.dir.join("node/netns")).expect("a control plane with a node");
        let netns = names.split_whitespace().next().expect("node netns name");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{netns}")).arg(program);
        c
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("down")).arg(&self.dir).status();
    }
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// True while `pid` is a live process (a zombie awaiting its reaper is not).
pub fn process_running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
}

/// The pinned MinIO the object-storage tests run: `$BERTH_MINIO` (which
/// `tests/run` sets), else the cached build of `tests/lib/common.sh`.
pub fn minio_binary() -> PathBuf {
    let minio = std::env::var_os("BERTH_MINIO").map(PathBuf::from).unwrap_or_else(|| {
        let gobin = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/berth/gobin");
        std::fs::read_dir(&gobin)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("minio"))
            .find(|p| p.is_file())
            .unwrap_or_default()
    });
    assert!(minio.is_file(), "needs MinIO: run tests/run, or set BERTH_MINIO to a minio binary");
    minio
}

/// prometheus-operator's ServiceMonitor CRD (pinned in `tests/lib/common.sh`,
/// fetched from the Go module proxy into `~/.cache/berth` on first use):
/// `$BERTH_SERVICEMONITOR_CRD`, else what `servicemonitor_crd` there prints.
pub fn service_monitor_crd() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_SERVICEMONITOR_CRD") {
        return PathBuf::from(path);
    }
    let common = scripts().join("../lib/common.sh");
    let out = Command::new("bash")
        .args(["-c", r#"source "$1" && servicemonitor_crd"#, "bash"])
        .arg(&common)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "no ServiceMonitor CRD (needs Go and the Go module proxy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
