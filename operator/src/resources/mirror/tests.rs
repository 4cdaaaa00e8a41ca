use berth_registry::config::Config;
use k8s_openapi::api::core::v1::PodSpec;

use crate::resources::tests::registry;
use crate::resources::{CONFIG_FILE, CONFIG_HASH, check, config_map, deployment, node_access};

use super::*;

/// The config the registry reads, parsed and validated as the registry does.
fn config(reg: &Registry) -> Config {
    Config::from_yaml(&config_map(reg).data.unwrap()[CONFIG_FILE]).unwrap()
}

fn pod(reg: &Registry) -> PodSpec {
    deployment(reg, "img").spec.template.spec.unwrap()
}

const HUB_AND_UP: &str = "
mirrors:
- {prefix: docker.io, url: 'https://registry-1.docker.io/', credentialsSecret: {name: hub}, maxSize: 10Gi}
- prefix: up
  url: https://10.0.0.1:5443
  library: false
  imageHost: 10.0.0.1:5443
  credentialsSecret: {name: up-creds, usernameKey: user, passwordKey: token}
  caSecret: {name: up-ca}
  tagTtlSeconds: 60
- {prefix: ghcr.io, url: https://ghcr.io}
";

#[test]
fn mirrors_render_into_the_registry_config_with_their_secret_files() {
    let mirrors = config(&registry(HUB_AND_UP)).mirrors;
    let [hub, up, ghcr] = mirrors.as_slice() else { panic!("{mirrors:?}") };
    assert_eq!((hub.prefix.as_str(), hub.url.as_str()), ("docker.io", "https://registry-1.docker.io"));
    assert!(hub.library(), "docker.io's rule by default");
    assert_eq!(hub.username_file.as_deref(), Some("/etc/berth/mirrors/0/username".as_ref()));
    assert_eq!(hub.password_file.as_deref(), Some("/etc/berth/mirrors/0/password".as_ref()));
    assert_eq!(hub.ca_file, None);
    assert_eq!(hub.tag_ttl_secs, 300, "the schema's default");
    assert_eq!(hub.max_bytes, Some(10 << 30));
    assert_eq!(up.library, Some(false));
    assert_eq!(up.image_host(), "10.0.0.1:5443");
    assert_eq!(up.ca_file.as_deref(), Some("/etc/berth/mirrors/1/ca.crt".as_ref()));
    assert_eq!(up.tag_ttl_secs, 60);
    assert_eq!(up.max_bytes, None);
    assert_eq!((ghcr.username_file.as_ref(), ghcr.ca_file.as_ref()), (None, None), "anonymous, system roots");
    assert!(config(&registry("{}")).mirrors.is_empty());
}

#[test]
fn mirror_secrets_are_projected_read_only_where_the_config_points() {
    let pod = pod(&registry(HUB_AND_UP));
    let volumes = pod.volumes.as_ref().unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["config", "data", "mirror-0", "mirror-1"], "ghcr.io names no Secret");
    let projected = |name: &str| volumes.iter().find(|v| v.name == name).unwrap().projected.clone().unwrap();
    let items = |p: &ProjectedVolumeSource| -> Vec<(String, String, String)> {
        let sources = p.sources.as_ref().unwrap();
        sources
            .iter()
            .flat_map(|s| {
                let s = s.secret.as_ref().unwrap();
                s.items.as_ref().unwrap().iter().map(|i| (s.name.clone(), i.key.clone(), i.path.clone()))
            })
            .collect()
    };
    let own = |v: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        v.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect()
    };
    let hub = projected("mirror-0");
    assert_eq!(hub.default_mode, Some(0o440));
    assert_eq!(items(&hub), own(&[("hub", "username", "username"), ("hub", "password", "password")]));
    assert_eq!(
        items(&projected("mirror-1")),
        own(&[("up-creds", "user", "username"), ("up-creds", "token", "password"), ("up-ca", "ca.crt", "ca.crt")])
    );
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    for (name, dir) in [("mirror-0", "/etc/berth/mirrors/0"), ("mirror-1", "/etc/berth/mirrors/1")] {
        let m = mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (dir, Some(true)));
    }
}

#[test]
fn max_size_is_a_quantity_in_bytes() {
    assert_eq!(max_bytes(&Quantity("10Gi".into())), Ok(10 << 30));
    assert_eq!(max_bytes(&Quantity("500M".into())), Ok(500_000_000));
    assert_eq!(max_bytes(&Quantity("1500m".into())), Ok(2), "rounded up");
    assert!(max_bytes(&Quantity("0".into())).unwrap_err().contains("at least one byte"));
    assert!(max_bytes(&Quantity("ten".into())).unwrap_err().contains("not a quantity"));
}

#[test]
fn what_the_registry_would_refuse_is_found_before_rendering() {
    assert_eq!(check(&registry(HUB_AND_UP)), Ok(()));
    let bad_size = registry("mirrors: [{prefix: a, url: 'https://a', maxSize: lots}]");
    assert!(check(&bad_size).unwrap_err().contains("mirrors[a]: maxSize"));
    // What the CRD's rules refuse at admission, should a Registry get past them.
    let nested = registry("mirrors: [{prefix: a, url: 'https://a'}, {prefix: a/b, url: 'https://b'}]");
    assert!(check(&nested).unwrap_err().contains("overlap"));
    let path = registry("mirrors: [{prefix: a, url: 'https://a/v2'}]");
    assert!(check(&path).unwrap_err().contains("url"));
    assert_eq!(check(&registry("{}")), Ok(()));
}

const OPTED_IN: &str = "
nodeAccess: {enabled: true, port: 5555, containerdMirrors: {enabled: true, certsDir: /var/lib/node/certs.d}}
mirrors:
- {prefix: docker.io, url: 'https://registry-1.docker.io'}
- {prefix: up, url: 'https://10.0.0.1:5443', imageHost: '10.0.0.1:5443'}
";

#[test]
fn the_opt_in_adds_a_root_but_powerless_container_writing_the_nodes_hosts_files() {
    let reg = registry(OPTED_IN);
    let pod = node_access(&reg, "img").spec.template.spec.unwrap();
    let [forward, mirrors] = pod.containers.as_slice() else { panic!("{:?}", pod.containers) };
    assert_eq!(forward.name, "forward", "the forwarder stays as it is");
    assert_eq!(mirrors.name, NODE_MIRRORS_CONTAINER);
    assert_eq!(mirrors.image.as_deref(), Some("img"));
    assert_eq!(
        mirrors.args.as_ref().unwrap(),
        &[
            "node-mirrors",
            "--dir",
            "/host-certs",
            "--port",
            "5555",
            "--owner",
            "team/cache",
            "--mirror",
            "docker.io=docker.io=https://registry-1.docker.io",
            "--mirror",
            "10.0.0.1:5443=up=https://10.0.0.1:5443",
        ]
        .map(String::from)
    );
    let sc = mirrors.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)), "root, to write root's directory");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(sc.capabilities.as_ref().unwrap().add.is_none() && sc.privileged.is_none());
    let resources = mirrors.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.as_ref().unwrap().contains_key("memory"));
    let mount = &mirrors.volume_mounts.as_ref().unwrap()[0];
    assert_eq!((mount.name.as_str(), mount.mount_path.as_str()), ("containerd-certs", "/host-certs"));
    assert!(forward.volume_mounts.is_none(), "the forwarder sees no host path");
    let volume = &pod.volumes.as_ref().unwrap()[0];
    let host = volume.host_path.as_ref().unwrap();
    assert_eq!((host.path.as_str(), host.type_.as_deref()), ("/var/lib/node/certs.d", Some("DirectoryOrCreate")));
    assert_eq!(pod.host_network, Some(true));
}

#[test]
fn without_the_opt_in_the_node_pods_have_the_forwarder_only() {
    let off = OPTED_IN.replace("containerdMirrors: {enabled: true", "containerdMirrors: {enabled: false");
    for yaml in [off.as_str(), "nodeAccess: {enabled: true}\nmirrors: [{prefix: up, url: 'https://up'}]"] {
        let pod = node_access(&registry(yaml), "img").spec.template.spec.unwrap();
        assert_eq!(pod.containers.len(), 1, "{yaml}");
        assert!(pod.volumes.is_none());
    }
    let reg = registry("{}");
    assert!(!reg.spec.node_access.containerd_mirrors.enabled);
    assert_eq!(reg.spec.node_access.containerd_mirrors.certs_dir, "/etc/containerd/certs.d");
    // Switching it off changes the pod template: the old pods are stopped and clean up.
    let template = |yaml: &str| serde_json::to_string(&node_access(&registry(yaml), "img").spec.template).unwrap();
    assert_ne!(template(OPTED_IN), template(&off));
}

#[test]
fn mirrors_are_part_of_the_pod_template_hash() {
    let hash = |yaml: &str| {
        deployment(&registry(yaml), "img").spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH].clone()
    };
    assert_ne!(hash("{}"), hash("mirrors: [{prefix: up, url: 'https://up'}]"));
    assert_ne!(
        hash("mirrors: [{prefix: up, url: 'https://up'}]"),
        hash("mirrors: [{prefix: up, url: 'https://up', tagTtlSeconds: 5}]")
    );
}
