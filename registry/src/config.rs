//! The registry's configuration: one typed document, read from YAML by the
//! registry and rendered by the operator into a ConfigMap. Field names are
//! camelCase so the same shape reads naturally inside a Kubernetes resource.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod auth;
mod lifecycle;
mod mirror;
mod observe;
mod storage;
pub use auth::{AccessRule, Action, Anonymous, AuthConfig, HtpasswdConfig, KubernetesAuthConfig, TlsConfig};
pub use lifecycle::{
    CollectorConfig, CollectorKubernetes, QuotaConfig, QuotaOverride, RetentionConfig, RetentionRule, Span,
    TagRetention, repository_matches, tag_matches,
};
pub use mirror::{MAX_TAG_TTL_SECS, MirrorConfig, mirror_for, validate_mirrors};
pub use observe::{HealthConfig, MetricsConfig};
pub use storage::{MIN_PART, S3Config, StorageConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on, e.g. `0.0.0.0:5000`.
    pub listen: String,
    pub storage: StorageConfig,
    /// Allow deleting blobs, manifests and tags through the API.
    pub delete_enabled: bool,
    /// Refuse every write (push, delete) with `UNSUPPORTED`; pulls keep working.
    pub read_only: bool,
    pub uploads: UploadsConfig,
    pub manifests: ManifestsConfig,
    pub limits: LimitsConfig,
    /// Who may pull, push and delete.
    pub auth: AuthConfig,
    /// Serve HTTPS instead of plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Garbage collection: when it runs and what it keeps.
    pub gc: CollectorConfig,
    /// Which tags and untagged manifests the collector deletes.
    pub retention: RetentionConfig,
    /// Byte limits for the whole registry and per repository.
    pub quota: QuotaConfig,
    pub log: LogConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// The storage probe behind readiness.
    pub health: HealthConfig,
    /// Pull-through mirrors of other registries, each under a repository prefix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".into(),
            storage: StorageConfig::default(),
            delete_enabled: true,
            read_only: false,
            uploads: UploadsConfig::default(),
            manifests: ManifestsConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            gc: CollectorConfig::default(),
            retention: RetentionConfig::default(),
            quota: QuotaConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            mirrors: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// Let `POST ?mount=<digest>` without `from` link a blob that the registry
    /// already stores into the target repository (distribution-spec 1.1 allows it).
    /// Only while access is not checked (no `auth` authenticators, anonymous
    /// `all`): otherwise the blob could come from a repository the client may not
    /// read, so a normal upload session starts instead.
    pub anonymous_mount: bool,
    /// Smallest chunk the registry asks clients to send (`OCI-Chunk-Min-Length`);
    /// 0 leaves the choice to clients.
    #[schemars(with = "i64", range(min = 0))]
    pub chunk_min_length: u64,
    /// Upload sessions untouched for this many hours are deleted; 0 keeps them.
    #[schemars(with = "i64", range(min = 0))]
    pub purge_after_hours: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig { anonymous_mount: true, chunk_min_length: 0, purge_after_hours: 168 }
    }
}

/// What one client, or many, may hold of the server. Clients past a limit get
/// `429 TOOMANYREQUESTS` (or, past the connection limit, a closed connection);
/// clients that stall are cut off by the timeouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections; further ones are closed at once. Each costs a
    /// file descriptor and a few tens of KiB.
    #[schemars(with = "i64", range(min = 1, max = 1_000_000))]
    pub max_connections: u32,
    /// Requests streaming an upload body at once (blob PATCH, PUT and monolithic
    /// POST). Each holds at most about 1.5 MiB of memory while its data flows, and
    /// only the bytes not yet written while it trickles; none holds a thread while
    /// it waits.
    #[schemars(with = "i64", range(min = 1, max = 1_000_000))]
    pub max_uploads: u32,
    /// Total bytes of manifest bodies held in memory while they arrive.
    #[schemars(with = "i64", range(min = 1))]
    pub manifest_buffer_bytes: u64,
    /// Seconds a client may take to send a request's headers.
    #[schemars(with = "i64", range(min = 1))]
    pub header_timeout_secs: u64,
    /// Seconds a request body may go without a byte before the request ends; an
    /// upload session stays resumable from its last acknowledged chunk.
    #[schemars(with = "i64", range(min = 1))]
    pub body_idle_timeout_secs: u64,
    /// Seconds a connection may move no byte either way (between requests, or a
    /// client that stopped reading a response) before it is closed.
    #[schemars(with = "i64", range(min = 1))]
    pub idle_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_uploads: 4096,
            manifest_buffer_bytes: 256 << 20,
            header_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            idle_timeout_secs: 120,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("maxConnections", self.max_connections as u64),
            ("maxUploads", self.max_uploads as u64),
            ("manifestBufferBytes", self.manifest_buffer_bytes),
            ("headerTimeoutSecs", self.header_timeout_secs),
            ("bodyIdleTimeoutSecs", self.body_idle_timeout_secs),
            ("idleTimeoutSecs", self.idle_timeout_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name} must be positive"));
        }
        if self.max_connections > 1_000_000 || self.max_uploads > 1_000_000 {
            return Err("limits.maxConnections and limits.maxUploads are at most 1000000".into());
        }
        Ok(())
    }
}

/// Which manifest handlers are on, and how pushed manifests are validated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ManifestsConfig {
    pub oci: OciHandlers,
    pub docker: DockerHandlers,
    pub validation: ValidationConfig,
}

impl ManifestsConfig {
    /// Compiles the URL patterns, returning the first error.
    pub fn url_patterns(&self) -> Result<(Vec<regex::Regex>, Vec<regex::Regex>), String> {
        let compile = |patterns: &[String], what: &str| -> Result<Vec<regex::Regex>, String> {
            patterns
                .iter()
                .map(|p| regex::Regex::new(p).map_err(|e| format!("manifests.validation.urls.{what}: {e}")))
                .collect()
        };
        Ok((compile(&self.validation.urls.allow, "allow")?, compile(&self.validation.urls.deny, "deny")?))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.url_patterns()?;
        if self.validation.max_size == 0 {
            return Err("manifests.validation.maxSize must be positive".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OciHandlers {
    /// `application/vnd.oci.image.manifest.v1+json`.
    pub image_manifest: bool,
    /// `application/vnd.oci.image.index.v1+json`.
    pub image_index: bool,
}

impl Default for OciHandlers {
    fn default() -> Self {
        OciHandlers { image_manifest: true, image_index: true }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DockerHandlers {
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    pub schema2: bool,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`.
    pub manifest_list: bool,
    /// Legacy `application/vnd.docker.distribution.manifest.v1+json` and
    /// `+prettyjws`. Off by default: signatures are not verified and current
    /// clients no longer push it.
    pub schema1: bool,
}

impl Default for DockerHandlers {
    fn default() -> Self {
        DockerHandlers { schema2: true, manifest_list: true, schema1: false }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Refuse a manifest whose config and layers are not in the repository
    /// (`MANIFEST_BLOB_UNKNOWN`). Foreign and non-distributable layers are exempt.
    pub blob_references: bool,
    /// Largest manifest accepted, in bytes.
    #[schemars(with = "i64", range(min = 1))]
    pub max_size: u64,
    /// URLs allowed on foreign (non-distributable) layers.
    pub urls: UrlPolicy,
    /// Which manifests of an index must already be in the repository.
    pub indexes: IndexPolicy,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            blob_references: true,
            max_size: 4 * 1024 * 1024,
            urls: UrlPolicy::default(),
            indexes: IndexPolicy::default(),
        }
    }
}

/// Regular expressions over the URLs of foreign layers. A URL must be http(s),
/// match one `allow` pattern (when any are given) and no `deny` pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct UrlPolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IndexPolicy {
    pub platforms: IndexPlatforms,
    /// With `platforms: list`, the platforms whose manifests must exist.
    pub platform_list: Vec<Platform>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IndexPlatforms {
    /// Every manifest an index lists must exist in the repository.
    #[default]
    All,
    /// Indexes may list manifests that were not pushed (sparse indexes).
    None,
    /// Only the manifests for the platforms in `platformList` must exist.
    List,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `berth_registry=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_yaml_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config = Config::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })?;
        Ok(config)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text)
                .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("the config type always serialises")
    }

    /// Checks what serde cannot: patterns compile, limits are sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.manifests.validate().map_err(ConfigError::Invalid)?;
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.auth.validate().map_err(ConfigError::Invalid)?;
        self.retention.validate().map_err(ConfigError::Invalid)?;
        self.storage.validate().map_err(ConfigError::Invalid)?;
        self.metrics.validate().map_err(ConfigError::Invalid)?;
        self.health.validate().map_err(ConfigError::Invalid)?;
        validate_mirrors(&self.mirrors).map_err(ConfigError::Invalid)?;
        if self.limits.manifest_buffer_bytes < self.manifests.validation.max_size {
            return Err(ConfigError::Invalid(
                "limits.manifestBufferBytes must hold at least one manifest of manifests.validation.maxSize".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_is_the_default() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("{}").unwrap(), Config::default());
    }

    #[test]
    fn yaml_round_trips() {
        let mut c = Config::default();
        c.manifests.docker.schema1 = true;
        c.manifests.validation.indexes.platforms = IndexPlatforms::List;
        c.manifests.validation.indexes.platform_list =
            vec![Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) }];
        assert_eq!(Config::from_yaml(&c.to_yaml()).unwrap(), c);
    }

    #[test]
    fn limits_are_checked() {
        assert!(Config::from_yaml("limits: {maxUploads: 3, idleTimeoutSecs: 5}").is_ok());
        assert!(Config::from_yaml("limits: {maxUploads: 0}").is_err());
        assert!(Config::from_yaml("limits: {headerTimeoutSecs: 0}").is_err());
        assert!(Config::from_yaml("limits: {maxConnections: 1000001}").is_err());
        assert!(Config::from_yaml("limits: {manifestBufferBytes: 1024}").is_err(), "smaller than maxSize");
        assert!(
            Config::from_yaml("limits: {manifestBufferBytes: 1024}\nmanifests: {validation: {maxSize: 1024}}").is_ok()
        );
    }

    #[test]
    fn auth_is_checked() {
        assert!(Config::from_yaml("auth: {anonymous: none}").is_err(), "nobody could log in");
        assert!(Config::from_yaml("auth: {anonymous: none, htpasswd: {path: /x}}").is_ok());
        assert!(Config::from_yaml("auth: {anonymous: pull}").is_ok(), "a public read-only registry");
        assert!(Config::from_yaml("auth: {cacheSecs: 301}").is_err());
        assert!(Config::from_yaml("auth: {realm: 'a\"b'}").is_err());
        assert!(Config::from_yaml("auth: {kubernetes: {audience: ''}}").is_err());
        assert!(
            Config::from_yaml("auth: {htpasswd: {access: [{users: [a], repositories: [], actions: [pull]}]}}").is_err()
        );
        let open = Config::default();
        assert!(open.auth.is_open() && !open.auth.has_authenticators(), "standalone stays open by default");
    }

    #[test]
    fn lifecycle_is_checked() {
        let c = Config::from_yaml(
            "gc: {interval: 6h, gracePeriod: 30m}\nretention: {rules: [{repositories: ['*'], untaggedAfter: 7d}]}",
        )
        .unwrap();
        assert_eq!(c.gc.interval, Some(Span::secs(6 * 3600)));
        assert_eq!(c.retention.rules[0].untagged_after, Some(Span::secs(7 * 86400)));
        assert_eq!(Config::from_yaml(&c.to_yaml()).unwrap(), c);
        assert!(Config::from_yaml("gc: {interval: often}").is_err());
        // On demand only survives being written out, as the operator renders it.
        let on_demand = Config::from_yaml("gc: {interval: null}").unwrap();
        assert_eq!(on_demand.gc.interval, None);
        assert_eq!(Config::from_yaml(&on_demand.to_yaml()).unwrap().gc.interval, None);
        assert_eq!(Config::from_yaml("gc: {}").unwrap().gc.interval, Some(Span::secs(86400)), "absent: daily");
        assert!(Config::from_yaml("retention: {rules: [{repositories: ['*']}]}").is_err(), "a rule that keeps all");
        assert!(Config::from_yaml("retention: {rules: [{repositories: [], untaggedAfter: 1d}]}").is_err());
    }

    #[test]
    fn refuses_unknown_fields_and_bad_patterns() {
        assert!(Config::from_yaml("listn: x").is_err());
        assert!(Config::from_yaml("manifests: {validation: {urls: {allow: ['(']}}}").is_err());
        assert!(Config::from_yaml("manifests: {validation: {maxSize: 0}}").is_err());
        assert!(Config::from_yaml("metrics: {path: /v2/metrics}").is_err(), "would hide an API path");
        assert!(Config::from_yaml("metrics: {path: metrics}").is_err());
        assert!(Config::from_yaml("metrics: {path: '/m/{x}'}").is_err(), "a route pattern would panic the router");
        assert!(Config::from_yaml("metrics: {path: /stats, listen: '0.0.0.0:9464'}").is_ok());
        assert!(Config::from_yaml("health: {probeIntervalSecs: 0}").is_err());
    }
}
