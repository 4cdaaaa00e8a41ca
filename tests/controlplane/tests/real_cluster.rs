//! Proof that the control plane is real: CRD schemas are enforced by the API
//! server, `kubectl explain` reads them, the controller-manager creates
//! ReplicaSets and garbage-collects owned objects, and teardown leaves nothing.

use berth_testcontrolplane::{ControlPlane, eventually, process_running};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.berth.dev}
spec:
  group: test.berth.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size: {type: integer, minimum: 1, description: How many parts the widget has.}
            x-kubernetes-validations:
            - rule: "self.size <= 10"
              message: "size may be at most 10"
"#;

fn wait_for_crd(cp: &ControlPlane) {
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd/widgets.test.berth.dev", "--timeout=30s"]);
}

#[test]
fn crd_and_custom_resources_are_validated_by_the_api_server() {
    let cp = ControlPlane::start();
    cp.apply(CRD);
    wait_for_crd(&cp);
    cp.apply("apiVersion: test.berth.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n");
    let got = cp.kubectl_ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(got, "3");
    let explain = cp.kubectl_ok(&["explain", "widget.spec.size"]);
    assert!(explain.contains("How many parts the widget has"), "{explain}");

    let out = cp.kubectl_with_input(
        &["apply", "-f", "-"],
        "apiVersion: test.berth.dev/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 0}\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.size") && err.contains("should be greater than or equal to 1"),
        "{err}"
    );
    let out = cp.kubectl_with_input(
        &["apply", "-f", "-"],
        "apiVersion: test.berth.dev/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {size: 11}\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("size may be at most 10"), "CEL rule not enforced: {err}");
}

#[test]
fn controller_manager_runs_deployments_and_garbage_collection() {
    let cp = ControlPlane::start_with_controller_manager();
    cp.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: registry.invalid/web:1}]}\n",
    );
    let rs = eventually(60, || {
        let out = cp.kubectl_ok(&[
            "get",
            "replicasets",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[0].name}",
        ]);
        (out == "web").then_some(out)
    });
    assert!(rs.is_some(), "no ReplicaSet was created for the Deployment");

    cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\ndata: {a: b}\n");
    let uid = cp.kubectl_ok(&["get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"]);
    cp.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}]\ndata: {{c: d}}\n"
    ));
    cp.kubectl_ok(&["delete", "configmap", "owner"]);
    let gone = eventually(60, || {
        let out = cp.kubectl().args(["get", "configmap", "owned"]).output().unwrap();
        (!out.status.success()).then_some(())
    });
    assert!(gone.is_some(), "the owned ConfigMap was not garbage-collected");
}

#[test]
fn teardown_stops_every_process() {
    let cp = ControlPlane::start_with_controller_manager();
    let pids = cp.pids();
    assert_eq!(pids.len(), 3);
    drop(cp);
    for pid in pids {
        assert!(!process_running(pid), "process {pid} still running");
    }
}

#[test]
fn watchdog_tears_down_when_the_owning_process_is_killed() {
    let mut owner = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let up = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/up"))
        .arg(&dir)
        .env("BERTH_CP_OWNER_PID", owner.id().to_string())
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let pids: Vec<u32> = ["etcd.pid", "kube-apiserver.pid"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap().trim().parse().unwrap())
        .collect();
    owner.kill().unwrap(); // as if the test process died with SIGKILL
    owner.wait().unwrap();
    let gone = eventually(30, || {
        let alive = pids.iter().any(|pid| process_running(*pid));
        (!alive && !dir.exists()).then_some(())
    });
    assert!(gone.is_some(), "control plane still running after its owner died");
}
