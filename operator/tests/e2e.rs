//! The operator against a real kube-apiserver and kube-controller-manager.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use berth_testcontrolplane::{ControlPlane, eventually};
use serde_json::Value;

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds/registry.yaml");
const IMAGE: &str = "registry.example.test/berth:e2e";

struct Operator {
    child: Child,
    metrics: String,
}

impl Operator {
    fn start(cp: &ControlPlane) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap().keep().unwrap().1;
        let child = Command::new(env!("CARGO_BIN_EXE_berth-operator"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--lease-namespace", "default", "--registry-image", IMAGE])
            .env("KUBECONFIG", cp.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let op = Operator { child, metrics: format!("http://127.0.0.1:{port}/metrics") };
        assert!(
            eventually(30, || op.metric("berth_operator_reconciliations_total")).is_some(),
            "operator did not start; log in {}",
            log.display()
        );
        op
    }

    /// Waits until the operator stops writing, then labels `KIND NAME LABEL` to
    /// trigger a reconcile and checks that it wrote nothing.
    fn assert_idle_reconcile_writes_nothing(&self, cp: &ControlPlane, poke: &[&str; 3]) {
        let stable = eventually(60, || {
            let before = self.metric("berth_operator_api_writes_total")?;
            std::thread::sleep(std::time::Duration::from_secs(3));
            (self.metric("berth_operator_api_writes_total")? == before).then_some(before)
        })
        .expect("the operator kept writing");
        let reconciles = self.metric("berth_operator_reconciliations_total").unwrap();
        cp.kubectl_ok(&["label", poke[0], poke[1], poke[2], "--overwrite"]);
        let reconciled =
            eventually(30, || (self.metric("berth_operator_reconciliations_total")? > reconciles).then_some(()));
        assert!(reconciled.is_some(), "no reconcile after labelling {poke:?}");
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_eq!(self.metric("berth_operator_api_writes_total"), Some(stable), "writes while idle");
    }

    fn metric(&self, name: &str) -> Option<u64> {
        let text = http::get(&self.metrics)?;
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).map(|v| v as u64)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking GET, so tests need no runtime.
mod http {
    pub fn get(url: &str) -> Option<String> {
        let out = std::process::Command::new("curl").args(["-fsS", "--max-time", "5", url]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn json(cp: &ControlPlane, args: &[&str]) -> Option<Value> {
    let out = cp.kubectl().args(args).args(["-o", "json"]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn setup() -> (ControlPlane, Operator) {
    let cp = ControlPlane::start_with_controller_manager();
    cp.kubectl_ok(&["apply", "-f", CRD]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", "crd/registries.berth.dev", "--timeout=30s"]);
    let op = Operator::start(&cp);
    (cp, op)
}

fn registry(name: &str, spec: &str) -> String {
    format!("apiVersion: berth.dev/v1alpha1\nkind: Registry\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// A merge patch of Registry `name`.
fn patch_registry(cp: &ControlPlane, name: &str, patch: &str) {
    cp.kubectl_ok(&["patch", "registry", name, "--type", "merge", "-p", patch]);
}

fn wait_for(cp: &ControlPlane, what: &[&str]) -> Value {
    eventually(60, || json(cp, what)).unwrap_or_else(|| panic!("{what:?} never appeared"))
}

fn condition(reg: &Value, type_: &str) -> Option<(String, String)> {
    reg["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_owned(), c["message"].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn registry_lifecycle() {
    let (cp, op) = setup();
    // A bound claim of an expandable class, so that growing it is allowed.
    cp.apply("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: expandable}\nprovisioner: kubernetes.io/no-provisioner\nallowVolumeExpansion: true\n");
    cp.apply("apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: demo-pv}\nspec: {capacity: {storage: 100Gi}, accessModes: [ReadWriteOnce], storageClassName: expandable, hostPath: {path: /tmp/berth-demo-pv}}\n");
    cp.apply(&registry("demo", "{manifests: {docker: {schema1: true}}, storage: {storageClassName: expandable}}"));
    let deployment = wait_for(&cp, &["get", "deployment", "demo"]);
    let reg =
        eventually(60, || json(&cp, &["get", "registry", "demo"]).filter(|r| r["status"]["endpoint"].is_string()))
            .expect("status written");
    let uid = reg["metadata"]["uid"].as_str().unwrap().to_owned();

    // Children, owned by the Registry; the claim only marked.
    for kind in ["deployment/demo", "service/demo", "service/demo-metrics", "configmap/demo-config"] {
        let obj = json(&cp, &["get", kind]).unwrap();
        assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], uid.as_str(), "{kind} not owned");
    }
    let pvc = json(&cp, &["get", "pvc", "demo-data"]).unwrap();
    assert!(pvc["metadata"]["ownerReferences"].is_null());
    assert_eq!(pvc["metadata"]["annotations"]["berth.dev/registry-uid"], uid.as_str());
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], IMAGE);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let config = json(&cp, &["get", "configmap", "demo-config"]).unwrap();
    let parsed = berth_registry::Config::from_yaml(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert!(parsed.manifests.docker.schema1);

    assert_eq!(reg["status"]["endpoint"], "demo.default.svc:5000");
    assert_eq!(condition(&reg, "Ready").unwrap().0, "False", "no kubelet runs, so no pod is ready");
    assert_eq!(condition(&reg, "Degraded").unwrap().0, "False");
    let events =
        json(&cp, &["get", "events", "--field-selector", "involvedObject.kind=Registry,involvedObject.name=demo"])
            .unwrap();
    let notes: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    for kind in ["PersistentVolumeClaim", "ConfigMap", "Deployment", "Service"] {
        assert!(notes.contains(&format!("created {kind}").as_str()), "no event for {kind}: {notes:?}");
    }
    let printed = cp.kubectl_ok(&["get", "reg", "demo"]);
    assert!(printed.contains("demo.default.svc:5000") && printed.contains("READY"), "{printed}");

    // Idle: a reconcile that finds nothing to change writes nothing.
    op.assert_idle_reconcile_writes_nothing(&cp, &["deployment", "demo", "poke=1"]);

    // A manifests change reaches the ConfigMap and rolls the pods.
    let hash = |d: &Value| {
        d["spec"]["template"]["metadata"]["annotations"]["berth.dev/config-hash"].as_str().map(str::to_owned)
    };
    let old_hash = hash(&deployment);
    patch_registry(&cp, "demo", r#"{"spec":{"manifests":{"oci":{"imageIndex":false}}}}"#);
    assert!(
        eventually(60, || {
            let cm = json(&cp, &["get", "configmap", "demo-config"])?;
            let config = berth_registry::Config::from_yaml(cm["data"]["config.yaml"].as_str()?).ok()?;
            (!config.manifests.oci.image_index).then_some(())
        })
        .is_some()
    );
    assert!(eventually(60, || (hash(&json(&cp, &["get", "deployment", "demo"])?) != old_hash).then_some(())).is_some());
    let updated = eventually(30, || {
        let events =
            json(&cp, &["get", "events", "--field-selector", "involvedObject.kind=Registry,involvedObject.name=demo"])?;
        events["items"].as_array()?.iter().any(|e| e["message"] == "updated ConfigMap").then_some(())
    });
    assert!(updated.is_some(), "no event for the updated ConfigMap");

    // Storage grows, never shrinks; invalid Registries are refused by the API server.
    assert!(
        eventually(60, || (json(&cp, &["get", "pvc", "demo-data"])?["status"]["phase"] == "Bound").then_some(()))
            .is_some()
    );
    patch_registry(&cp, "demo", r#"{"spec":{"storage":{"size":"20Gi"}}}"#);
    assert!(
        eventually(60, || (json(&cp, &["get", "pvc", "demo-data"])?["spec"]["resources"]["requests"]["storage"]
            == "20Gi")
            .then_some(()))
        .is_some()
    );
    let shrink = cp
        .kubectl()
        .args(["patch", "registry", "demo", "--type", "merge", "-p", r#"{"spec":{"storage":{"size":"1Gi"}}}"#])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&shrink.stderr).contains("storage.size may grow but not shrink"));
    let out = cp.kubectl_with_input(&["apply", "-f", "-"], &registry("bad", "{replicas: 2}"));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("more than one replica needs storage.accessModes to include ReadWriteMany")
    );

    // Deleting keeps the claim (Retain), the owned objects are garbage-collected.
    cp.kubectl_ok(&["delete", "registry", "demo", "--wait=true", "--timeout=60s"]);
    for kind in ["deployment/demo", "service/demo", "service/demo-metrics", "configmap/demo-config"] {
        assert!(eventually(60, || json(&cp, &["get", kind]).is_none().then_some(())).is_some(), "{kind} not collected");
    }
    assert!(json(&cp, &["get", "pvc", "demo-data"]).is_some(), "retained claim deleted");
}

#[test]
fn retention_delete_and_foreign_claims() {
    let (cp, _op) = setup();
    // Node access comes and goes with its switch.
    cp.apply(&registry("nodes", "{nodeAccess: {enabled: true, port: 5999}}"));
    let ds = wait_for(&cp, &["get", "daemonset", "nodes-node-access"]);
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    let hosting = wait_for(&cp, &["-n", "kube-public", "get", "configmap", "local-registry-hosting"]);
    assert!(hosting["data"]["localRegistryHosting.v1"].as_str().unwrap().contains("localhost:5999"));
    patch_registry(&cp, "nodes", r#"{"spec":{"nodeAccess":{"enabled":false}}}"#);
    assert!(eventually(60, || json(&cp, &["get", "daemonset", "nodes-node-access"]).is_none().then_some(())).is_some());
    assert!(
        eventually(30, || json(&cp, &["-n", "kube-public", "get", "configmap", "local-registry-hosting"])
            .is_none()
            .then_some(()))
        .is_some()
    );

    cp.apply(&registry("temp", "{storage: {retentionPolicy: Delete}}"));
    wait_for(&cp, &["get", "pvc", "temp-data"]);
    cp.kubectl_ok(&["delete", "registry", "temp", "--wait=true", "--timeout=60s"]);
    let pvc_gone = eventually(60, || {
        // No kubelet or PV controller runs, so a deleted claim may linger on its protection finalizer.
        match json(&cp, &["get", "pvc", "temp-data"]) {
            None => Some(()),
            Some(p) => p["metadata"]["deletionTimestamp"].is_string().then_some(()),
        }
    });
    assert!(pvc_gone.is_some(), "claim not deleted with its Registry");

    cp.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: taken-data}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n");
    cp.apply(&registry("taken", "{}"));
    let reg = eventually(60, || {
        json(&cp, &["get", "registry", "taken"]).filter(|r| condition(r, "Degraded").is_some_and(|c| c.0 == "True"))
    })
    .expect("a foreign claim must degrade the Registry");
    assert!(condition(&reg, "Degraded").unwrap().1.contains("does not belong to this Registry"));
    let pvc = json(&cp, &["get", "pvc", "taken-data"]).unwrap();
    assert!(pvc["metadata"]["annotations"]["berth.dev/registry-uid"].is_null(), "foreign claim was adopted");
    assert!(json(&cp, &["get", "deployment", "taken"]).is_none(), "a Deployment would mount someone else's claim");
}

/// A Registry on S3: no claim, the replicas asked for with a rolling update,
/// a disruption budget while there is more than one, the credentials Secret
/// mounted under the file names the registry reads, the bucket in the rendered
/// config and in the status; and the API server's refusals around it. No
/// kubelet runs, so no pod starts and none is waited for.
#[test]
fn object_storage() {
    let (cp, _op) = setup();
    cp.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: s3-creds}\nstringData: {id: AKIDEXAMPLE, secret: not-a-secret, token: not-a-token}\n");
    let s3 = "{bucket: images, endpoint: 'http://minio.storage:9000', prefix: team/, credentialsSecret: {name: s3-creds, accessKeyIdKey: id, secretAccessKeyKey: secret, sessionTokenKey: token}}";
    cp.apply(&registry("objects", &format!("{{replicas: 3, storage: {{s3: {s3}}}}}")));
    let d = wait_for(&cp, &["get", "deployment", "objects"]);
    let reg =
        eventually(60, || json(&cp, &["get", "registry", "objects"]).filter(|r| r["status"]["storage"].is_object()))
            .expect("status.storage written");
    let uid = reg["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(
        reg["status"]["storage"],
        serde_json::json!({"backend": "s3", "bucket": "images", "endpoint": "http://minio.storage:9000"})
    );
    assert_eq!(condition(&reg, "Degraded").unwrap().0, "False", "{reg}");
    assert!(cp.kubectl_ok(&["get", "registry", "objects", "-o", "wide"]).contains("s3"));

    // Three replicas that roll one extra pod at a time, with no claim.
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["strategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    assert!(json(&cp, &["get", "pvc", "objects-data"]).is_none(), "a claim was created for an S3 Registry");
    let pod = &d["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.iter().all(|v| v["persistentVolumeClaim"].is_null()), "{volumes:?}");
    let credentials = volumes.iter().find(|v| v["name"] == "s3-credentials").expect("no credentials volume");
    assert_eq!(credentials["secret"]["secretName"], "s3-creds");
    assert_eq!(
        credentials["secret"]["items"],
        serde_json::json!([{"key": "id", "path": "accessKeyId"}, {"key": "secret", "path": "secretAccessKey"},
                           {"key": "token", "path": "sessionToken"}])
    );
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    let mount = mounts.iter().find(|m| m["name"] == "s3-credentials").expect("credentials not mounted");
    assert_eq!((&mount["mountPath"], &mount["readOnly"]), (&"/etc/berth/s3".into(), &true.into()));
    assert!(mounts.iter().all(|m| m["mountPath"] != "/var/lib/berth"), "{mounts:?}");

    // The registry's config holds the bucket and reads the credentials from the mount.
    let cm = json(&cp, &["get", "configmap", "objects-config"]).unwrap();
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    assert!(text.contains("credentialsDir: /etc/berth/s3"), "{text}");
    let config = berth_registry::Config::from_yaml(text).unwrap();
    let bucket = config.storage.s3.expect("no storage.s3 in the config");
    assert_eq!(
        (bucket.bucket.as_str(), bucket.endpoint.as_deref(), bucket.prefix.as_str(), bucket.region.as_str()),
        ("images", Some("http://minio.storage:9000"), "team/", "us-east-1")
    );
    assert_eq!(bucket.credentials_dir, Some(PathBuf::from("/etc/berth/s3")));

    // A disruption budget keeps all but one replica up, owned by the Registry.
    let pdb = wait_for(&cp, &["get", "poddisruptionbudget", "objects"]);
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"]);

    // One replica: the budget goes; through the scale subresource it comes back.
    patch_registry(&cp, "objects", r#"{"spec":{"replicas":1}}"#);
    let gone = eventually(60, || json(&cp, &["get", "poddisruptionbudget", "objects"]).is_none().then_some(()));
    assert!(gone.is_some(), "the budget outlived the second replica");
    let one = eventually(60, || (json(&cp, &["get", "deployment", "objects"])?["spec"]["replicas"] == 1).then_some(()));
    assert!(one.is_some(), "the Deployment was not scaled down");
    let deleted = eventually(30, || {
        let events = json(
            &cp,
            &["get", "events", "--field-selector", "involvedObject.kind=Registry,involvedObject.name=objects"],
        )?;
        events["items"].as_array()?.iter().any(|e| e["message"] == "deleted PodDisruptionBudget").then_some(())
    });
    assert!(deleted.is_some(), "no event for the deleted budget");
    cp.kubectl_ok(&["scale", "registry", "objects", "--replicas=2"]);
    let back = wait_for(&cp, &["get", "poddisruptionbudget", "objects"]);
    assert_eq!(back["metadata"]["ownerReferences"][0]["uid"], uid.as_str());

    // The API server refuses what would lose images or cannot work.
    let refused = |out: std::process::Output, message: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "not refused with {message:?}: {stderr}");
    };
    let switch = "storage.s3 cannot be added to or removed from an existing Registry";
    let remove = r#"[{"op":"remove","path":"/spec/storage/s3"}]"#;
    refused(
        cp.kubectl().args(["patch", "registry", "objects", "--type", "json", "-p", remove]).output().unwrap(),
        switch,
    );
    cp.apply(&registry("disk", "{}"));
    let add = r#"{"spec":{"storage":{"s3":{"bucket":"images"}}}}"#;
    refused(cp.kubectl().args(["patch", "registry", "disk", "--type", "merge", "-p", add]).output().unwrap(), switch);
    let create = |spec: &str| cp.kubectl_with_input(&["apply", "-f", "-"], &registry("bad", spec));
    for claim_field in
        ["size: 20Gi", "storageClassName: fast", "accessModes: [ReadWriteMany]", "retentionPolicy: Delete"]
    {
        refused(create(&format!("{{storage: {{{claim_field}, s3: {{bucket: b}}}}}}")), "storage.s3 needs no claim");
    }
    refused(create("{storage: {s3: {bucket: b, endpoint: 'minio:9000'}}}"), "must start with http:// or https://");
    refused(create("{storage: {s3: {region: eu-west-1}}}"), "bucket");
    refused(create("{storage: {s3: {bucket: b, prefix: /x}}}"), "storage.s3.prefix must not start with /");
    refused(create("{storage: {s3: {bucket: b, credentialsSecret: {name: c, accessKeyIdKey: ../x}}}}"), "Secret key");
    refused(create("{replicas: 2}"), "more than one replica needs storage.accessModes to include ReadWriteMany");
    // The defaults, written out, are not claim fields.
    cp.apply(&registry(
        "explicit",
        "{replicas: 2, storage: {size: 10Gi, accessModes: [ReadWriteOnce], retentionPolicy: Retain, s3: {bucket: b}}}",
    ));
}

/// What the registry's own ServiceAccount may do, as the API server decides it
/// for a token of that account (its user name and groups, by impersonation).
fn registry_account_can(cp: &ControlPlane, account: &str, verb: &str, resource: &str) -> bool {
    let user = format!("--as=system:serviceaccount:default:{account}");
    let out = cp
        .kubectl()
        .args(["auth", "can-i", verb, resource, &user])
        .args(["--as-group=system:serviceaccounts", "--as-group=system:serviceaccounts:default"])
        .args(["--as-group=system:authenticated"])
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i: {other} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[test]
fn access_control_and_tls() {
    let (cp, _op) = setup();
    // The Secrets as a user (or cert-manager) creates them, with placeholder content:
    // the operator never reads them, and no kubelet runs here.
    cp.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: users}\nstringData: {creds: 'ci:$2y$05$abcdefghijklmnopqrstuu5UuJqUuJqUuJqUuJqUuJqUuJqUuJqUu'}\n");
    cp.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: cert}\ntype: kubernetes.io/tls\nstringData: {tls.crt: not-a-cert, tls.key: not-a-key}\n");
    let spec = "{auth: {anonymous: pull, cacheSecs: 30, kubernetes: {enabled: true}, htpasswd: {secretName: users, key: creds, access: [{users: [ci], repositories: ['team/*'], actions: [pull, push]}]}}, tls: {secretName: cert}}";
    cp.apply(&registry("secure", spec));
    let d = wait_for(&cp, &["get", "deployment", "secure"]);
    let reg =
        eventually(60, || json(&cp, &["get", "registry", "secure"]).filter(|r| r["status"]["audience"].is_string()))
            .expect("status.audience written");
    assert_eq!(reg["status"]["audience"], "berth.dev/default/secure");
    let uid = reg["metadata"]["uid"].as_str().unwrap().to_owned();

    // The registry's config says what the spec says.
    let cm = json(&cp, &["get", "configmap", "secure-config"]).unwrap();
    let config = berth_registry::Config::from_yaml(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.auth.anonymous, berth_registry::config::Anonymous::Pull);
    assert_eq!(config.auth.cache_secs, 30);
    assert_eq!(config.auth.realm, "secure");
    assert_eq!(config.auth.kubernetes.as_ref().unwrap().audience, "berth.dev/default/secure");
    let htpasswd = config.auth.htpasswd.as_ref().unwrap();
    assert_eq!(htpasswd.path, PathBuf::from("/etc/berth/htpasswd/creds"));
    assert_eq!(htpasswd.access[0].repositories, ["team/*"]);
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert_file.to_str(), tls.key_file.to_str()),
        (Some("/etc/berth/tls/tls.crt"), Some("/etc/berth/tls/tls.key"))
    );

    // The pod mounts both Secrets read-only, runs as its account, with a token.
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "secure-registry");
    assert_eq!(pod["automountServiceAccountToken"], true);
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned();
    assert_eq!(volume("htpasswd").unwrap()["secret"]["secretName"], "users");
    assert_eq!(volume("htpasswd").unwrap()["secret"]["items"], serde_json::json!([{"key": "creds", "path": "creds"}]));
    assert_eq!(volume("tls").unwrap()["secret"]["secretName"], "cert");
    let container = &pod["containers"][0];
    let mount = |name: &str| container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned();
    assert_eq!(mount("htpasswd").unwrap()["mountPath"], "/etc/berth/htpasswd");
    assert_eq!(mount("htpasswd").unwrap()["readOnly"], true);
    assert_eq!(mount("tls").unwrap()["mountPath"], "/etc/berth/tls");
    assert_eq!(mount("tls").unwrap()["readOnly"], true);
    // The probes ask the plain-HTTP metrics port: TLS and credentials do not reach them.
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(
        (&probe["scheme"], &probe["port"], &probe["path"]),
        (&"HTTP".into(), &"metrics".into(), &"/readyz".into())
    );
    let svc = json(&cp, &["get", "service", "secure"]).unwrap();
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1, "only the registry's port: {svc}");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "https");

    // The account is the Registry's and mounts nothing by itself; the binding is marked.
    let sa = json(&cp, &["get", "serviceaccount", "secure-registry"]).unwrap();
    assert_eq!(sa["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(sa["automountServiceAccountToken"], false);
    let crb = json(&cp, &["get", "clusterrolebinding", "berth:registry:default:secure"]).unwrap();
    assert_eq!(crb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(
        crb["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "secure-registry", "namespace": "default"}])
    );
    assert_eq!(crb["metadata"]["annotations"]["berth.dev/registry-uid"], uid.as_str());

    // The registry's account may do exactly its reviews.
    let can = |verb: &str, resource: &str| registry_account_can(&cp, "secure-registry", verb, resource);
    assert!(
        eventually(30, || can("create", "tokenreviews.authentication.k8s.io").then_some(())).is_some(),
        "the registry cannot review tokens"
    );
    assert!(can("create", "subjectaccessreviews.authorization.k8s.io"));
    assert!(!can("get", "secrets"));
    assert!(!can("list", "pods"));
    assert!(!can("create", "deployments.apps"));
    assert!(!can("create", "clusterrolebindings.rbac.authorization.k8s.io"));

    // Kubernetes authentication off: the binding goes; the pod keeps its token,
    // which the collector needs for its requests and report (the Role <name>-registry).
    let set_kubernetes = |enabled: bool| {
        let patch = format!(r#"{{"spec":{{"auth":{{"kubernetes":{{"enabled":{enabled}}}}}}}}}"#);
        patch_registry(&cp, "secure", &patch);
    };
    set_kubernetes(false);
    let gone = |cp: &ControlPlane| {
        eventually(60, || {
            json(cp, &["get", "clusterrolebinding", "berth:registry:default:secure"]).is_none().then_some(())
        })
    };
    assert!(gone(&cp).is_some(), "the binding outlived Kubernetes authentication");
    let config = eventually(60, || {
        let cm = json(&cp, &["get", "configmap", "secure-config"])?;
        let config = berth_registry::Config::from_yaml(cm["data"]["config.yaml"].as_str()?).ok()?;
        config.auth.kubernetes.is_none().then_some(config)
    })
    .expect("the config still reviews tokens");
    assert!(config.gc.kubernetes.is_some());
    let d = json(&cp, &["get", "deployment", "secure"]).unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["automountServiceAccountToken"], true);
    assert!(
        eventually(30, || json(&cp, &["get", "registry", "secure"])?["status"]["audience"].is_null().then_some(()))
            .is_some(),
        "status.audience kept after Kubernetes authentication was switched off"
    );
    assert!(eventually(30, || (!can("create", "tokenreviews.authentication.k8s.io")).then_some(())).is_some());
    let events =
        json(&cp, &["get", "events", "--field-selector", "involvedObject.kind=Registry,involvedObject.name=secure"])
            .unwrap();
    let notes: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    for note in ["created ServiceAccount", "created ClusterRoleBinding", "deleted ClusterRoleBinding"] {
        assert!(notes.contains(&note), "no event {note:?}: {notes:?}");
    }

    // Back on, then the Registry deleted: the finalizer removes the binding.
    set_kubernetes(true);
    wait_for(&cp, &["get", "clusterrolebinding", "berth:registry:default:secure"]);
    cp.kubectl_ok(&["delete", "registry", "secure", "--wait=true", "--timeout=60s"]);
    assert!(
        json(&cp, &["get", "clusterrolebinding", "berth:registry:default:secure"]).is_none(),
        "binding left after deletion"
    );
    assert!(
        eventually(60, || json(&cp, &["get", "serviceaccount", "secure-registry"]).is_none().then_some(())).is_some(),
        "ServiceAccount not collected"
    );

    // The API server refuses what cannot work.
    let refused = |spec: &str, message: &str| {
        let out = cp.kubectl_with_input(&["apply", "-f", "-"], &registry("bad", spec));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{spec} not refused with {message:?}: {stderr}");
    };
    refused(
        "{tls: {secretName: cert}, nodeAccess: {enabled: true}}",
        "nodeAccess serves plain HTTP on the nodes' localhost and cannot forward to a TLS registry yet; turn one off",
    );
    refused("{auth: {kubernetes: {enabled: false}}}", "nobody can use the registry");
    refused(
        "{auth: {htpasswd: {secretName: users, access: [{users: [], repositories: ['*'], actions: [pull]}]}}}",
        "every rule names users, repositories and actions",
    );
    refused("{auth: {cacheSecs: 301}}", "cacheSecs");
    refused("{auth: {anonymous: everyone}}", "anonymous");
    refused(
        "{auth: {kubernetes: {audience: 'https://kubernetes.default.svc.cluster.local'}}}",
        "API server's own audience",
    );
    // Each on its own is fine.
    cp.apply(&registry("plain-nodes", "{nodeAccess: {enabled: true, port: 5998}}"));
    cp.apply(&registry("tls-only", "{tls: {secretName: cert}}"));

    // Another workload's ServiceAccount with the registry's account name is
    // neither bound to the review role nor taken over.
    cp.kubectl_ok(&["create", "serviceaccount", "taken-registry"]);
    cp.apply(&registry("taken", "{}"));
    let reg = eventually(60, || {
        json(&cp, &["get", "registry", "taken"]).filter(|r| condition(r, "Degraded").is_some_and(|c| c.0 == "True"))
    })
    .expect("the Registry never reported the foreign ServiceAccount");
    assert!(
        condition(&reg, "Degraded").unwrap().1.contains("ServiceAccount taken-registry exists and does not belong")
    );
    let account = json(&cp, &["get", "serviceaccount", "taken-registry"]).unwrap();
    assert!(account["metadata"]["ownerReferences"].is_null(), "the account was taken over: {account}");
    assert!(json(&cp, &["get", "clusterrolebinding", "berth:registry:default:taken"]).is_none());
}

/// The `berth-registry` binary: `$BERTH_REGISTRY_BIN`, else the one next to
/// this test's directory (`<target>/<profile>/berth-registry`). It belongs to
/// another package, so Cargo does not build it for this test; `tests/run`
/// builds it first (`cargo build --release -p berth-registry`).
fn registry_bin() -> PathBuf {
    let bin = std::env::var_os("BERTH_REGISTRY_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/e2e-<hash> -> <target>/<profile>/berth-registry
        exe.parent()
            .and_then(|deps| deps.parent())
            .expect("a test binary lives in <profile>/deps")
            .join("berth-registry")
    });
    assert!(
        bin.is_file(),
        "needs the registry binary at {}: run `cargo build --release -p berth-registry` first (tests/run does), or set BERTH_REGISTRY_BIN",
        bin.display()
    );
    bin
}

/// The pinned crane: `$BERTH_CRANE`, else the cached build `tests/run` makes.
fn crane() -> PathBuf {
    let crane = std::env::var_os("BERTH_CRANE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/berth/gobin/crane-v0.22.1/crane")
    });
    assert!(crane.exists(), "needs {} (tests/run provides it)", crane.display());
    crane
}

/// A registry pod played by hand, and what it left behind.
struct PlayedPod {
    /// The script's output: stdout is what the pulled layer held.
    out: std::process::Output,
    /// The registry's log.
    log: String,
    /// Per volume of the pod template, the directory that stood in for it.
    volumes: std::collections::HashMap<String, PathBuf>,
    /// The user the registry ran as.
    user: u32,
    /// The test's directory, removed on drop.
    work: tempfile::TempDir,
}

impl PlayedPod {
    /// The script pushed, pulled and ran the layer through the rendered registry.
    fn assert_pulled_and_ran(&self) {
        assert!(
            self.out.status.success(),
            "pod run failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&self.out.stderr),
            self.log
        );
        assert_eq!(String::from_utf8_lossy(&self.out.stdout), "hello from a pod");
    }
}

/// Plays the kubelet for the registry pod of Deployment `name`: each volume of
/// the rendered pod becomes a directory (a ConfigMap's data; a Secret's keys
/// under the file names its `items` give, with the rendered mode and the pod's
/// `fsGroup` as their group; an empty directory owned by the pod's user for a
/// claim), bound at its mount path in a private mount and network namespace.
/// There `before` runs first (a MinIO, say; `$WORK` is [`PlayedPod::work`]),
/// then `berth-registry` with exactly the rendered command, args and user,
/// asked what the rendered probes ask (their paths on the container ports they
/// name); then an image is pushed and pulled back with crane.
fn play_registry_pod(cp: &ControlPlane, name: &str, before: &str) -> PlayedPod {
    let d = wait_for(cp, &["get", "deployment", name]);
    let pod = &d["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let strings = |v: &Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let command = [strings(&container["command"]), strings(&container["args"])].concat();
    let user = container["securityContext"]["runAsUser"].as_i64().unwrap() as u32;
    let group = pod["securityContext"]["fsGroup"].as_i64().unwrap() as u32;
    let probe_url = |probe: &str| {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["scheme"], "HTTP", "{probe}");
        let port = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == get["port"]);
        let port = port.unwrap_or_else(|| panic!("{probe} asks a port the container does not name: {get}"));
        format!("http://127.0.0.1:{}{}", port["containerPort"], get["path"].as_str().unwrap())
    };
    let (ready, live) = (probe_url("readinessProbe"), probe_url("livenessProbe"));

    let work = tempfile::tempdir().unwrap();
    let mut volumes = std::collections::HashMap::new();
    for volume in pod["volumes"].as_array().unwrap() {
        let volume_name = volume["name"].as_str().unwrap();
        let dir = work.path().join("volumes").join(volume_name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(config_map) = volume["configMap"]["name"].as_str() {
            let cm = wait_for(cp, &["get", "configmap", config_map]);
            for (file, content) in cm["data"].as_object().unwrap() {
                std::fs::write(dir.join(file), content.as_str().unwrap()).unwrap();
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let data = wait_for(cp, &["get", "secret", secret])["data"].clone();
            let mode = volume["secret"]["defaultMode"].as_u64().unwrap() as u32;
            for item in volume["secret"]["items"].as_array().unwrap() {
                let encoded = data[item["key"].as_str().unwrap()].as_str().expect("the Secret has the key");
                let file = dir.join(item["path"].as_str().unwrap());
                std::fs::write(&file, base64_decode(encoded)).unwrap();
                std::os::unix::fs::chown(&file, Some(0), Some(group)).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        } else {
            assert!(volume["persistentVolumeClaim"].is_object(), "a volume the test cannot play: {volume}");
            std::os::unix::fs::chown(&dir, Some(user), Some(user)).unwrap();
        }
        volumes.insert(volume_name.to_owned(), dir);
    }
    // Every volume bound first, then the read-only ones made so, as the
    // runtime does: a mount point nested in a read-only volume must be made.
    let (mut binds, mut read_only) = (String::new(), String::new());
    for mount in container["volumeMounts"].as_array().unwrap() {
        let (source, path) = (&volumes[mount["name"].as_str().unwrap()], mount["mountPath"].as_str().unwrap());
        binds += &format!("mkdir -p '{path}' && mount --bind '{}' '{path}'\n", source.display());
        if mount["readOnly"] == true {
            read_only += &format!("mount -o remount,bind,ro '{path}'\n");
        }
    }
    binds += &read_only;
    let bin_dir = work.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(registry_bin(), bin_dir.join("berth-registry")).unwrap();
    std::fs::write(work.path().join("layer.txt"), "hello from a pod").unwrap();
    let quoted: Vec<String> = command.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        r#"set -e
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
export WORK='{work}'
{before}
{binds}
export PATH='{bin}':$PATH
chmod 755 '{work}' '{bin}' '{work}/volumes'
setpriv --reuid {user} --regid {user} --clear-groups {command} > '{work}/registry.log' 2>&1 &
for i in $(seq 1 100); do curl -fs '{ready}' >/dev/null && break; sleep 0.1; done
curl -fsS '{ready}' >/dev/null
curl -fsS '{live}' >/dev/null
cd '{work}' && tar -cf layer.tar layer.txt
'{crane}' append -f layer.tar -t 127.0.0.1:5000/play/app:v1 > pushed.txt 2>/dev/null
'{crane}' export 127.0.0.1:5000/play/app:v1 - | tar -xO layer.txt
"#,
        bin = bin_dir.display(),
        work = work.path().display(),
        crane = crane().display(),
        command = quoted.join(" "),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--fork", "--kill-child", "bash", "-c", &script])
        .output()
        .unwrap();
    let log = std::fs::read_to_string(work.path().join("registry.log")).unwrap_or_default();
    PlayedPod { out, log, volumes, user, work }
}

/// Decodes a Secret's base64 value.
fn base64_decode(encoded: &str) -> Vec<u8> {
    let mut child = Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(encoded.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not base64: {encoded}");
    out.stdout
}

/// The registry pod runs as rendered, with the ConfigMap at its mounted path
/// and an empty directory as the claim, and serves an image it stores there.
#[test]
fn the_rendered_pod_runs_the_registry() {
    let (cp, _op) = setup();
    // An open registry, as before access control: this test is about the pod spec,
    // volumes and user; Kubernetes authentication would need an API server the
    // registry can reach from here and a token.
    cp.apply(&registry("play", "{auth: {anonymous: all, kubernetes: {enabled: false}}}"));
    let played = play_registry_pod(&cp, "play", "");
    played.assert_pulled_and_ran();
    // The image landed on the volume, written by the unprivileged user.
    let blobs = played.volumes["data"].join("blobs/sha256");
    assert!(blobs.exists(), "no blobs on the volume");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&blobs).unwrap().uid(), played.user);
}

/// The pod of an S3 Registry runs as rendered against a real MinIO, reading
/// its credentials from the Secret's keys as the rendered `items` name them,
/// with no data volume at all, and its image lands in the bucket under the
/// Registry's prefix.
#[test]
fn the_rendered_s3_pod_runs_the_registry() {
    let (cp, _op) = setup();
    let (user, password) = ("berth-play", "berth-play-secret");
    cp.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: minio}}\nstringData: {{user: {user}, password: {password}}}\n"
    ));
    cp.apply(&registry(
        "play-s3",
        "{auth: {anonymous: all, kubernetes: {enabled: false}}, storage: {s3: {bucket: images, \
         endpoint: 'http://127.0.0.1:9000', prefix: play-s3/, \
         credentialsSecret: {name: minio, accessKeyIdKey: user, secretAccessKeyKey: password}}}}",
    ));
    // MinIO in the pod's network namespace, where the rendered endpoint points.
    let before = format!(
        r#"mkdir -p "$WORK/minio-data"
MINIO_ROOT_USER={user} MINIO_ROOT_PASSWORD={password} MINIO_BROWSER=off '{minio}' server "$WORK/minio-data" \
  --address 127.0.0.1:9000 --console-address 127.0.0.1:9001 --quiet > "$WORK/minio.log" 2>&1 &
for i in $(seq 1 300); do curl -fs http://127.0.0.1:9000/minio/health/cluster >/dev/null && break; sleep 0.1; done
curl -fsS --aws-sigv4 aws:amz:us-east-1:s3 -u {user}:{password} -X PUT http://127.0.0.1:9000/images
"#,
        minio = berth_testcontrolplane::minio_binary().display(),
    );
    let played = play_registry_pod(&cp, "play-s3", &before);
    played.assert_pulled_and_ran();
    let names: Vec<&str> = played.volumes.keys().map(String::as_str).collect();
    assert!(!names.contains(&"data"), "an S3 pod has no data volume: {names:?}");
    let credentials = &played.volumes["s3-credentials"];
    let mut files: Vec<String> =
        std::fs::read_dir(credentials).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["accessKeyId", "secretAccessKey"]);
    assert!(played.log.contains("s3://images/play-s3/"), "the registry did not serve the bucket:\n{}", played.log);
    // MinIO keeps an object as a directory of its key: the image is in the bucket, under the prefix.
    let prefix = played.work.path().join("minio-data/images/play-s3");
    let objects = std::fs::read_dir(&prefix).map(|d| d.count()).unwrap_or(0);
    assert!(objects > 0, "nothing under {} in the bucket", prefix.display());
}

#[test]
fn only_the_lease_holder_reconciles() {
    let (cp, first) = setup();
    let second = Operator::start(&cp);
    cp.apply(&registry("one", "{}"));
    wait_for(&cp, &["get", "deployment", "one"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let counts = [&first, &second].map(|op| op.metric("berth_operator_reconciliations_total").unwrap());
    assert!(counts.iter().filter(|&&n| n == 0).count() == 1, "exactly one operator must be idle: {counts:?}");
    let (leader, follower) = if counts[0] > 0 { (first, second) } else { (second, first) };
    drop(leader); // killed: its Lease expires and the other takes over
    cp.apply(&registry("two", "{}"));
    assert!(eventually(60, || json(&cp, &["get", "deployment", "two"])).is_some(), "the follower never took over");
    assert!(follower.metric("berth_operator_reconciliations_total").unwrap() > 0);
}

/// The `protected` lines of `<name>-gc-requests`.
fn protected(cp: &ControlPlane, name: &str) -> Option<Vec<String>> {
    let cm = json(cp, &["get", "configmap", &format!("{name}-gc-requests")])?;
    Some(cm["data"]["protected"].as_str()?.lines().map(str::to_owned).collect())
}

fn pod(name: &str, namespace: &str, image: &str, init_image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  initContainers: [{{name: init, image: '{init_image}'}}]\n  containers: [{{name: app, image: '{image}'}}]\n"
    )
}

/// The storage lifecycle under the operator: pods' images reach the registry
/// as protected references within seconds (Pending pods too, no kubelet runs
/// here), the collect annotation reaches it, and its report comes back into
/// the status through the ConfigMap its own account may write.
#[test]
fn storage_lifecycle() {
    let (cp, op) = setup();
    cp.apply(&registry(
        "life",
        "{gc: {interval: 6h, protectedHosts: [images.example.test]}, quota: {totalBytes: 5000}}",
    ));
    wait_for(&cp, &["get", "configmap", "life-gc-requests"]);
    let config = wait_for(&cp, &["get", "configmap", "life-config"]);
    let config = berth_registry::Config::from_yaml(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let exchange = config.gc.kubernetes.as_ref().unwrap();
    assert_eq!((exchange.requests.as_str(), exchange.report.as_str()), ("life-gc-requests", "life-usage"));
    assert_eq!(config.quota.total_bytes, 5000);
    let ip = json(&cp, &["get", "service", "life"]).unwrap()["spec"]["clusterIP"].as_str().unwrap().to_owned();

    let digest = format!("sha256:{}", "ab".repeat(32));
    cp.kubectl_ok(&["create", "namespace", "apps"]);
    cp.apply(&pod(
        "web",
        "apps",
        "life.default.svc:5000/team/web:v1",
        &format!("life.default:5000/tools/init@{digest}"),
    ));
    cp.apply(&pod("api", "default", &format!("{ip}:5000/team/api:v2"), "images.example.test/base:1"));
    cp.apply(&pod("foreign", "default", "docker.io/library/nginx:1", "other.default.svc:5000/team/other:v1"));
    let expected = ["base:1", "team/api:v2", "team/web:v1", &format!("tools/init@{digest}")].map(String::from);
    let listed = eventually(15, || protected(&cp, "life").filter(|p| p == &expected));
    assert!(listed.is_some(), "protected images not listed within seconds: {:?}", protected(&cp, "life"));

    // A Pod's label changing leaves the list alone: nothing is written.
    let writes = op.metric("berth_operator_api_writes_total").unwrap();
    let reconciles = op.metric("berth_operator_reconciliations_total").unwrap();
    cp.kubectl_ok(&["label", "pod", "api", "poke=1"]);
    assert!(
        eventually(30, || (op.metric("berth_operator_reconciliations_total")? > reconciles).then_some(())).is_some(),
        "a Pod event did not reach its Registry"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(op.metric("berth_operator_api_writes_total"), Some(writes), "writes for an unchanged list");

    // A deleted Pod's references go.
    // (Never scheduled, so gone at once: no kubelet has to confirm.)
    cp.kubectl_ok(&["delete", "pod", "web", "-n", "apps"]);
    let expected = ["base:1", "team/api:v2"].map(String::from);
    let listed = eventually(15, || protected(&cp, "life").filter(|p| p == &expected));
    assert!(listed.is_some(), "deleted pod still protected: {:?}", protected(&cp, "life"));

    // On demand: the annotation's value is the request.
    cp.kubectl_ok(&["annotate", "registry", "life", "berth.dev/collect=2024-05-01T10:00:00Z"]);
    let collect = eventually(15, || {
        let cm = json(&cp, &["get", "configmap", "life-gc-requests"])?;
        (cm["data"]["collect"] == "2024-05-01T10:00:00Z").then_some(())
    });
    assert!(collect.is_some(), "the collect annotation did not reach the registry");

    // The registry's account may read its requests and write its report, nothing else.
    let can = |verb: &str, resource: &str| registry_account_can(&cp, "life-registry", verb, resource);
    assert!(eventually(30, || can("patch", "configmap/life-usage").then_some(())).is_some(), "cannot write the report");
    assert!(can("get", "configmap/life-gc-requests"));
    assert!(!can("patch", "configmap/life-gc-requests"));
    assert!(!can("patch", "configmap/other"));
    assert!(!can("get", "configmap/other"));
    assert!(!can("get", "configmap/life-config"));
    let usage = json(&cp, &["get", "configmap", "life-usage"]).unwrap();
    assert!(usage["data"].is_null(), "the operator applies the report ConfigMap without data");

    // The report, written as the registry does: with a token of its ServiceAccount.
    let token = cp.kubectl_ok(&["create", "token", "life-registry", "--duration", "10m"]).trim().to_owned();
    let write_report = |report: &Value| {
        let patch = serde_json::json!({"data": {"report.json": report.to_string()}}).to_string();
        let out = cp
            .kubectl()
            .args(["--token", &token, "patch", "configmap", "life-usage", "--type", "merge", "-p", &patch])
            .args(["--field-manager", "berth-registry"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the registry's account cannot write: {}", String::from_utf8_lossy(&out.stderr));
    };
    let gi: u64 = 1 << 30;
    write_report(&serde_json::json!({
        "usage": {"bytes": 3 * gi / 2, "blobs": 4, "manifests": 2, "repositories": 2,
                  "volumeBytes": 10 * gi, "volumeAvailableBytes": 5 * gi},
        "lastCollection": {"request": "2024-05-01T10:00:00Z", "started": "2024-05-01T10:00:01Z",
                           "finished": "2024-05-01T10:00:02Z", "durationMs": 1000, "dryRun": false,
                           "blobsDeleted": 3, "manifestsDeleted": 1, "tagsDeleted": 1, "bytesFreed": 2048,
                           "protectedKept": 2}
    }));
    let reg = eventually(15, || json(&cp, &["get", "registry", "life"]).filter(|r| r["status"]["usage"].is_object()))
        .expect("the report never reached the status");
    assert_eq!(reg["status"]["usage"]["bytes"], 3 * gi / 2);
    assert_eq!(reg["status"]["used"], "1.5Gi");
    assert_eq!(reg["status"]["lastCollection"]["bytesFreed"], 2048);
    assert_eq!(condition(&reg, "StoragePressure").unwrap().0, "False");
    let printed = cp.kubectl_ok(&["get", "registry", "life"]);
    assert!(printed.contains("USED") && printed.contains("1.5Gi"), "{printed}");

    // 90% full: the condition turns True, with a Warning event.
    write_report(&serde_json::json!({"usage": {"bytes": 9 * gi, "blobs": 9, "manifests": 3, "repositories": 2,
                                               "volumeBytes": 10 * gi, "volumeAvailableBytes": gi}}));
    let reg = eventually(15, || {
        json(&cp, &["get", "registry", "life"])
            .filter(|r| condition(r, "StoragePressure").is_some_and(|c| c.0 == "True"))
    })
    .expect("no StoragePressure at 90%");
    assert!(condition(&reg, "StoragePressure").unwrap().1.contains("90% full"), "{reg}");
    assert!(reg["status"]["lastCollection"].is_null(), "a report without a collection clears it");
    let warned = eventually(15, || {
        let events = json(&cp, &["get", "events", "--field-selector", "involvedObject.name=life,type=Warning"])?;
        events["items"].as_array()?.iter().any(|e| e["reason"] == "StoragePressure").then_some(())
    });
    assert!(warned.is_some(), "no StoragePressure warning event");
}

/// A `berth-registry` process on a loopback port, killed when dropped.
struct LocalRegistry {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// Runs the registry with `config`, but listening on a free loopback port,
    /// storing in a fresh directory, over plain HTTP and open to anyone.
    fn start(mut config: berth_registry::Config) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        config.listen = format!("127.0.0.1:{port}");
        config.storage.root = dir.path().join("data");
        config.auth = Default::default();
        config.tls = None;
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config.to_yaml()).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new(registry_bin())
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let reg = LocalRegistry { child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir };
        let up = eventually(30, || (reg.call("GET", "/v2/", &[], None).0 == 200).then_some(()));
        assert!(up.is_some(), "the registry did not start:\n{}", reg.log());
        reg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request with curl: the status and the body.
    fn call(&self, method: &str, path: &str, headers: &[&str], body: Option<&[u8]>) -> (u16, Vec<u8>) {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-w", "%{http_code}", "-o"]).arg(out.path());
        match method {
            "HEAD" => cmd.arg("--head"),
            m => cmd.args(["-X", m]),
        };
        for h in headers {
            cmd.args(["-H", h]);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        let mut child =
            cmd.arg(format!("{}{path}", self.url)).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            if let Some(body) = body {
                stdin.write_all(body).unwrap();
            }
        }
        let done = child.wait_with_output().unwrap();
        let status = String::from_utf8_lossy(&done.stdout).trim().parse().unwrap_or(0);
        (status, std::fs::read(out.path()).unwrap_or_default())
    }

    /// Pushes a blob in one request; its digest.
    fn push_blob(&self, repo: &str, content: &[u8]) -> String {
        let digest = sha256(content);
        let (status, body) = self.call(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &["Content-Type: application/octet-stream"],
            Some(content),
        );
        assert_eq!(status, 201, "pushing blob {digest}: {}", String::from_utf8_lossy(&body));
        digest
    }

    /// Pushes an image of one config and one layer as `repo:tag`; the manifest's digest.
    fn push_image(&self, repo: &str, tag: &str, config: &[u8], layer: &[u8]) -> String {
        let descriptor = |media_type: &str, content: &[u8]| serde_json::json!({"mediaType": media_type, "digest": self.push_blob(repo, content), "size": content.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        })
        .to_string();
        let (status, body) = self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[&format!("Content-Type: {OCI_MANIFEST}")],
            Some(manifest.as_bytes()),
        );
        assert_eq!(status, 201, "pushing {repo}:{tag}: {}", String::from_utf8_lossy(&body));
        sha256(manifest.as_bytes())
    }

    /// The status of `HEAD /v2/<repo>/manifests/<reference>`.
    fn manifest(&self, repo: &str, reference: &str) -> u16 {
        self.call("HEAD", &format!("/v2/{repo}/manifests/{reference}"), &[&format!("Accept: {OCI_MANIFEST}")], None).0
    }

    /// `GET /v2/<repo>/blobs/<digest>`: the status and the bytes.
    fn blob(&self, repo: &str, digest: &str) -> (u16, Vec<u8>) {
        self.call("GET", &format!("/v2/{repo}/blobs/{digest}"), &[], None)
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(content: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(content)))
}

/// Annotates `keep` with `berth.dev/collect=<request>` and waits for the
/// registry's report of that collection in the Registry's status.
fn collect(cp: &ControlPlane, registry: &LocalRegistry, request: &str) -> Value {
    cp.kubectl_ok(&["annotate", "registry", "keep", &format!("berth.dev/collect={request}"), "--overwrite"]);
    eventually(60, || {
        json(cp, &["get", "registry", "keep"]).filter(|r| r["status"]["lastCollection"]["request"] == request)
    })
    .unwrap_or_else(|| {
        panic!(
            "collection {request} never reached the status: {:?}\nregistry log:\n{}",
            json(cp, &["get", "registry", "keep"]).map(|r| r["status"].clone()),
            registry.log()
        )
    })
}

/// Never delete what runs, end to end: the operator lists the images Pods name
/// (Pending ones too: no kubelet runs here), a real registry reads that list
/// and the collect annotation from the API server, collects under a rule that
/// keeps no tag, and its report comes back into the Registry's status.
#[test]
fn pods_keep_their_images_through_a_collection() {
    let (cp, _op) = setup();
    cp.apply(&registry(
        "keep",
        "{gc: {interval: 0s, gracePeriod: 0s}, retention: {rules: [{repositories: ['*'], tags: {keep: [nothing-matches]}, untaggedAfter: 0s}]}}",
    ));
    let config = wait_for(&cp, &["get", "configmap", "keep-config"]);
    wait_for(&cp, &["get", "configmap", "keep-gc-requests"]);
    wait_for(&cp, &["get", "configmap", "keep-usage"]);
    let mut config = berth_registry::Config::from_yaml(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.gc.interval, None, "0s collects on demand only");
    // The admin's kubeconfig: what the registry's Role allows is storage_lifecycle's concern.
    config.gc.kubernetes.as_mut().expect("the exchange through ConfigMaps").kubeconfig =
        Some(cp.kubeconfig().to_owned());
    let reg = LocalRegistry::start(config);

    let images: Vec<(String, Vec<u8>, String)> = ["v1", "v2", "v3"]
        .iter()
        .map(|tag| {
            let config = format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"tag":"{tag}"}}}}}}"#);
            let layer = format!("the layer of app:{tag}").into_bytes();
            let digest = reg.push_image("app", tag, config.as_bytes(), &layer);
            (digest, layer.clone(), sha256(&layer))
        })
        .collect();
    let [(v1, v1_layer, v1_layer_digest), (v2, v2_layer, v2_layer_digest), (v3, _, v3_layer_digest)] =
        <[_; 3]>::try_from(images).unwrap();

    cp.apply(&pod("run-v1", "default", "keep.default.svc:5000/app:v1", "keep.default.svc:5000/app:v1"));
    let by_digest = format!("keep.default.svc:5000/app@{v2}");
    cp.apply(&pod("run-v2", "default", &by_digest, &by_digest));
    let expected = ["app:v1".to_owned(), format!("app@{v2}")];
    let listed = eventually(30, || protected(&cp, "keep").filter(|p| p == &expected));
    assert!(listed.is_some(), "protected images not listed: {:?}", protected(&cp, "keep"));

    // No tag matches `keep`, so every tag goes but the one a Pod names (v1):
    // tags v2 and v3 are deleted. `untaggedAfter: 0s` with no grace period lets
    // every manifest no kept tag or protected digest reaches go: v1's stays
    // (its tag is kept), v2's stays (a Pod names its digest), v3's goes, and
    // with it the blobs only v3 referenced. v1's and v2's manifests are kept
    // only because of the Pods: without them the rule would delete both.
    let reg_status = collect(&cp, &reg, "run-1");
    let last = &reg_status["status"]["lastCollection"];
    assert_eq!(last["dryRun"], false, "{last}");
    assert_eq!(last["tagsDeleted"], 2, "{last}");
    assert_eq!(last["manifestsDeleted"], 1, "{last}");
    assert_eq!(last["protectedKept"], 2, "{last}");
    // v3's config, layer and manifest content, stored as blobs that nothing references now.
    assert_eq!(last["blobsDeleted"], 3, "{last}");
    assert!(last["error"].is_null(), "{last}");
    assert_eq!(reg_status["status"]["usage"]["manifests"], 2);
    for (reference, status) in [(&v1, 200), (&v2, 200), (&v3, 404)] {
        assert_eq!(reg.manifest("app", reference), status, "manifest {reference}");
    }
    for (tag, status) in [("v1", 200), ("v2", 404), ("v3", 404)] {
        assert_eq!(reg.manifest("app", tag), status, "tag {tag}");
    }
    assert_eq!(reg.blob("app", &v1_layer_digest), (200, v1_layer.clone()));
    assert_eq!(reg.blob("app", &v2_layer_digest), (200, v2_layer.clone()));
    assert_eq!(reg.blob("app", &v3_layer_digest).0, 404, "v3's layer was not collected");
    let used = reg_status["status"]["used"].as_str().expect("status.used").to_owned();
    let printed = cp.kubectl_ok(&["get", "registry", "keep"]);
    assert!(printed.contains("USED") && printed.contains(&used), "{used} not in:\n{printed}");

    // The Pod that named v1 goes: v1 is no longer protected and goes with the
    // next collection (its tag and manifest); v2 stays, still named by digest.
    cp.kubectl_ok(&["delete", "pod", "run-v1"]);
    let expected = [format!("app@{v2}")];
    let listed = eventually(30, || protected(&cp, "keep").filter(|p| p == &expected));
    assert!(listed.is_some(), "the deleted Pod's image is still protected: {:?}", protected(&cp, "keep"));
    let reg_status = collect(&cp, &reg, "run-2");
    let last = &reg_status["status"]["lastCollection"];
    assert_eq!(
        (&last["tagsDeleted"], &last["manifestsDeleted"], &last["protectedKept"]),
        (&1.into(), &1.into(), &1.into()),
        "{last}"
    );
    assert_eq!(last["blobsDeleted"], 3, "{last}");
    assert_eq!(reg_status["status"]["usage"]["manifests"], 1);
    assert_eq!(reg.manifest("app", &v1), 404, "v1 survived without its Pod");
    assert_eq!(reg.manifest("app", "v1"), 404);
    assert_eq!(reg.blob("app", &v1_layer_digest).0, 404);
    assert_eq!(reg.manifest("app", &v2), 200, "v2 went while a Pod names it");
    assert_eq!(reg.blob("app", &v2_layer_digest), (200, v2_layer));
}

/// Registry `watched` once its condition StorageHealthy has `status`.
fn with_storage_healthy(cp: &ControlPlane, status: &str) -> Option<Value> {
    json(cp, &["get", "registry", "watched"]).filter(|r| condition(r, "StorageHealthy").is_some_and(|c| c.0 == status))
}

/// prometheus-operator's ServiceMonitors, as kubectl names them.
const SERVICE_MONITORS: &str = "servicemonitors.monitoring.coreos.com";

/// The reason of condition `type_`.
fn reason(reg: &Value, type_: &str) -> Option<String> {
    let conditions = reg["status"]["conditions"].as_array()?;
    conditions.iter().find(|c| c["type"] == type_).and_then(|c| c["reason"].as_str()).map(str::to_owned)
}

/// True once a Warning event with `reason` is recorded for Registry `name`.
fn warned(cp: &ControlPlane, name: &str, reason: &str) -> bool {
    eventually(15, || {
        let selector = format!("involvedObject.name={name},type=Warning");
        let events = json(cp, &["get", "events", "--field-selector", &selector])?;
        events["items"].as_array()?.iter().any(|e| e["reason"] == reason).then_some(())
    })
    .is_some()
}

/// Observability under the operator. The registry's metrics port and probes
/// as the API server stores them, the port on a ClusterIP Service of its own
/// while the Registry's Service is a NodePort with the registry's port only;
/// a ServiceMonitor asked for before prometheus-operator's CRDs exist (the
/// real CRD of a pinned release) is reported as such, then created once they
/// do, owned by the Registry and selecting the metrics Service and not the
/// main one, without writes while idle, and deleted when switched off; the
/// storage probe's answer, written into the report ConfigMap as the registry
/// does with its own account, becomes the condition StorageHealthy; a
/// Registry whose Service would be that metrics Service is refused it.
#[test]
fn monitoring_and_storage_health() {
    let (cp, op) = setup();
    let crd = berth_testcontrolplane::service_monitor_crd();
    // An interval prometheus-operator would refuse is refused at once, with a message.
    let out = cp.kubectl_with_input(
        &["apply", "-f", "-"],
        &registry("bad", "{monitoring: {serviceMonitor: {enabled: true, interval: 'half a minute'}}}"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a Prometheus duration such as 30s"));

    cp.apply(&registry(
        "watched",
        "{service: {type: NodePort}, monitoring: {serviceMonitor: {enabled: true, interval: 15s, labels: {release: prom}}}}",
    ));
    let reg = eventually(60, || {
        json(&cp, &["get", "registry", "watched"]).filter(|r| condition(r, "ServiceMonitor").is_some())
    })
    .expect("no ServiceMonitor condition");
    let uid = reg["metadata"]["uid"].as_str().unwrap().to_owned();
    let (status, message) = condition(&reg, "ServiceMonitor").unwrap();
    assert_eq!((status.as_str(), reason(&reg, "ServiceMonitor").as_deref()), ("False", Some("CRDNotInstalled")));
    assert!(message.contains("install prometheus-operator's CRDs"), "{message}");
    assert_eq!(condition(&reg, "Degraded").unwrap().0, "False", "a missing CRD is not a failure");
    assert!(warned(&cp, "watched", "ServiceMonitorCRDNotInstalled"), "no Warning about the missing CRD");
    assert!(condition(&reg, "StorageHealthy").is_none(), "no condition before the registry reports");

    // The metrics port and the probes on it, as stored.
    let d = wait_for(&cp, &["get", "deployment", "watched"]);
    let template = &d["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    assert!(
        container["ports"].as_array().unwrap().iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 9464)
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!((&get["path"], &get["port"], &get["scheme"]), (&path.into(), &"metrics".into(), &"HTTP".into()));
    }
    assert_eq!(template["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(template["metadata"]["annotations"]["prometheus.io/port"], "9464");
    // The NodePort Service takes the registry's port out of the cluster, and
    // only that; the metrics port has a ClusterIP Service of its own.
    let main = json(&cp, &["get", "service", "watched"]).unwrap();
    assert_eq!(main["spec"]["type"], "NodePort");
    let ports = main["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "the main Service has more than the registry's port: {main}");
    assert_eq!((&ports[0]["name"], &ports[0]["port"]), (&"http".into(), &5000.into()));
    let svc = wait_for(&cp, &["get", "service", "watched-metrics"]);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], uid.as_str(), "the metrics Service is not owned");
    assert_eq!(svc["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(svc["metadata"]["labels"]["app.kubernetes.io/component"], "metrics");
    assert_eq!(svc["spec"]["selector"], main["spec"]["selector"], "not the registry's pods");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{svc}");
    assert_eq!((&ports[0]["name"], &ports[0]["port"]), (&"metrics".into(), &9464.into()));
    assert_eq!(ports[0]["targetPort"], "metrics");
    assert!(ports[0]["nodePort"].is_null(), "{svc}");
    let config = wait_for(&cp, &["get", "configmap", "watched-config"]);
    let config = berth_registry::Config::from_yaml(config["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(config.metrics.listen.as_deref(), Some("0.0.0.0:9464"));

    // The real CRD; the CRD's interval rule is its pattern.
    cp.kubectl_ok(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
    cp.kubectl_ok(&["wait", "--for=condition=Established", &format!("crd/{SERVICE_MONITORS}"), "--timeout=30s"]);
    let installed = json(&cp, &["get", "crd", SERVICE_MONITORS]).unwrap();
    let endpoint = &installed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["endpoints"]
        ["items"]["properties"];
    let pattern = endpoint["interval"]["pattern"].as_str().expect("the CRD's interval pattern");
    assert!(berth_crds::INTERVAL_RULE.contains(&format!("'{pattern}'")), "{pattern} is not the CRD's rule");

    // The next reconcile creates it: the periodic resync would, within 5 minutes;
    // touching an owned object reconciles now.
    cp.kubectl_ok(&["label", "service", "watched", "poke=1"]);
    let sm = eventually(30, || json(&cp, &["get", SERVICE_MONITORS, "watched"]))
        .expect("no ServiceMonitor after the CRD was installed");
    let owner = &sm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["uid"], &owner["controller"]),
        (&"Registry".into(), &uid.as_str().into(), &true.into())
    );
    let selects = |svc: &Value| {
        let labels = &svc["metadata"]["labels"];
        sm["spec"]["selector"]["matchLabels"].as_object().unwrap().iter().all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&svc), "it does not select the metrics Service: {sm}");
    assert!(!selects(&main), "it selects the main Service too: {sm}");
    assert_eq!(
        sm["spec"]["endpoints"],
        serde_json::json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    let applied = eventually(30, || {
        json(&cp, &["get", "registry", "watched"])
            .filter(|r| condition(r, "ServiceMonitor").is_some_and(|c| c.0 == "True"))
    });
    assert_eq!(
        reason(&applied.expect("the condition never turned True"), "ServiceMonitor").as_deref(),
        Some("Applied")
    );

    // Idle with a ServiceMonitor: a reconcile that finds it as wanted writes nothing.
    op.assert_idle_reconcile_writes_nothing(&cp, &["service", "watched", "poke=2"]);

    // Switched off: deleted, and the condition goes.
    patch_registry(&cp, "watched", r#"{"spec":{"monitoring":{"serviceMonitor":{"enabled":false}}}}"#);
    assert!(
        eventually(30, || json(&cp, &["get", SERVICE_MONITORS, "watched"]).is_none().then_some(())).is_some(),
        "the ServiceMonitor outlived its switch"
    );
    let gone = eventually(30, || {
        json(&cp, &["get", "registry", "watched"]).filter(|r| condition(r, "ServiceMonitor").is_none())
    });
    assert!(gone.is_some(), "the ServiceMonitor condition stayed");

    // The storage probe's answer, written as the registry does: a server-side
    // apply of key health.json, under a field manager of its own, with a token
    // of its ServiceAccount.
    let token = cp.kubectl_ok(&["create", "token", "watched-registry", "--duration", "10m"]).trim().to_owned();
    let write_health = |health: &str| {
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "watched-usage", "namespace": "default"},
            "data": {"health.json": health},
        });
        let args = ["--token", &token, "apply", "--server-side", "--force-conflicts", "-f", "-"];
        let out = cp
            .kubectl_with_input(&[&args[..], &["--field-manager", "berth-registry-health"]].concat(), &doc.to_string());
        assert!(out.status.success(), "the registry's account cannot write: {}", String::from_utf8_lossy(&out.stderr));
    };
    write_health(
        &serde_json::json!({"writable": false, "message": "probe write: read-only file system",
                            "since": "2026-11-29T10:00:00Z", "pod": "watched-5d8f"})
        .to_string(),
    );
    let reg = eventually(15, || with_storage_healthy(&cp, "False")).expect("StorageHealthy never turned False");
    let message = condition(&reg, "StorageHealthy").unwrap().1;
    assert!(message.contains("probe write: read-only file system") && message.contains("watched-5d8f"), "{message}");
    assert_eq!(reason(&reg, "StorageHealthy").as_deref(), Some("Unwritable"));
    assert!(warned(&cp, "watched", "StorageUnwritable"), "no Warning about the unwritable storage");
    write_health(
        &serde_json::json!({"writable": true, "since": "2026-11-29T10:05:00Z", "pod": "watched-5d8f"}).to_string(),
    );
    let reg = eventually(15, || with_storage_healthy(&cp, "True")).expect("StorageHealthy never turned True");
    assert_eq!(reason(&reg, "StorageHealthy").as_deref(), Some("Writable"));
    // A malformed answer is ignored: no condition, and no failure.
    write_health("{\"writable\": tru");
    let reg = eventually(15, || {
        json(&cp, &["get", "registry", "watched"]).filter(|r| condition(r, "StorageHealthy").is_none())
    })
    .expect("a malformed health.json left the condition");
    assert_eq!(condition(&reg, "Degraded").unwrap().0, "False");

    // Registry `watched-metrics`'s Service would be `watched`'s metrics Service:
    // refused, and the metrics Service stays `watched`'s, as it was.
    cp.apply(&registry("watched-metrics", "{}"));
    let clash = eventually(60, || {
        json(&cp, &["get", "registry", "watched-metrics"])
            .filter(|r| condition(r, "Degraded").is_some_and(|c| c.0 == "True"))
    })
    .expect("the Registry never reported the Service it cannot have");
    let message = condition(&clash, "Degraded").unwrap().1;
    assert!(message.contains("Service watched-metrics exists and another object controls it"), "{message}");
    let kept = json(&cp, &["get", "service", "watched-metrics"]).unwrap();
    assert_eq!(kept["metadata"]["ownerReferences"], svc["metadata"]["ownerReferences"], "{kept}");
    assert_eq!((&kept["spec"]["type"], &kept["spec"]["ports"]), (&svc["spec"]["type"], &svc["spec"]["ports"]));

    // A user's own ServiceMonitor with a Registry's name is left alone; the Registry says why.
    cp.apply(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: mine, namespace: default}\nspec: {selector: {matchLabels: {app: mine}}, endpoints: [{port: web}]}\n",
    );
    cp.apply(&registry("mine", "{monitoring: {serviceMonitor: {enabled: true}}}"));
    let refused = eventually(60, || {
        json(&cp, &["get", "registry", "mine"]).filter(|r| condition(r, "Degraded").is_some_and(|c| c.0 == "True"))
    })
    .expect("the Registry took over or ignored a ServiceMonitor it does not control");
    let message = condition(&refused, "Degraded").unwrap().1;
    assert!(message.contains("ServiceMonitor mine exists and this Registry does not control it"), "{message}");
    let theirs = json(&cp, &["get", "servicemonitor", "mine"]).unwrap();
    assert!(theirs["metadata"]["ownerReferences"].is_null(), "{theirs}");
    assert_eq!(theirs["spec"]["endpoints"][0]["port"], "web");
}

/// Mirrors: the API server checks them with the CRD's rules (messages
/// included), the operator renders them into the registry's config and, with
/// `containerdMirrors`, gives the node pods the container that writes the
/// nodes' hosts.toml files, and takes it away again.
#[test]
fn mirrors_and_containerd_mirrors() {
    let (cp, _op) = setup();
    let refused = |spec: &str, message: &str| {
        let out = cp.kubectl_with_input(&["apply", "-f", "-"], &registry("bad", spec));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{spec} not refused with {message:?}: {stderr}");
    };
    let m = |fields: &str| format!("{{mirrors: [{{prefix: up, url: 'https://10.0.0.1:5443', {fields}}}]}}");
    refused("{mirrors: [{prefix: Up, url: 'https://x'}]}", "mirrors[].prefix must be repository path components");
    refused("{mirrors: [{prefix: up, url: 'https://x/v2'}]}", "mirrors[].url must be http(s)://host[:port]");
    refused("{mirrors: [{prefix: up, url: 'ftp://x'}]}", "mirrors[].url must be http(s)://host[:port]");
    refused(&m("imageHost: 'a b'"), "mirrors[].imageHost must be host[:port]");
    refused(&m("maxSize: '0'"), "mirrors[].maxSize must be a positive quantity");
    refused(&m("maxSize: lots"), "mirrors[].maxSize must be a positive quantity");
    refused(&m("tagTtlSeconds: 90000"), "tagTtlSeconds");
    refused(&m("credentialsSecret: {name: c, usernameKey: ../u}"), "Secret key");
    refused("{mirrors: [{prefix: a, url: 'https://a'}, {prefix: a/b, url: 'https://b'}]}", "lie inside another");
    refused("{mirrors: [{prefix: a, url: 'https://a'}, {prefix: a, url: 'https://b'}]}", "Duplicate value");
    refused(
        "{mirrors: [{prefix: a, url: 'https://a', imageHost: x.io}, {prefix: b, url: 'https://b', imageHost: x.io}]}",
        "two mirrors for one image host",
    );
    let needs = "nodeAccess.containerdMirrors needs nodeAccess.enabled";
    refused("{nodeAccess: {enabled: true, containerdMirrors: {enabled: true}}}", needs);
    refused(&format!("{{nodeAccess: {{containerdMirrors: {{enabled: true}}}}, {}", &m("")[1..]), needs);
    refused(
        &format!(
            "{{nodeAccess: {{enabled: true, containerdMirrors: {{enabled: true, certsDir: etc}}}}, {}",
            &m("")[1..]
        ),
        "certsDir must be an absolute path",
    );

    let spec = format!(
        "{{auth: {{anonymous: pull}}, nodeAccess: {{enabled: true, port: 5997, containerdMirrors: {{enabled: true}}}}, {}",
        &m("imageHost: '10.0.0.1:5443', maxSize: 1Gi, credentialsSecret: {name: up}, caSecret: {name: up-ca}")[1..]
    );
    cp.apply(&registry("cache", &spec));
    let reg = json(&cp, &["get", "registry", "cache"]).unwrap();
    let mirror = &reg["spec"]["mirrors"][0];
    assert_eq!(mirror["tagTtlSeconds"], 300);
    assert_eq!(mirror["credentialsSecret"]["usernameKey"], "username");
    assert_eq!(mirror["caSecret"]["key"], "ca.crt");
    assert_eq!(reg["spec"]["nodeAccess"]["containerdMirrors"]["certsDir"], "/etc/containerd/certs.d");
    let config = eventually(60, || {
        let cm = json(&cp, &["get", "configmap", "cache-config"])?;
        let text = cm["data"]["config.yaml"].as_str()?.to_owned();
        text.contains("mirrors").then_some(text)
    })
    .expect("no mirrors in the rendered config");
    let config = berth_registry::Config::from_yaml(&config).unwrap();
    assert_eq!(config.mirrors[0].max_bytes, Some(1 << 30));
    assert_eq!(config.mirrors[0].ca_file.as_deref(), Some("/etc/berth/mirrors/0/ca.crt".as_ref()));
    let containers = |ds: &Value| -> Vec<String> {
        ds["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].to_string()).collect()
    };
    let ds = wait_for(&cp, &["get", "daemonset", "cache-node-access"]);
    assert_eq!(containers(&ds), ["\"forward\"", "\"containerd-mirrors\""]);
    assert_eq!(ds["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"], "/etc/containerd/certs.d");

    // Off again: the node pods lose the container (and stop, removing their files).
    patch_registry(&cp, "cache", r#"{"spec":{"nodeAccess":{"containerdMirrors":{"enabled":false}}}}"#);
    let one = eventually(60, || {
        let ds = json(&cp, &["get", "daemonset", "cache-node-access"])?;
        (containers(&ds).len() == 1).then_some(ds)
    });
    assert!(one.is_some(), "the containerd-mirrors container stayed");
}
