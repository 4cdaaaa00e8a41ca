//! What the registry tells about itself: Prometheus metrics and the storage
//! health behind its readiness. Traces go out over OTLP when the standard
//! `OTEL_*` environment asks for it, so they have no field here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `GET <path>` in the Prometheus text format. Labels never name repositories
/// or digests, so the series stay bounded however many images are pushed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// A separate plain-HTTP address for the metrics (and `/healthz`,
    /// `/readyz`), e.g. `0.0.0.0:9464`; absent, they are served on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Path of the metrics, e.g. `/metrics`.
    pub path: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, listen: None, path: "/metrics".into() }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let reserved = ["/v2", "/healthz", "/readyz"];
        // A plain path: the router would read `{name}` or `*` as a pattern.
        let plain = self.path.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
        if !self.path.starts_with('/')
            || self.path.len() < 2
            || !plain
            || reserved.iter().any(|r| self.path.starts_with(r))
        {
            return Err(format!(
                "metrics.path {:?} must be a plain path (letters, digits, / - _ .) other than /v2, /healthz and /readyz",
                self.path
            ));
        }
        if self.listen.as_deref() == Some("") {
            return Err("metrics.listen must be an address such as 0.0.0.0:9464".into());
        }
        Ok(())
    }
}

/// The probe behind `GET /readyz`: a small write, read and delete in the
/// storage, run in the background so requests never wait for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between probes.
    #[schemars(with = "i64", range(min = 1, max = 3600))]
    pub probe_interval_secs: u64,
    /// A probe that takes longer than this many seconds counts as failed.
    #[schemars(with = "i64", range(min = 1, max = 3600))]
    pub probe_timeout_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { probe_interval_secs: 10, probe_timeout_secs: 5 }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), String> {
        let valid = |v: u64| (1..=3600).contains(&v);
        if !valid(self.probe_interval_secs) || !valid(self.probe_timeout_secs) {
            return Err("health.probeIntervalSecs and health.probeTimeoutSecs are between 1 and 3600".into());
        }
        Ok(())
    }
}
