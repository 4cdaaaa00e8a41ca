//! Where the images live: the claim `<name>-data` or an S3 bucket, and what
//! follows from it: the registry's `storage` section, the pod's data or
//! credentials volume, how the Deployment rolls, and the disruption budget that
//! keeps one replica serving. Pure, like the rest of [`crate::resources`].

use berth_crds::{AccessMode, Registry, S3Spec, StorageBackend, StorageStatus};
use berth_registry::config::{S3Config, StorageConfig};
use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{DATA_DIR, claim_name, labels, meta, secret_volume};

/// Where the S3 credentials Secret is mounted; the registry reads its files
/// `accessKeyId`, `secretAccessKey` and `sessionToken` there.
pub const S3_CREDENTIALS_DIR: &str = "/etc/berth/s3";

/// The registry's `storage` section: the claim's mount point, or the bucket.
pub fn storage_config(reg: &Registry) -> StorageConfig {
    let s3 = reg.spec.storage.s3.as_ref().map(|s3| S3Config { buffer_bytes: buffer_bytes(reg), ..s3_config(s3) });
    StorageConfig { root: DATA_DIR.into(), s3 }
}

/// The memory uploads may hold in parts: the registry's default (1 GiB), or a
/// quarter of the container's memory limit when that is smaller, so a pod
/// under a limit is turned away with 429 before it is OOM-killed.
fn buffer_bytes(reg: &Registry) -> u64 {
    let default = S3Config::default();
    let limit = reg.spec.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get("memory"));
    let Some(limit) = limit.and_then(|q| super::quantity_bytes(&q.0)) else {
        return default.buffer_bytes;
    };
    let floor = default.part_size_bytes + (1 << 20);
    ((limit / 4.0) as u64).clamp(floor, default.buffer_bytes)
}

fn s3_config(s3: &S3Spec) -> S3Config {
    S3Config {
        bucket: s3.bucket.clone(),
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        prefix: s3.prefix.clone().unwrap_or_default(),
        path_style: s3.path_style,
        // Without a Secret the registry falls back to the standard AWS_*
        // variables and web identity, which the pod's environment provides.
        credentials_dir: s3.credentials_secret.as_ref().map(|_| S3_CREDENTIALS_DIR.into()),
        redirect: s3.redirect,
        ..S3Config::default()
    }
}

/// The data volume and its mount: the claim, or nothing with S3 (the pods keep
/// no state of their own), plus the credentials Secret when one is named.
///
/// The Secret's content is not part of the pod template: the registry re-reads
/// the files when the kubelet updates them, so rotated credentials need no
/// roll. Naming another Secret (or other keys) changes the template and rolls.
pub fn data_volumes(reg: &Registry) -> Vec<(Volume, VolumeMount)> {
    let Some(s3) = &reg.spec.storage.s3 else {
        let data = Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(reg),
                ..Default::default()
            }),
            ..Default::default()
        };
        return vec![(data, VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..Default::default() })];
    };
    let Some(secret) = &s3.credentials_secret else { return Vec::new() };
    let mut items = vec![
        (secret.access_key_id_key.as_str(), "accessKeyId"),
        (secret.secret_access_key_key.as_str(), "secretAccessKey"),
    ];
    items.extend(secret.session_token_key.as_deref().map(|key| (key, "sessionToken")));
    vec![secret_volume("s3-credentials", &secret.name, &items, S3_CREDENTIALS_DIR)]
}

/// How the Deployment replaces its pods. Pods that share a ReadWriteOnce
/// volume cannot overlap, so they are recreated; on a ReadWriteMany volume they
/// roll. On S3 nothing is shared but the bucket: one extra pod starts and must
/// be ready before an old one stops, so the replicas never drop below
/// `spec.replicas` during a rollout.
pub fn strategy(reg: &Registry) -> DeploymentStrategy {
    let storage = &reg.spec.storage;
    if storage.s3.is_some() {
        return DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        };
    }
    let shared = storage.access_modes.contains(&AccessMode::ReadWriteMany);
    DeploymentStrategy { type_: Some(if shared { "RollingUpdate" } else { "Recreate" }.into()), ..Default::default() }
}

/// The PodDisruptionBudget, named like the Registry.
pub fn disruption_budget_name(reg: &Registry) -> String {
    reg.name_any()
}

/// True when the Registry runs more than one replica, and so gets a
/// disruption budget: with one replica a budget could only block node drains.
pub fn wants_disruption_budget(reg: &Registry) -> bool {
    reg.spec.replicas > 1
}

/// Lets voluntary disruptions (node drains) take one registry pod at a time,
/// so the others keep serving. Pods that are not ready may always be evicted:
/// they serve nothing, and a crash-looping pod must not block a drain.
pub fn disruption_budget(reg: &Registry) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(reg, disruption_budget_name(reg), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(labels(reg)), ..Default::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `status.storage`: which backend, and for S3 which bucket where.
pub fn storage_status(reg: &Registry) -> StorageStatus {
    match &reg.spec.storage.s3 {
        None => StorageStatus { backend: StorageBackend::Filesystem, bucket: None, endpoint: None },
        Some(s3) => StorageStatus {
            backend: StorageBackend::S3,
            bucket: Some(s3.bucket.clone()),
            endpoint: s3.endpoint.clone(),
        },
    }
}

#[cfg(test)]
mod tests;
