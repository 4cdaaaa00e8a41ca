use super::*;
use k8s_openapi::api::core::v1::{Container, EphemeralContainer};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn r(host: Option<&str>, path: &str, tag: Option<&str>, digest: Option<&str>) -> Option<ImageRef> {
    Some(ImageRef {
        host: host.map(str::to_owned),
        path: path.into(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

#[test]
fn parses_the_docker_reference_grammar() {
    assert_eq!(parse("nginx"), r(None, "nginx", None, None));
    assert_eq!(parse("library/nginx:1.27"), r(None, "library/nginx", Some("1.27"), None));
    assert_eq!(parse("reg.ns.svc:5000/team/app:v1"), r(Some("reg.ns.svc:5000"), "team/app", Some("v1"), None));
    assert_eq!(parse("localhost/app"), r(Some("localhost"), "app", None, None));
    assert_eq!(parse("localhost:5001/app:v2"), r(Some("localhost:5001"), "app", Some("v2"), None));
    assert_eq!(parse("10.0.0.7:5000/a/b/c"), r(Some("10.0.0.7:5000"), "a/b/c", None, None));
    assert_eq!(parse("[fd00::1]:5000/app:v1"), r(Some("[fd00::1]:5000"), "app", Some("v1"), None));
    let both = format!("Reg.Example.COM/app:v1@{DIGEST}");
    assert_eq!(parse(&both), r(Some("reg.example.com"), "app", Some("v1"), Some(DIGEST)));
    let id = format!("docker-pullable://reg.ns.svc:5000/app@{DIGEST}");
    assert_eq!(parse(&id), r(Some("reg.ns.svc:5000"), "app", None, Some(DIGEST)));
}

#[test]
fn refuses_what_is_not_a_reference() {
    for bad in ["", "reg:5000/", "reg.io/App", "reg.io/app:", "reg.io/app@sha256:xyz", "reg.io//app", "a b"] {
        assert_eq!(parse(bad), None, "{bad}");
    }
    // An image ID that is a bare digest (what some runtimes report) names no repository.
    assert_eq!(parse(DIGEST).and_then(|r| r.host), None);
}

#[test]
fn protected_lines_strip_the_host() {
    let both = parse(&format!("reg:5000/app:v1@{DIGEST}")).unwrap();
    assert_eq!(both.protected(), vec!["app:v1".to_owned(), format!("app@{DIGEST}")]);
    assert_eq!(parse("reg:5000/team/app").unwrap().protected(), vec!["team/app:latest".to_owned()]);
}

fn pod(images: &[&str], init: &[&str], statuses: &[(&str, &str)]) -> Pod {
    let container = |i: &&str| Container { name: "c".into(), image: Some((*i).to_owned()), ..Default::default() };
    Pod {
        spec: Some(PodSpec {
            containers: images.iter().map(container).collect(),
            init_containers: Some(init.iter().map(container).collect()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(
                statuses
                    .iter()
                    .map(|(image, id)| ContainerStatus {
                        image: (*image).into(),
                        image_id: (*id).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn protected_lists_what_pods_name_through_the_registry_hosts() {
    let hosts: Hosts = BTreeSet::from(["cache.team.svc:5000", "localhost:5001"].map(String::from)).into();
    let id = format!("docker-pullable://cache.team.svc:5000/app@{DIGEST}");
    let pods = [
        pod(
            &["cache.team.svc:5000/app:v1", "docker.io/library/nginx:1"],
            &["localhost:5001/init:1"],
            &[("cache.team.svc:5000/app:v1", &id)],
        ),
        pod(&["cache.team.svc:5000/app:v1", "other.team.svc:5000/x:1", "cache.team.svc:5001/wrong-port:1"], &[], &[]),
        pod(&["cache/app:v1"], &[], &[]),
    ];
    let got: Vec<String> = protected(&pods, &hosts).into_iter().collect();
    assert_eq!(got, vec!["app:v1".to_owned(), format!("app@{DIGEST}"), "init:1".to_owned()]);
    assert!(refers_to(&pods[0], &hosts) && refers_to(&pods[1], &hosts) && !refers_to(&pods[2], &hosts));
}

/// Pods that name an upstream the nodes pull through a mirror use the
/// registry's `<prefix>/...` repositories, with containerd's Docker Hub
/// normalisation (`nginx` is `docker.io/library/nginx`).
#[test]
fn references_to_mirrored_hosts_are_protected_under_the_prefix() {
    let hosts = Hosts {
        own: BTreeSet::from(["localhost:5001".to_owned()]),
        mirrored: BTreeMap::from([
            ("docker.io".to_owned(), "hub".to_owned()),
            ("10.0.0.1:5443".to_owned(), "up".to_owned()),
        ]),
    };
    let pods = [
        pod(&["nginx:1.27", "docker.io/bitnami/redis:7", "index.docker.io/busybox"], &[], &[]),
        pod(&["10.0.0.1:5443/app:v1", "10.0.0.1:5443/team/app:v2"], &[], &[]),
        pod(&["ghcr.io/x/y:1", "quay.io/nginx:1"], &[], &[]),
    ];
    let got: Vec<String> = protected(&pods, &hosts).into_iter().collect();
    assert_eq!(
        got,
        ["hub/bitnami/redis:7", "hub/library/busybox:latest", "hub/library/nginx:1.27", "up/app:v1", "up/team/app:v2",]
    );
    assert!(refers_to(&pods[0], &hosts) && refers_to(&pods[1], &hosts) && !refers_to(&pods[2], &hosts));
    assert!(!refers_to(&pods[0], &Hosts::default()), "no mirror, no Docker Hub");
}

#[test]
fn ephemeral_containers_count_and_slim_keeps_every_reference() {
    let mut p = pod(&["h.io/a:1"], &["h.io/b:1"], &[("h.io/a:1", "h.io/a@sha256:00")]);
    let spec = p.spec.as_mut().unwrap();
    spec.ephemeral_containers =
        Some(vec![EphemeralContainer { name: "debug".into(), image: Some("h.io/c:1".into()), ..Default::default() }]);
    spec.node_name = Some("node".into());
    p.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
    let before: Vec<String> = pod_references(&p).into_iter().map(str::to_owned).collect();
    assert!(before.contains(&"h.io/c:1".to_owned()));
    slim(&mut p);
    assert_eq!(pod_references(&p), before);
    assert!(p.metadata.labels.is_none() && p.spec.unwrap().node_name.is_none());
}
