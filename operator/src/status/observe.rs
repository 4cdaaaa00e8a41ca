//! The conditions about what the registry tells of itself: `StorageHealthy`
//! from its storage probe, `ServiceMonitor` from the operator's attempt to
//! have it scraped. Pure.

use berth_crds::{SERVICE_MONITOR, STORAGE_HEALTHY};
use berth_registry::report::StorageHealth;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::condition;

/// The registry's words are copied into the status: bounded, since it is not
/// trusted to keep them short.
const MAX_MESSAGE: usize = 1024;

/// What became of the ServiceMonitor asked for in `spec.monitoring.serviceMonitor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceMonitorState {
    /// Applied (or already as wanted), under this name.
    Applied(String),
    /// The API server does not serve `monitoring.coreos.com/v1` ServiceMonitor.
    CrdNotInstalled,
}

pub fn service_monitor(state: &ServiceMonitorState, generation: Option<i64>, now: &Time) -> Condition {
    match state {
        ServiceMonitorState::Applied(name) => condition(
            SERVICE_MONITOR,
            true,
            "Applied",
            format!("ServiceMonitor {name} selects the registry's metrics Service, port metrics"),
            generation,
            now,
        ),
        ServiceMonitorState::CrdNotInstalled => condition(
            SERVICE_MONITOR,
            false,
            "CRDNotInstalled",
            "spec.monitoring.serviceMonitor is enabled, but the API server does not serve \
             monitoring.coreos.com/v1 ServiceMonitor: install prometheus-operator's CRDs \
             (servicemonitors.monitoring.coreos.com); the ServiceMonitor is created at the next reconcile"
                .into(),
            generation,
            now,
        ),
    }
}

/// True/`Writable` or False/`Unwritable` with the registry's message and the
/// pod that probed.
pub fn storage_healthy(health: &StorageHealth, generation: Option<i64>, now: &Time) -> Condition {
    let pod = health.pod.as_deref().map(|p| format!(" (pod {p})")).unwrap_or_default();
    if health.writable {
        let message = format!("the registry's storage probe passes{pod}");
        return condition(STORAGE_HEALTHY, true, "Writable", message, generation, now);
    }
    let said = health.message.as_deref().filter(|m| !m.trim().is_empty()).unwrap_or("no reason given");
    let message = format!("the registry cannot write its storage{pod}: {}", bounded(said));
    condition(STORAGE_HEALTHY, false, "Unwritable", message, generation, now)
}

/// At most [`MAX_MESSAGE`] bytes, cut at a character boundary.
fn bounded(text: &str) -> &str {
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(7).unwrap())
    }

    fn health(writable: bool, message: Option<&str>, pod: Option<&str>) -> StorageHealth {
        StorageHealth {
            writable,
            message: message.map(str::to_owned),
            since: "2026-11-29T10:00:00Z".into(),
            pod: pod.map(str::to_owned),
        }
    }

    #[test]
    fn a_writable_storage_is_healthy() {
        let c = storage_healthy(&health(true, None, Some("cache-7d9f")), Some(4), &now());
        assert_eq!((c.type_.as_str(), c.status.as_str(), c.reason.as_str()), ("StorageHealthy", "True", "Writable"));
        assert_eq!(c.message, "the registry's storage probe passes (pod cache-7d9f)");
        assert_eq!(c.observed_generation, Some(4));
    }

    #[test]
    fn an_unwritable_storage_says_why_and_where() {
        let c = storage_healthy(&health(false, Some("read-only file system"), Some("cache-7d9f")), None, &now());
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Unwritable"));
        assert_eq!(c.message, "the registry cannot write its storage (pod cache-7d9f): read-only file system");
        let silent = storage_healthy(&health(false, Some("  "), None), None, &now());
        assert_eq!(silent.message, "the registry cannot write its storage: no reason given");
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let c = storage_healthy(&health(false, Some(&long), None), None, &now());
        let said = c.message.strip_prefix("the registry cannot write its storage: ").unwrap();
        assert_eq!(said.len(), MAX_MESSAGE);
        assert!(said.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn service_monitor_conditions() {
        let applied = service_monitor(&ServiceMonitorState::Applied("cache".into()), Some(2), &now());
        assert_eq!((applied.status.as_str(), applied.reason.as_str()), ("True", "Applied"));
        assert!(applied.message.contains("ServiceMonitor cache"));
        let missing = service_monitor(&ServiceMonitorState::CrdNotInstalled, Some(2), &now());
        assert_eq!((missing.type_.as_str(), missing.status.as_str()), ("ServiceMonitor", "False"));
        assert_eq!(missing.reason, "CRDNotInstalled");
        assert!(missing.message.contains("install prometheus-operator's CRDs"), "{}", missing.message);
    }
}
