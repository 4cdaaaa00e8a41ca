//! Access control and TLS: the registry's `auth` and `tls` configuration, the
//! ServiceAccount and ClusterRoleBinding that let the registry review tokens,
//! and the Secret volumes. Pure, like the rest of [`crate::resources`].
//!
//! The operator never reads the Secrets: the pod mounts them by name, and the
//! registry re-reads the files when the kubelet updates them, so their content
//! is not part of the pod template's hash either.

use std::collections::BTreeMap;

use berth_crds::Registry;
use berth_registry::config::{AuthConfig, HtpasswdConfig, KubernetesAuthConfig, TlsConfig};
use k8s_openapi::api::core::v1::{ServiceAccount, Volume, VolumeMount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{OWNER_UID, labels, meta, secret_volume};

/// Where the htpasswd Secret's key is mounted.
pub const HTPASSWD_DIR: &str = "/etc/berth/htpasswd";
/// Where the TLS Secret's `tls.crt` and `tls.key` are mounted.
pub const TLS_DIR: &str = "/etc/berth/tls";
/// The built-in ClusterRole that allows creating TokenReviews and
/// SubjectAccessReviews, and nothing else.
pub const AUTH_DELEGATOR: &str = "system:auth-delegator";
/// `<namespace>/<name>` of the Registry a cluster-scoped object was made for.
pub const REGISTRY: &str = "berth.dev/registry";

/// True when the registry accepts Kubernetes tokens.
pub fn kubernetes_auth(reg: &Registry) -> bool {
    reg.spec.auth.kubernetes.enabled
}

/// The audience Kubernetes tokens must be issued for: the configured one, or
/// `berth.dev/<namespace>/<name>`, which no other Registry and not the API
/// server itself uses.
pub fn audience(reg: &Registry) -> String {
    reg.spec
        .auth
        .kubernetes
        .audience
        .clone()
        .unwrap_or_else(|| format!("berth.dev/{}/{}", reg.namespace().unwrap_or_default(), reg.name_any()))
}

/// The registry's `auth` section. The realm is the Registry's name, which
/// Kubernetes keeps free of quotes and control characters.
pub fn auth_config(reg: &Registry) -> AuthConfig {
    let auth = &reg.spec.auth;
    AuthConfig {
        anonymous: auth.anonymous,
        realm: reg.name_any(),
        htpasswd: auth
            .htpasswd
            .as_ref()
            .map(|h| HtpasswdConfig { path: format!("{HTPASSWD_DIR}/{}", h.key).into(), access: h.access.clone() }),
        kubernetes: kubernetes_auth(reg).then(|| KubernetesAuthConfig { audience: audience(reg), kubeconfig: None }),
        cache_secs: auth.cache_secs,
    }
}

/// The registry's `tls` section, when the Registry names a certificate.
pub fn tls_config(reg: &Registry) -> Option<TlsConfig> {
    reg.spec.tls.as_ref().map(|_| TlsConfig {
        cert_file: format!("{TLS_DIR}/tls.crt").into(),
        key_file: format!("{TLS_DIR}/tls.key").into(),
    })
}

/// Name of the container port and the Service port: the protocol they speak.
pub fn port_name(reg: &Registry) -> &'static str {
    if reg.spec.tls.is_some() { "https" } else { "http" }
}

pub fn service_account_name(reg: &Registry) -> String {
    format!("{}-registry", reg.name_any())
}

/// The registry pods' identity. No token is mounted because of the account;
/// the registry pod asks for one itself (it talks to the API server for the
/// collector, and to review tokens), other pods using the account get none.
pub fn service_account(reg: &Registry) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(reg, service_account_name(reg), true),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// `berth:registry:<namespace>:<name>`: unique per Registry across the cluster.
pub fn cluster_role_binding_name(reg: &Registry) -> String {
    format!("berth:registry:{}:{}", reg.namespace().unwrap_or_default(), reg.name_any())
}

/// Lets the registry's ServiceAccount create TokenReviews and
/// SubjectAccessReviews. Cluster-scoped, so it cannot be owned by the
/// namespaced Registry: it is marked with the Registry's uid and removed by the
/// operator (when Kubernetes authentication is switched off, and by the finalizer).
pub fn cluster_role_binding(reg: &Registry) -> ClusterRoleBinding {
    let namespace = reg.namespace().unwrap_or_default();
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(cluster_role_binding_name(reg)),
            labels: Some(labels(reg)),
            annotations: Some(BTreeMap::from([
                (OWNER_UID.to_owned(), reg.uid().unwrap_or_default()),
                (REGISTRY.to_owned(), format!("{namespace}/{}", reg.name_any())),
            ])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: AUTH_DELEGATOR.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account_name(reg),
            namespace: Some(namespace),
            ..Default::default()
        }]),
    }
}

/// The htpasswd and TLS Secrets the Registry names, as volumes and their mounts.
pub fn secret_volumes(reg: &Registry) -> Vec<(Volume, VolumeMount)> {
    let htpasswd = reg
        .spec
        .auth
        .htpasswd
        .as_ref()
        .map(|h| secret_volume("htpasswd", &h.secret_name, &[(&h.key, &h.key)], HTPASSWD_DIR));
    let tls = reg
        .spec
        .tls
        .as_ref()
        .map(|t| secret_volume("tls", &t.secret_name, &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")], TLS_DIR));
    htpasswd.into_iter().chain(tls).collect()
}

#[cfg(test)]
mod tests;
