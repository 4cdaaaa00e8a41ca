//! Kubernetes identities and RBAC on a real kube-apiserver: ServiceAccount
//! tokens checked by TokenReview against the registry's audience, pushes
//! decided by RoleBindings through SubjectAccessReview. The registry itself uses
//! a token of its own ServiceAccount, bound to `system:auth-delegator` only.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_registry::config::{Anonymous, KubernetesAuthConfig};
use berth_testcontrolplane::ControlPlane;
use common::*;
use reqwest::{Method, StatusCode};

const AUDIENCE: &str = "berth.dev/berth/registry";
const CACHE_SECS: u64 = 2;

/// The roles users bind, as shipped in manifests/access.yaml.
const ROLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/access.yaml");

fn setup(cp: &ControlPlane, dir: &Path) -> PathBuf {
    cp.apply(&std::fs::read_to_string(ROLES).expect("manifests/access.yaml"));
    for ns in ["berth", "team-a", "team-b"] {
        cp.kubectl_ok(&["create", "namespace", ns]);
    }
    cp.kubectl_ok(&["create", "serviceaccount", "registry", "-n", "berth"]);
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "berth-registry-auth",
        "--clusterrole=system:auth-delegator",
        "--serviceaccount=berth:registry",
    ]);
    for team in ["team-a", "team-b"] {
        cp.kubectl_ok(&["create", "serviceaccount", "ci", "-n", team]);
        let sa = format!("--serviceaccount={team}:ci");
        cp.kubectl_ok(&["create", "rolebinding", "push", "--clusterrole=berth-push", &sa, "-n", team]);
    }
    // The registry's own kubeconfig: the same API server, its ServiceAccount's token.
    let token = token(cp, "berth", "registry", None);
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let own: String = admin
        .lines()
        .map(|l| if l.trim_start().starts_with("token:") { format!("    token: {token}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, own).unwrap();
    path
}

fn token(cp: &ControlPlane, ns: &str, sa: &str, audience: Option<&str>) -> String {
    let mut args = vec!["create", "token", sa, "-n", ns, "--duration", "1h"];
    if let Some(a) = audience {
        args.extend(["--audience", a]);
    }
    cp.kubectl_ok(&args).trim().to_owned()
}

fn basic(token: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    format!("Basic {}", STANDARD.encode(format!("any-user:{token}")))
}

async fn push_status(r: &Registry, repo: &str) -> StatusCode {
    r.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap().status()
}

/// Polls a push start until it is refused, failing after `secs`; returns the refusal.
async fn refused_within(r: &Registry, repo: &str, secs: u64) -> StatusCode {
    push_status_until(r, repo, secs, |s| s != StatusCode::ACCEPTED).await
}

/// Polls a push start until `done` says so of its status, failing after `secs`.
async fn push_status_until(r: &Registry, repo: &str, secs: u64, done: impl Fn(StatusCode) -> bool) -> StatusCode {
    let started = Instant::now();
    loop {
        let status = push_status(r, repo).await;
        if done(status) {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "{repo}: still {status} after {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ServiceAccount token as the API server would sign it, but expired an hour ago.
fn expired_token(cp: &ControlPlane) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let server = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let server = server.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_owned();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": format!("{server}/"), "aud": [AUDIENCE], "sub": "system:serviceaccount:team-a:ci",
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(cp.dir().join("pki/sa.key"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(signed.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(der_to_raw(&out.stdout)))
}

/// An ECDSA signature from DER (`SEQUENCE { INTEGER r, INTEGER s }`) to JWS's r || s.
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut i = 2;
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "an INTEGER");
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        raw.extend(std::iter::repeat_n(0, 32 - int.len()));
        raw.extend_from_slice(int);
        i += 2 + len;
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolebindings_decide_who_pushes_where() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = setup(&cp, dir.path());
    let r = Registry::with(|c| {
        c.auth.anonymous = Anonymous::None;
        c.auth.cache_secs = CACHE_SECS;
        c.auth.kubernetes = Some(KubernetesAuthConfig { audience: AUDIENCE.into(), kubeconfig: Some(kubeconfig) });
    })
    .await;
    let a = token(&cp, "team-a", "ci", Some(AUDIENCE));
    let b = token(&cp, "team-b", "ci", Some(AUDIENCE));

    // As a Basic password with any user name, and as a Bearer token.
    let team_a = r.authorized(&basic(&a));
    assert_eq!(team_a.get("/v2/").await.status(), StatusCode::OK);
    team_a.push_image("team-a/app/web", "v1", b"layer a").await;
    let team_b = r.authorized(&format!("Bearer {b}"));
    team_b.push_image("team-b/app", "v1", b"layer b").await;
    // Each team's token is refused in the other's namespace and outside any.
    for (client, other) in [(&team_a, "team-b/app"), (&team_b, "team-a/app/web"), (&team_a, "alpine")] {
        let denied = client.req(Method::POST, &format!("/v2/{other}/blobs/uploads/")).send().await.unwrap();
        assert_error(denied, StatusCode::FORBIDDEN, "DENIED").await;
    }
    // A cluster-scoped repository granted by name to team-a's ci: that one only,
    // not the same name inside a namespace.
    cp.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: alpine-push}\nrules:\n- {apiGroups: [berth.dev], resources: [clusterrepositories], resourceNames: [alpine], verbs: [get, create]}\n");
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "alpine-push",
        "--clusterrole=alpine-push",
        "--serviceaccount=team-a:ci",
    ]);
    // (The refusal above is remembered for the cache time.)
    push_status_until(&team_a, "alpine", CACHE_SECS + 3, |s| s == StatusCode::ACCEPTED).await;
    assert_eq!(push_status(&team_a, "team-b/alpine").await, StatusCode::FORBIDDEN);
    // Pull needs get, which berth-push includes; delete needs delete, which it does not.
    let get = team_a.req(Method::GET, "/v2/team-a/app/web/manifests/v1").header("accept", OCI_MANIFEST);
    assert_eq!(get.send().await.unwrap().status(), StatusCode::OK);
    let delete = team_a.req(Method::DELETE, "/v2/team-a/app/web/manifests/v1").send().await.unwrap();
    assert_error(delete, StatusCode::FORBIDDEN, "DENIED").await;

    // Tokens for another audience (the API server's), the admin's static token,
    // an expired token, garbage and no token at all: 401 with the challenge.
    let wrong_audience = token(&cp, "team-a", "ci", None);
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let admin = admin.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap().to_owned();
    for bad in
        [basic(&wrong_audience), basic(&admin), basic(&expired_token(&cp)), basic("garbage"), "Bearer x.y.z".into()]
    {
        let refused = r.authorized(&bad).req(Method::POST, "/v2/team-a/app/blobs/uploads/").send().await.unwrap();
        assert_eq!(header(&refused, "www-authenticate"), r#"Basic realm="berth""#);
        assert_error(refused, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
    assert_eq!(push_status(&r, "team-a/app").await, StatusCode::UNAUTHORIZED);

    // A deleted RoleBinding stops pushes within the cache time.
    assert_eq!(push_status(&team_a, "team-a/app").await, StatusCode::ACCEPTED);
    cp.kubectl_ok(&["delete", "rolebinding", "push", "-n", "team-a"]);
    assert_eq!(refused_within(&team_a, "team-a/app", CACHE_SECS + 3).await, StatusCode::FORBIDDEN);
    // A deleted ServiceAccount's token stops working once the API server's own
    // token cache (10 s) and ours have let it go.
    assert_eq!(push_status(&team_b, "team-b/app").await, StatusCode::ACCEPTED);
    cp.kubectl_ok(&["delete", "serviceaccount", "ci", "-n", "team-b"]);
    assert_eq!(refused_within(&team_b, "team-b/app", CACHE_SECS + 13).await, StatusCode::UNAUTHORIZED);
}
