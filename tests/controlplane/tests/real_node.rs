//! The real worker node: it registers Ready, runs a pod whose image comes from a
//! registry through containerd, resolves Services through CoreDNS, routes Service
//! IPs through kube-proxy, serves logs to the API server, and leaves no process,
//! mount, namespace or cgroup behind.

use berth_testcontrolplane::{ControlPlane, eventually, process_running};
use std::process::Command;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - name: probe
    image: localhost:5000/busybox:test
    command: [sh, -c, "echo ran-on-the-node; nslookup kubernetes.default.svc.cluster.local; sleep 3600"]
"#;

fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).map(String::from).collect()
}

fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Processes in the node's pod cgroups.
fn in_cgroup(pids: Vec<u32>, cgroup_root: &str) -> Vec<u32> {
    let marker = format!(":{cgroup_root}/");
    pids.into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| c.contains(&marker)))
        .collect()
}

/// Paths at fixed places that a node writes to (the kubelet's device-plugin
/// socket, containerd's shim sockets, CNI's result cache, log symlinks).
const FIXED_PATHS: [&str; 4] = ["/var/lib/kubelet", "/run/containerd", "/var/lib/cni", "/var/log/containers"];

#[test]
fn node_runs_pods_and_teardown_leaves_nothing() {
    let absent_before: Vec<&str> = FIXED_PATHS.into_iter().filter(|p| !std::path::Path::new(p).exists()).collect();
    let cp = ControlPlane::start_with_node();
    let dir = cp.dir().to_path_buf();
    let node = cp.kubectl_ok(&[
        "get",
        "node",
        "berth-node",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(node, "True");

    cp.apply(POD);
    let logs = eventually(120, || {
        let out = cp.kubectl().args(["logs", "probe"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("10.0.0.1").then_some(text)
    });
    let logs = logs.unwrap_or_else(|| panic!("pod never logged:\n{}", cp.kubectl_ok(&["describe", "pod", "probe"])));
    assert!(logs.contains("ran-on-the-node"), "{logs}");
    // The kubelet reports the phase after the container has started (and may have
    // logged), so it is awaited, not read once.
    let phase = eventually(30, || {
        let phase = cp.kubectl_ok(&["get", "pod", "probe", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(phase)
    });
    assert_eq!(phase.as_deref(), Some("Running"));

    // kube-proxy: the kubernetes Service's IP reaches the API server from the node.
    let out = cp.in_node("curl").args(["-sk", "https://10.0.0.1/readyz"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");

    let netns = std::fs::read_to_string(dir.join("node/netns")).unwrap();
    let cgroup_root = std::fs::read_to_string(dir.join("node/cgroup-root")).unwrap().trim().to_owned();
    let shims = pgrep(&format!("containerd-shim-runc-v2 .*-address {}/node/", dir.display()));
    assert!(!shims.is_empty(), "no containerd shim for the pod");
    let mut pids = cp.pids();
    assert_eq!(pids.len(), 10, "4 control-plane processes and 6 node daemons");
    pids.extend(shims);
    // The pod's last command starts just after its log line was written.
    let sleeper = eventually(10, || Some(in_cgroup(pgrep("sleep 3600"), &cgroup_root)).filter(|p| p.len() == 1));
    let sleeper = sleeper.expect("the pod's process, in the node's pod cgroup");
    pids.extend(sleeper);
    assert!(!mounts_under(&dir).is_empty(), "the pod's root filesystem is mounted");

    drop(cp);
    let alive: Vec<u32> = pids.into_iter().filter(|p| process_running(*p)).collect();
    assert!(alive.is_empty(), "still running after teardown: {alive:?}");
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    let listed =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    for ns in netns.split_whitespace() {
        assert!(!listed.contains(ns), "network namespace {ns} left behind");
    }
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|c| c.ok())
        .filter(|c| c.path().join(cgroup_root.trim_start_matches('/')).exists())
        .count();
    assert_eq!(cgroups, 0, "pod cgroups left behind");
    for p in absent_before {
        assert!(!std::path::Path::new(p).exists(), "{p} left behind");
    }
    assert!(!dir.exists());
}
