//! Access control with htpasswd users: the challenge, 401 and 403 with the
//! spec's codes, anonymous pulls, access rules, reloading the file, mounts and
//! the audit trail.

mod common;

use std::path::Path;
use std::time::Duration;

use berth_registry::config::{AccessRule, Action, Anonymous, HtpasswdConfig};
use common::*;
use reqwest::{Method, StatusCode};

fn htpasswd(path: &Path, users: &[(&str, &str)]) {
    let lines: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 4).unwrap())).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn rule(users: &[&str], repositories: &[&str], actions: &[Action]) -> AccessRule {
    AccessRule {
        users: users.iter().map(|s| s.to_string()).collect(),
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        actions: actions.to_vec(),
    }
}

/// A registry with alice (push and pull on team-a/*), bob (pull everywhere) and
/// admin (everything), and the given anonymous policy.
async fn registry(anonymous: Anonymous) -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    htpasswd(&file, &[("alice", "wonderland"), ("bob", "builder"), ("admin", "root")]);
    let access = vec![
        rule(&["alice"], &["team-a/*"], &[Action::Pull, Action::Push]),
        rule(&["bob"], &["*"], &[Action::Pull]),
        rule(&["admin"], &["*"], &[Action::Pull, Action::Push, Action::Delete]),
    ];
    let r = Registry::with(|c| {
        c.auth.anonymous = anonymous;
        c.auth.realm = "test-realm".into();
        c.auth.htpasswd = Some(HtpasswdConfig { path: file, access });
    })
    .await;
    (r, dir)
}

async fn manifest(r: &Registry, path: &str) -> reqwest::Response {
    r.req(Method::GET, path).header("accept", OCI_MANIFEST).send().await.unwrap()
}

async fn assert_challenge(response: reqwest::Response) {
    assert_eq!(header(&response, "www-authenticate"), r#"Basic realm="test-realm""#);
    assert_error(response, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn the_base_endpoint_challenges_until_credentials_are_right() {
    for anonymous in [Anonymous::None, Anonymous::Pull] {
        let (r, _dir) = registry(anonymous).await;
        // Even with anonymous pulls on: clients only send credentials after a 401 here.
        assert_challenge(r.get("/v2/").await).await;
        assert_challenge(r.as_user("alice", "wrong").get("/v2/").await).await;
        assert_challenge(r.as_user("nobody", "x").get("/v2/").await).await;
        assert_challenge(r.authorized("Bearer some.jwt.token").get("/v2/").await).await;
        assert_challenge(r.authorized("Digest whatever").get("/v2/").await).await;
        assert_eq!(r.as_user("alice", "wonderland").get("/v2/").await.status(), StatusCode::OK);
        // Probes need no credentials.
        assert_eq!(r.get("/healthz").await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn strangers_learn_nothing_and_users_get_what_their_rules_grant() {
    let (r, _dir) = registry(Anonymous::None).await;
    let alice = r.as_user("alice", "wonderland");
    let bob = r.as_user("bob", "builder");
    let (digest, _) = alice.push_image("team-a/app", "v1", b"layer").await;

    // Existing or not, an anonymous client gets the same 401.
    assert_challenge(r.get("/v2/team-a/app/manifests/v1").await).await;
    assert_challenge(r.get("/v2/team-a/nothing/manifests/v1").await).await;
    assert_challenge(r.get("/v2/_catalog").await).await;
    assert_challenge(r.req(Method::POST, "/v2/team-a/app/blobs/uploads/").send().await.unwrap()).await;

    // alice pushes to team-a only; bob pulls everywhere, pushes nowhere.
    let denied = alice.req(Method::POST, "/v2/team-b/app/blobs/uploads/").send().await.unwrap();
    let message = assert_error(denied, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(message.contains("alice") && message.contains("team-b/app"), "{message}");
    assert_eq!(manifest(&bob, "/v2/team-a/app/manifests/v1").await.status(), StatusCode::OK);
    assert_eq!(manifest(&bob, &format!("/v2/team-a/app/manifests/{digest}")).await.status(), StatusCode::OK);
    let push = bob.req(Method::POST, "/v2/team-a/app/blobs/uploads/").send().await.unwrap();
    assert_error(push, StatusCode::FORBIDDEN, "DENIED").await;
    // Nobody but admin deletes, and only admin lists the catalog.
    let delete = alice.req(Method::DELETE, "/v2/team-a/app/manifests/v1").send().await.unwrap();
    assert_error(delete, StatusCode::FORBIDDEN, "DENIED").await;
    assert_error(alice.get("/v2/_catalog").await, StatusCode::FORBIDDEN, "DENIED").await;
    let admin = r.as_user("admin", "root");
    assert_eq!(admin.get("/v2/_catalog").await.status(), StatusCode::OK);
    let delete = admin.req(Method::DELETE, "/v2/team-a/app/manifests/v1").send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn anonymous_pull_lets_strangers_read_but_not_write() {
    let (r, _dir) = registry(Anonymous::Pull).await;
    r.as_user("alice", "wonderland").push_image("team-a/app", "v1", b"layer").await;
    assert_eq!(manifest(&r, "/v2/team-a/app/manifests/v1").await.status(), StatusCode::OK);
    assert_eq!(r.get("/v2/team-a/app/tags/list").await.status(), StatusCode::OK);
    assert_challenge(r.get("/v2/_catalog").await).await;
    assert_challenge(r.req(Method::POST, "/v2/team-a/app/blobs/uploads/").send().await.unwrap()).await;
    assert_challenge(r.req(Method::DELETE, "/v2/team-a/app/manifests/v1").send().await.unwrap()).await;
    // Wrong credentials are refused even where anonymous access would do.
    assert_challenge(r.as_user("alice", "nope").get("/v2/team-a/app/manifests/v1").await).await;
}

#[tokio::test]
async fn a_changed_htpasswd_file_takes_effect_without_a_restart() {
    let (r, dir) = registry(Anonymous::None).await;
    let alice = r.as_user("alice", "wonderland");
    assert_eq!(alice.get("/v2/").await.status(), StatusCode::OK);
    htpasswd(&dir.path().join("htpasswd"), &[("alice", "new-password"), ("carol", "c")]);
    let changed = async {
        while alice.get("/v2/").await.status() == StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(6), changed).await.expect("the old password kept working");
    assert_eq!(r.as_user("alice", "new-password").get("/v2/").await.status(), StatusCode::OK);
    assert_eq!(r.as_user("carol", "c").get("/v2/").await.status(), StatusCode::OK);
    // A broken file keeps the users that were there.
    std::fs::write(dir.path().join("htpasswd"), "not an htpasswd file").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(r.as_user("carol", "c").get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_mount_never_reads_a_repository_the_client_may_not_pull() {
    let (r, _dir) = registry(Anonymous::None).await;
    let admin = r.as_user("admin", "root");
    let secret = admin.push_blob("secret/app", b"confidential layer").await;
    let alice = r.as_user("alice", "wonderland");
    for query in [format!("mount={secret}&from=secret/app"), format!("mount={secret}")] {
        let mount = alice.req(Method::POST, &format!("/v2/team-a/app/blobs/uploads/?{query}")).send().await.unwrap();
        assert_eq!(mount.status(), StatusCode::ACCEPTED, "{query}: a session, not a mount");
        let read = alice.get(&format!("/v2/team-a/app/blobs/{secret}")).await;
        assert_eq!(read.status(), StatusCode::NOT_FOUND, "{query}");
    }
    // From a repository alice may pull, the mount works.
    let own = admin.push_blob("team-a/base", b"shared layer").await;
    let mount = alice.req(Method::POST, &format!("/v2/team-a/app/blobs/uploads/?mount={own}&from=team-a/base"));
    assert_eq!(mount.send().await.unwrap().status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_open_registry_ignores_credentials() {
    let r = Registry::start().await;
    assert_eq!(r.authorized("Garbage").get("/v2/").await.status(), StatusCode::OK);
    let anyone = r.as_user("x", "y");
    anyone.push_image("anything", "v1", b"layer").await;
    let delete = anyone.req(Method::DELETE, "/v2/anything/manifests/v1").send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
}

/// The audit trail of a `berth-registry` process: one JSON line per push, tag
/// and delete, naming who, the repository, the reference and the digest.
#[tokio::test]
async fn pushes_tags_and_deletes_leave_one_audit_line_each() {
    let dir = tempfile::tempdir().unwrap();
    htpasswd(&dir.path().join("htpasswd"), &[("alice", "wonderland")]);
    let config = dir.path().join("config.yaml");
    let yaml = format!("auth: {{anonymous: pull, htpasswd: {{path: {}}}}}\n", dir.path().join("htpasswd").display());
    std::fs::write(&config, yaml).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log-format", "json", "--config"])
        .arg(&config)
        .arg("--root")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "audit=info")
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let open = Registry::on_root(dir.path(), |_| {}).await; // only for its helpers
    let r = open.via(format!("http://127.0.0.1:{port}")).as_user("alice", "wonderland");
    for _ in 0..100 {
        if r.client.get(format!("{}/healthz", r.base)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (digest, manifest) = r.push_image("team/app", "v1", b"layer").await;
    let retag = r.put_manifest("team/app", "v2", OCI_MANIFEST, &manifest).await;
    assert_eq!(retag.status(), StatusCode::CREATED);
    let layer = r.push_blob("team/app", b"loose").await;
    for path in ["/v2/team/app/manifests/v2".to_owned(), format!("/v2/team/app/blobs/{layer}")] {
        assert_eq!(r.req(Method::DELETE, &path).send().await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let delete = r.req(Method::DELETE, &format!("/v2/team/app/manifests/{digest}")).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::ACCEPTED);
    // A refused push leaves no line.
    let anonymous = open.via(format!("http://127.0.0.1:{port}"));
    assert_eq!(
        anonymous.put_manifest("team/app", "v3", OCI_MANIFEST, &manifest).await.status(),
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "audit")
        .collect();
    let seen: Vec<(String, String, String)> = lines
        .iter()
        .map(|v| {
            let f = &v["fields"];
            assert_eq!(f["who"], "alice", "{v}");
            assert_eq!(f["repository"], "team/app", "{v}");
            (
                f["event"].as_str().unwrap().to_owned(),
                f["reference"].as_str().unwrap().to_owned(),
                f["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let d = digest.to_string();
    let expected = vec![
        ("Push".to_owned(), String::new(), d.clone()),
        ("Tag".to_owned(), "v1".to_owned(), d.clone()),
        ("Push".to_owned(), String::new(), d.clone()),
        ("Tag".to_owned(), "v2".to_owned(), d.clone()),
        ("DeleteTag".to_owned(), "v2".to_owned(), String::new()),
        ("DeleteBlob".to_owned(), String::new(), layer.to_string()),
        ("DeleteManifest".to_owned(), String::new(), d.clone()),
    ];
    // Blob pushes of the image are not audited (only manifests, tags and deletes).
    assert_eq!(seen, expected);
}

/// A flood of wrong passwords (each a bcrypt check) queues behind a few checks
/// at a time; a logged-in client's pushes and pulls go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_passwords_does_not_stall_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    // Cost 8: about 15 ms a check in a release build, so 200 guesses are seconds of work.
    std::fs::write(&file, format!("alice:{}\n", bcrypt::hash("wonderland", 8).unwrap())).unwrap();
    let r = Registry::with(|c| {
        c.auth.anonymous = Anonymous::None;
        c.auth.htpasswd = Some(HtpasswdConfig { path: file, access: Vec::new() });
    })
    .await;
    let alice = r.as_user("alice", "wonderland");
    assert_eq!(alice.get("/v2/").await.status(), StatusCode::OK);
    let guesses: Vec<_> = (0..200)
        .map(|i| {
            let guesser = r.as_user("alice", &format!("guess-{i}"));
            tokio::spawn(async move { guesser.get("/v2/").await.status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        let digest = alice.push_blob("team/app", format!("blob {i}").as_bytes()).await;
        assert_eq!(alice.get(&format!("/v2/team/app/blobs/{digest}")).await.status(), StatusCode::OK);
    }
    let elapsed = started.elapsed();
    let mut refused = 0;
    for g in guesses {
        refused += usize::from(g.await.unwrap() == StatusCode::UNAUTHORIZED);
    }
    assert_eq!(refused, 200);
    assert!(elapsed < Duration::from_secs(2), "5 pushes and pulls took {elapsed:?} during the guessing");
}

#[tokio::test]
async fn access_decisions_and_credential_cache_lookups_are_counted() {
    let (r, _dir) = registry(Anonymous::None).await;
    let decisions =
        |s: &Scrape, decision: &str| s.sum("berth_registry_access_decisions_total", &[("decision", decision)]);
    let before = Scrape::of(&r, "/metrics").await;
    assert_eq!(decisions(&before, "allowed") + decisions(&before, "denied"), 0.0, "counted from zero");
    // A stranger, a wrong password, a user past their rules, and two allowed pulls.
    assert_eq!(manifest(&r, "/v2/team-a/app/manifests/v1").await.status(), StatusCode::UNAUTHORIZED);
    let wrong = r.as_user("alice", "looking-glass");
    assert_eq!(manifest(&wrong, "/v2/team-a/app/manifests/v1").await.status(), StatusCode::UNAUTHORIZED);
    let bob = r.as_user("bob", "builder");
    let put = bob.put_manifest("team-a/app", "v1", OCI_MANIFEST, b"{}").await;
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    let alice = r.as_user("alice", "wonderland");
    for _ in 0..2 {
        assert_eq!(manifest(&alice, "/v2/team-a/app/manifests/v1").await.status(), StatusCode::NOT_FOUND);
    }
    let after = Scrape::of(&r, "/metrics").await;
    assert_eq!(decisions(&after, "unauthenticated"), 2.0);
    assert_eq!(decisions(&after, "denied"), 1.0);
    assert_eq!(decisions(&after, "allowed"), 2.0);
    let hits = after.sum("berth_registry_auth_cache_total", &[("result", "hit")]);
    assert_eq!(hits, 1.0, "alice's second pull is answered from the cache");
    assert!(after.sum("berth_registry_auth_cache_total", &[("result", "miss")]) >= 3.0);
}
