//! The `Registry` custom resource: what users `kubectl apply` to get an
//! in-cluster registry. The manifest handlers and validation policies are the
//! registry's own configuration type, so the CRD and the registry cannot drift.

use std::collections::BTreeMap;

pub use berth_registry::config::{AccessRule, Action, Anonymous};
use berth_registry::config::{LimitsConfig, ManifestsConfig, QuotaConfig, RetentionConfig, Span};
use berth_registry::report::{Collection, Usage};
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod monitoring;
pub use monitoring::{INTERVAL_RULE, MonitoringSpec, SERVICE_MONITOR, STORAGE_HEALTHY, ServiceMonitorSpec};

pub const GROUP: &str = "berth.dev";
/// Condition types reported in `status.conditions`.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// True while the registry's volume is more than [`STORAGE_PRESSURE_PERCENT`] full.
pub const STORAGE_PRESSURE: &str = "StoragePressure";
pub const STORAGE_PRESSURE_PERCENT: u8 = 85;
/// Annotation on a Registry asking for a garbage collection: any new value starts one.
pub const COLLECT_ANNOTATION: &str = "berth.dev/collect";

/// An OCI/Docker registry running in the cluster, storing images on a PersistentVolume
/// or in an S3-compatible bucket.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Registry",
    namespaced,
    status = "RegistryStatus",
    shortname = "reg",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.readyReplicas"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Used","type":"string","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Storage","type":"string","jsonPath":".status.storage.backend","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.replicas <= 1 || has(self.storage.s3) || self.storage.accessModes.exists(m, m == 'ReadWriteMany')").message("more than one replica needs storage.accessModes to include ReadWriteMany, or storage.s3"))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.nodeAccess) || !self.nodeAccess.enabled").message("nodeAccess serves plain HTTP on the nodes' localhost and cannot forward to a TLS registry yet; turn one off"))]
#[x_kube(validation = Rule::new(CONTAINERD_MIRRORS_NEEDS).message("nodeAccess.containerdMirrors needs nodeAccess.enabled (the nodes pull through its localhost port) and at least one entry in mirrors"))]
#[x_kube(validation = Rule::new("!has(self.retention) || !has(self.retention.rules) || self.retention.rules.all(r, size(r.repositories) > 0 && (has(r.tags) || has(r.untaggedAfter)))").message("retention.rules: every rule names repositories, and tags or untaggedAfter (a rule with neither keeps everything)"))]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Number of registry pods. More than one needs ReadWriteMany storage or S3.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas must not be negative"))]
    pub replicas: i32,
    /// Container image of the registry; defaults to the image the operator was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the registry container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the registry pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the registry pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of the registry pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Annotations added to the registry pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Where the images are kept: a PersistentVolumeClaim (the default), or an
    /// S3-compatible bucket (`s3`).
    #[serde(default)]
    pub storage: StorageSpec,
    /// Manifest handlers (one per media type) and how pushed manifests are validated.
    #[serde(default)]
    pub manifests: ManifestsConfig,
    /// What clients may hold of each registry pod: connections, uploads in flight,
    /// buffered manifest bytes, and how long a stalled client is waited for.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Allow deleting blobs, manifests and tags through the registry API.
    #[serde(default = "yes")]
    pub delete_enabled: bool,
    /// Refuse pushes and deletes; pulls keep working.
    #[serde(default)]
    pub read_only: bool,
    /// The Service in front of the registry pods: their registry port only.
    /// The plain-HTTP metrics port (metrics, `/healthz`, `/readyz`) is on the
    /// ClusterIP Service `<name>-metrics`, whatever type this one has.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Lets every node's container runtime pull `localhost:<port>/<image>` from this registry.
    #[serde(default)]
    pub node_access: NodeAccessSpec,
    /// Who may pull, push and delete. Absent, nobody may do anything without
    /// credentials, and Kubernetes tokens are accepted with access decided by RBAC.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Serve HTTPS with the certificate of a `kubernetes.io/tls` Secret; plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Online garbage collection of what nothing references, and which images are
    /// never deleted because pods refer to them.
    #[serde(default)]
    pub gc: GcSpec,
    /// Which tags and untagged manifests the collector deletes; the registry's own config type.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Byte limits for the whole registry and per repository; the registry's own config type.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// How Prometheus finds the metrics the registry serves on its port `metrics` (9464).
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Pull-through caches of other registries: `<prefix>/<repository>` pulled
    /// from this registry is fetched once from the upstream and served from
    /// storage after. Mirrored repositories are read-only to clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["prefix".into()]))]
    #[x_kube(validation = Rule::new(MIRRORS_DISJOINT).message("mirrors: no prefix may lie inside another (a repository would have two upstreams)"))]
    #[x_kube(validation = Rule::new(MIRROR_HOSTS_DISTINCT).message("mirrors: two mirrors for one image host (imageHost, or the prefix when absent)"))]
    pub mirrors: Vec<MirrorSpec>,
}

/// No prefix is another's followed by `/`; equal prefixes are refused by the
/// list's `prefix` key.
pub const MIRRORS_DISJOINT: &str = "self.all(a, !self.exists(b, b.prefix.startsWith(a.prefix + '/')))";
/// One mirror per image host, as the registry requires.
pub const MIRROR_HOSTS_DISTINCT: &str = "self.all(a, self.exists_one(b, (has(b.imageHost) ? b.imageHost : b.prefix) == (has(a.imageHost) ? a.imageHost : a.prefix)))";

/// When the registry collects garbage. Images that any pod in the cluster refers
/// to through this registry (any phase, Pending included) are never deleted:
/// the operator lists them for the registry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcSpec {
    /// Time between scheduled collections; `0s` collects only on demand (the
    /// `berth.dev/collect` annotation).
    #[serde(default = "default_gc_interval")]
    pub interval: Span,
    /// Unreferenced content younger than this is kept: a layer uploaded before
    /// the manifest that will reference it, a tag pushed a moment ago.
    #[serde(default = "default_grace_period")]
    pub grace_period: Span,
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// More `host[:port]` names by which pods refer to this registry (an Ingress
    /// host, say), besides its Service's names, its cluster IP and, with node
    /// access, `localhost:<port>`. Images of pods named through them are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^[^/@\s]+$"), length(min = 1, max = 253)))]
    pub protected_hosts: Vec<String>,
}

impl Default for GcSpec {
    fn default() -> Self {
        GcSpec {
            interval: default_gc_interval(),
            grace_period: default_grace_period(),
            dry_run: false,
            protected_hosts: Vec::new(),
        }
    }
}

fn default_gc_interval() -> Span {
    Span::secs(24 * 3600)
}

fn default_grace_period() -> Span {
    Span::secs(3600)
}

/// Access control. Clients authenticate with a Kubernetes token (a ServiceAccount's,
/// or a user's from `kubectl create token`) issued for `status.audience`, whose
/// access RBAC decides (see `manifests/access.yaml`), or with a user and password
/// from an htpasswd file, whose access the rules under `htpasswd.access` decide.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.anonymous != 'none' || self.kubernetes.enabled || has(self.htpasswd)").message("auth: with anonymous none, enable kubernetes or htpasswd, or nobody can use the registry"))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// What a client without credentials may do: `none` (the default), `pull`, or
    /// `all`, which lets anyone who reaches the Service push and delete: for
    /// throwaway development clusters only.
    #[serde(default = "no_anonymous_access")]
    pub anonymous: Anonymous,
    /// Kubernetes tokens, checked with a TokenReview; access decided by RBAC
    /// through SubjectAccessReviews.
    #[serde(default)]
    pub kubernetes: KubernetesAuthSpec,
    /// Users and bcrypt password hashes from an htpasswd file in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdSpec>,
    /// Seconds an identity or an access decision is remembered: a revoked
    /// RoleBinding or a deleted ServiceAccount may be honoured this long.
    #[serde(default = "default_cache_secs")]
    #[schemars(with = "i64", range(min = 0, max = 300))]
    pub cache_secs: u64,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            anonymous: no_anonymous_access(),
            kubernetes: KubernetesAuthSpec::default(),
            htpasswd: None,
            cache_secs: default_cache_secs(),
        }
    }
}

fn no_anonymous_access() -> Anonymous {
    Anonymous::None
}

fn default_cache_secs() -> u64 {
    10
}

/// Kubernetes tokens. The registry pod gets a ServiceAccount `<name>-registry`
/// bound to `system:auth-delegator`, which lets it create TokenReviews and
/// SubjectAccessReviews and nothing else.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuthSpec {
    /// Accept Kubernetes tokens.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The audience tokens must be issued for (`kubectl create token --audience`);
    /// defaults to `berth.dev/<namespace>/<name>`. Tokens for the API server's own
    /// audience are refused, so they cannot be replayed in either direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("auth.kubernetes.audience must not be empty"))]
    #[x_kube(validation = Rule::new("!self.startsWith('https://kubernetes.default.svc')").message("auth.kubernetes.audience must not be the API server's own audience: every pod's token would log in, and clients would hand API credentials to the registry"))]
    pub audience: Option<String>,
}

impl Default for KubernetesAuthSpec {
    fn default() -> Self {
        KubernetesAuthSpec { enabled: true, audience: None }
    }
}

/// An htpasswd file (`user:$2y$...` lines, bcrypt only) in a Secret of the
/// Registry's namespace. Changes to the Secret reach the registry without a restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.access) || self.access.all(r, size(r.users) > 0 && size(r.repositories) > 0 && size(r.actions) > 0)").message("auth.htpasswd.access: every rule names users, repositories and actions"))]
#[serde(rename_all = "camelCase")]
pub struct HtpasswdSpec {
    /// The Secret.
    #[x_kube(validation = Rule::new("size(self) > 0").message("auth.htpasswd.secretName must not be empty"))]
    pub secret_name: String,
    /// The key in the Secret that holds the file.
    #[serde(default = "default_htpasswd_key")]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("auth.htpasswd.key must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
    /// Who may do what. Rules add up; what no rule grants is denied. Empty: every
    /// htpasswd user may pull, push and delete everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
}

fn default_htpasswd_key() -> String {
    "htpasswd".into()
}

/// HTTPS (HTTP/2 through ALPN). Certificate renewals reach the registry without a restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in the Registry's namespace, with `tls.crt`
    /// (the chain, leaf first) and `tls.key`, as cert-manager writes it.
    #[x_kube(validation = Rule::new("size(self) > 0").message("tls.secretName must not be empty"))]
    pub secret_name: String,
}

/// Node access: a DaemonSet with host networking listens on `127.0.0.1:<port>` on
/// every node and forwards to the registry's Service, so pods can use
/// `image: localhost:<port>/app:tag` without TLS or runtime configuration
/// (container runtimes treat localhost as plain HTTP). Also publishes the
/// `local-registry-hosting` ConfigMap in `kube-public` (KEP-1755). The namespace
/// must allow host networking (Pod Security level privileged). Enable it on one
/// Registry per cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeAccessSpec {
    /// Run the node forwarder.
    #[serde(default)]
    pub enabled: bool,
    /// Port on each node's loopback interface.
    #[serde(default = "default_node_port")]
    #[x_kube(validation = Rule::new("self >= 1024 && self <= 65535").message("nodeAccess.port must be between 1024 and 65535"))]
    pub port: i32,
    /// Point the nodes' containerd at `mirrors` through this port.
    #[serde(default)]
    pub containerd_mirrors: ContainerdMirrorsSpec,
}

impl Default for NodeAccessSpec {
    fn default() -> Self {
        NodeAccessSpec {
            enabled: false,
            port: default_node_port(),
            containerd_mirrors: ContainerdMirrorsSpec::default(),
        }
    }
}

/// `containerdMirrors` on only with node access and something to mirror.
pub const CONTAINERD_MIRRORS_NEEDS: &str = "!has(self.nodeAccess) || !has(self.nodeAccess.containerdMirrors) || !self.nodeAccess.containerdMirrors.enabled || (self.nodeAccess.enabled && has(self.mirrors) && size(self.mirrors) > 0)";

/// Points every node's containerd at the mirrors: a second container in the
/// node-access DaemonSet writes `<certsDir>/<imageHost>/hosts.toml` for each
/// mirror, so `image: docker.io/library/nginx` is pulled through
/// `localhost:<port>/v2/<prefix>/...`, with the upstream (`server`) as
/// containerd's fallback. It runs as root to write the root-owned
/// directory, and removes its files when the opt-in is switched off or the
/// Registry goes. Needs containerd with `config_path` set to `certsDir`
/// (containerd 2 and kind set it). The runtime pulls without credentials:
/// anonymous clients must be allowed to pull (`auth.anonymous: pull`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdMirrorsSpec {
    /// Write the nodes' `hosts.toml` files.
    #[serde(default)]
    pub enabled: bool,
    /// containerd's `config_path` on the nodes: the directory of
    /// `<host>/hosts.toml` files.
    #[serde(default = "default_certs_dir")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('..') && size(self) > 1").message("nodeAccess.containerdMirrors.certsDir must be an absolute path below / without '..'"))]
    #[schemars(length(max = 512))]
    pub certs_dir: String,
}

impl Default for ContainerdMirrorsSpec {
    fn default() -> Self {
        ContainerdMirrorsSpec { enabled: false, certs_dir: default_certs_dir() }
    }
}

fn default_certs_dir() -> String {
    "/etc/containerd/certs.d".into()
}

/// An upstream registry mirrored under `prefix`. The registry's own
/// [`MirrorConfig`](berth_registry::config::MirrorConfig) with Kubernetes
/// objects instead of file paths, and a quantity instead of a byte count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    /// Repository path prefix that maps to the upstream, e.g. `docker.io`:
    /// `<prefix>/library/nginx` is `library/nginx` upstream.
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", r"^[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*$", "')")).message("mirrors[].prefix must be repository path components: lower-case letters and digits, separated by . _ - or /"))]
    pub prefix: String,
    /// The upstream's base URL, `https://registry-1.docker.io`, with no path;
    /// `http://` only for a registry on a trusted network.
    #[schemars(length(max = 300))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", r"^https?://[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?/?$", "')")).message("mirrors[].url must be http(s)://host[:port] with no path"))]
    pub url: String,
    /// Docker Hub's rule: a name of one component (`nginx`) is `library/nginx`
    /// upstream. Absent: on when the prefix is `docker.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<bool>,
    /// The registry host as image references name it (`docker.io`,
    /// `10.0.0.1:5443`), which the nodes' containerd looks up; absent, the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 260))]
    #[x_kube(validation = Rule::new(concat!("self.matches('", r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?$", "')")).message("mirrors[].imageHost must be host[:port]"))]
    pub image_host: Option<String>,
    /// A Secret in the Registry's namespace with the upstream user name and
    /// password, mounted into the registry pods; absent, the upstream is
    /// pulled from anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<MirrorCredentialsSecret>,
    /// A Secret in the Registry's namespace with the PEM certificates of the
    /// authorities that sign the upstream's certificate, trusted besides the
    /// system's. A Secret rather than a ConfigMap: whoever can change it can
    /// make the registry trust an impostor of the upstream, and Secrets are
    /// what RBAC usually guards closest (cert-manager writes `ca.crt` there too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<MirrorCaSecret>,
    /// Seconds a tag is served from the cache before the upstream is asked
    /// whether it moved. Manifests by digest are never re-checked.
    #[serde(default = "default_tag_ttl")]
    #[schemars(with = "i64", range(min = 0, max = 86400))]
    pub tag_ttl_seconds: u64,
    /// What this mirror may hold, a quantity such as `10Gi`; past it the
    /// collector evicts the least-recently pulled images that no pod uses.
    /// Absent: no cap. A string, not an int-or-string like `storage.size`:
    /// its CEL rule needs a bounded length to fit the API server's cost budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("mirrors[].maxSize must be a positive quantity such as 10Gi (leave it out for no cap)"))]
    pub max_size: Option<Quantity>,
}

fn default_tag_ttl() -> u64 {
    300
}

/// Which keys of a Secret hold the upstream credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCredentialsSecret {
    /// The Secret.
    #[x_kube(validation = Rule::new("size(self) > 0").message("mirrors[].credentialsSecret.name must not be empty"))]
    pub name: String,
    /// The key that holds the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("mirrors[].credentialsSecret.usernameKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub username_key: String,
    /// The key that holds the password or token.
    #[serde(default = "default_password_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("mirrors[].credentialsSecret.passwordKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Which key of a Secret holds the upstream's certificate authorities.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCaSecret {
    /// The Secret.
    #[x_kube(validation = Rule::new("size(self) > 0").message("mirrors[].caSecret.name must not be empty"))]
    pub name: String,
    /// The key that holds the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("mirrors[].caSecret.key must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

fn default_node_port() -> i32 {
    5001
}

fn one() -> i32 {
    1
}

fn yes() -> bool {
    true
}

/// Where the images are kept: by default a PersistentVolumeClaim `<name>-data`
/// described by `size`, `storageClassName`, `accessModes` and `retentionPolicy`;
/// with `s3`, a bucket instead, and no claim. A Registry keeps the kind of
/// storage it was created with: switching would leave every image behind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0").message("storage.size may grow but not shrink"))]
#[x_kube(validation = Rule::new(S3_WITHOUT_CLAIM_FIELDS).message("storage.s3 needs no claim: leave storage.size, storageClassName, accessModes and retentionPolicy unset (at their defaults)"))]
#[x_kube(validation = Rule::new("has(self.s3) == has(oldSelf.s3)").message("storage.s3 cannot be added to or removed from an existing Registry: its images would stay behind in the old storage; copy them and create a new Registry"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested capacity of the claim, e.g. `20Gi`.
    #[serde(default = "default_size")]
    pub size: Quantity,
    /// StorageClass of the claim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes of the claim.
    #[serde(default = "default_access_modes")]
    pub access_modes: Vec<AccessMode>,
    /// What happens to the claim when the Registry is deleted.
    #[serde(default)]
    pub retention_policy: RetentionPolicy,
    /// Keep the images in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW …)
    /// instead of a claim; any number of replicas share it. The claim's fields
    /// must stay at their defaults. The bucket's content stays when the Registry
    /// is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// The claim's fields at their defaults, as the API server fills them in
/// ([`default_size`], [`default_access_modes`], [`RetentionPolicy::Retain`]),
/// whenever `s3` is set.
pub const S3_WITHOUT_CLAIM_FIELDS: &str = "!has(self.s3) || (quantity(self.size).compareTo(quantity('10Gi')) == 0 && !has(self.storageClassName) && size(self.accessModes) == 1 && self.accessModes[0] == 'ReadWriteOnce' && self.retentionPolicy == 'Retain')";

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_size(),
            storage_class_name: None,
            access_modes: default_access_modes(),
            retention_policy: RetentionPolicy::default(),
            s3: None,
        }
    }
}

impl StorageSpec {
    /// True when the images live in a claim, false with `s3`.
    pub fn uses_claim(&self) -> bool {
        self.s3.is_none()
    }
}

/// An S3-compatible bucket for the images. The registry pods write to it
/// directly; clients reach it only with `redirect`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// The bucket; it must exist.
    #[x_kube(validation = Rule::new("size(self) > 0 && !self.contains('/')").message("storage.s3.bucket must be a bucket name: not empty, no '/'"))]
    pub bucket: String,
    /// The service's URL, e.g. `http://minio.storage:9000`; AWS's regional
    /// endpoint when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("storage.s3.endpoint must start with http:// or https://"))]
    pub endpoint: Option<String>,
    /// The bucket's region.
    #[serde(default = "default_region")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("storage.s3.region must not be empty"))]
    pub region: String,
    /// Prepended to every key, so several registries can share a bucket, e.g. `team-a/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.contains('//')").message("storage.s3.prefix must not start with / or contain //"))]
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most
    /// self-hosted services need; virtual-hosted style (`bucket.endpoint/key`) when false.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Answer blob downloads with a redirect to a presigned URL of the bucket,
    /// so clients download straight from the object store. Clients then need to
    /// reach the bucket.
    #[serde(default)]
    pub redirect: bool,
    /// A Secret in the Registry's namespace with the access key. Absent, the
    /// pods get no credentials from the operator and use their environment
    /// (the standard `AWS_*` variables, web identity such as IRSA, or the
    /// instance's metadata service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<S3CredentialsSecret>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Which keys of a Secret hold the S3 credentials. The Secret is mounted into
/// the registry pods; the operator never reads it, and the registry picks up
/// changed credentials without a restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// The Secret.
    #[x_kube(validation = Rule::new("size(self) > 0").message("storage.s3.credentialsSecret.name must not be empty"))]
    pub name: String,
    /// The key that holds the access key id.
    #[serde(default = "default_access_key_id_key")]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("storage.s3.credentialsSecret.accessKeyIdKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub access_key_id_key: String,
    /// The key that holds the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("storage.s3.credentialsSecret.secretAccessKeyKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub secret_access_key_key: String,
    /// The key that holds a session token, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(SECRET_KEY).message("storage.s3.credentialsSecret.sessionTokenKey must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub session_token_key: Option<String>,
}

/// A valid key of a Secret's data.
const SECRET_KEY: &str = "self.matches('^[-._a-zA-Z0-9]+$') && !self.startsWith('..') && self != '.'";

fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}

fn default_size() -> Quantity {
    Quantity("10Gi".into())
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteMany,
    ReadWriteOncePod,
    ReadOnlyMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// Keep the claim (and the images) when the Registry is deleted.
    #[default]
    Retain,
    /// Delete the claim together with the Registry.
    Delete,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on.
    #[serde(default = "default_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec { type_: ServiceType::default(), port: default_port() }
    }
}

fn default_port() -> i32 {
    5000
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded; once the registry reported its usage,
    /// StoragePressure, and its storage probe, StorageHealthy; ServiceMonitor
    /// while `spec.monitoring.serviceMonitor` is enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Registry pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Where the registry answers inside the cluster: `<service>.<namespace>.svc:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The audience Kubernetes tokens must be created for, while Kubernetes
    /// authentication is on: `kubectl create token <sa> --audience <this>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// What the registry last reported about its storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Bytes stored, for people: `1.2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    /// The last garbage collection the registry reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_collection: Option<Collection>,
    /// Where the images are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
}

/// Where the images are kept, as the registry was configured.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    pub backend: StorageBackend,
    /// The bucket, with `s3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The S3 endpoint, when the Registry names one (AWS's regional endpoint otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The claim `<name>-data`, mounted into the pods.
    Filesystem,
    /// An S3-compatible bucket.
    S3,
}

/// The CRD as YAML, as committed in `manifests/crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    format!(
        "# Generated by `cargo run -p berth-crds --bin crdgen`; do not edit.\n{}",
        serde_saphyr::to_string(&Registry::crd()).expect("the CRD serialises")
    )
}
