//! Pull-through mirrors: the registry's `mirrors` section, the Secrets it
//! reads the upstreams' credentials and authorities from, and the node
//! container that points containerd at them. Pure, like the rest of
//! [`crate::resources`].
//!
//! As with the other Secrets, the operator never reads them: the pod mounts
//! them by name and the registry reads the files.

use berth_crds::{MirrorSpec, Registry};
use berth_registry::config::MirrorConfig;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, KeyToPath, ProjectedVolumeSource, SecretProjection, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::{SECRET_MODE, quantity_bytes};

/// Where mirror `i`'s Secrets are mounted: `username`, `password`, `ca.crt`.
pub const MIRRORS_DIR: &str = "/etc/berth/mirrors";
/// Where the node's containerd `certs.d` is mounted in the node container.
pub const HOST_CERTS_DIR: &str = "/host-certs";
/// Name of the node container that writes the `hosts.toml` files.
pub const NODE_MIRRORS_CONTAINER: &str = "containerd-mirrors";

fn mirror_dir(i: usize) -> String {
    format!("{MIRRORS_DIR}/{i}")
}

/// Bytes of `maxSize`, rounded up (`1500m` is 2 bytes); `Err` with the
/// reason when it is no quantity or not positive.
fn max_bytes(q: &Quantity) -> Result<u64, String> {
    match quantity_bytes(&q.0) {
        Some(b) if b >= 1.0 && b < u64::MAX as f64 => Ok(b.ceil() as u64),
        Some(_) => Err(format!("maxSize {} must be at least one byte", q.0)),
        None => Err(format!("maxSize {:?} is not a quantity such as 10Gi", q.0)),
    }
}

/// The registry's `mirrors` section, in the Registry's order.
pub fn mirror_configs(reg: &Registry) -> Vec<MirrorConfig> {
    reg.spec.mirrors.iter().enumerate().map(|(i, m)| mirror_config(i, m)).collect()
}

fn mirror_config(i: usize, m: &MirrorSpec) -> MirrorConfig {
    let dir = mirror_dir(i);
    let creds = m.credentials_secret.as_ref();
    MirrorConfig {
        prefix: m.prefix.clone(),
        url: m.url.trim_end_matches('/').to_owned(),
        library: m.library,
        image_host: m.image_host.clone(),
        username_file: creds.map(|_| format!("{dir}/username").into()),
        password_file: creds.map(|_| format!("{dir}/password").into()),
        ca_file: m.ca_secret.as_ref().map(|_| format!("{dir}/ca.crt").into()),
        tag_ttl_secs: m.tag_ttl_seconds,
        // An unparsable size is refused by [`check`] before anything is rendered.
        max_bytes: m.max_size.as_ref().and_then(|q| max_bytes(q).ok()),
    }
}

/// What the CRD's schema cannot say and the registry would refuse at start:
/// a `maxSize` that is no quantity (the API server checks it only when its
/// CEL rules run, which a Registry created before them skipped).
pub fn check(reg: &Registry) -> Result<(), String> {
    for m in &reg.spec.mirrors {
        if let Some(q) = &m.max_size {
            max_bytes(q).map_err(|e| format!("mirrors[{}]: {e}", m.prefix))?;
        }
    }
    Ok(())
}

/// One projected volume per mirror that names a Secret: its credentials and
/// its authorities side by side in [`mirror_dir`], read-only.
pub fn secret_volumes(reg: &Registry) -> Vec<(Volume, VolumeMount)> {
    let project = |secret: &str, items: Vec<(&str, &str)>| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.into(),
            items: Some(
                items
                    .into_iter()
                    .map(|(key, file)| KeyToPath { key: key.into(), path: file.into(), ..Default::default() })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    reg.spec
        .mirrors
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let creds = m
                .credentials_secret
                .as_ref()
                .map(|c| project(&c.name, vec![(&c.username_key, "username"), (&c.password_key, "password")]));
            let ca = m.ca_secret.as_ref().map(|c| project(&c.name, vec![(&c.key, "ca.crt")]));
            let sources: Vec<_> = creds.into_iter().chain(ca).collect();
            if sources.is_empty() {
                return None;
            }
            let name = format!("mirror-{i}");
            let volume = Volume {
                name: name.clone(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(sources),
                    default_mode: Some(SECRET_MODE),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mount = VolumeMount { name, mount_path: mirror_dir(i), read_only: Some(true), ..Default::default() };
            Some((volume, mount))
        })
        .collect()
}

/// True when the node-access DaemonSet writes the nodes' `hosts.toml` files.
pub fn wants_node_mirrors(reg: &Registry) -> bool {
    let access = &reg.spec.node_access;
    access.enabled && access.containerd_mirrors.enabled && !reg.spec.mirrors.is_empty()
}

/// The node container that writes one `hosts.toml` per mirror into the
/// node's containerd `certs.d` and removes them when it is stopped, with the
/// host directory it needs. Root, because that directory is root's, and
/// nothing more: no capability (root owns what it writes, so it needs no
/// DAC override), no escalation, a read-only root filesystem.
pub fn node_mirrors(reg: &Registry, image: String) -> (Container, Volume) {
    let access = &reg.spec.node_access;
    let mut args = vec![
        "node-mirrors".to_owned(),
        "--dir".into(),
        HOST_CERTS_DIR.into(),
        "--port".into(),
        access.port.to_string(),
        "--owner".into(),
        format!("{}/{}", reg.namespace().unwrap_or_default(), reg.name_any()),
    ];
    for m in mirror_configs(reg) {
        args.extend(["--mirror".into(), format!("{}={}={}", m.image_host(), m.prefix, m.url)]);
    }
    let container = Container {
        name: NODE_MIRRORS_CONTAINER.into(),
        image: Some(image),
        command: Some(vec!["berth-registry".into()]),
        args: Some(args),
        resources: Some(super::small_resources("5m", "8Mi", "32Mi")),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "containerd-certs".into(),
            mount_path: HOST_CERTS_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let volume = Volume {
        name: "containerd-certs".into(),
        host_path: Some(HostPathVolumeSource {
            path: access.containerd_mirrors.certs_dir.clone(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Default::default()
    };
    (container, volume)
}

#[cfg(test)]
mod tests;
