//! The Registry's status, computed from what the operator observed. Pure.

use berth_crds::{
    DEGRADED, PROGRESSING, READY, Registry, RegistryStatus, SERVICE_MONITOR, STORAGE_HEALTHY, STORAGE_PRESSURE,
    STORAGE_PRESSURE_PERCENT,
};
use berth_registry::report::{Report, StorageHealth, Usage};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::resources::{audience, endpoint, kubernetes_auth, storage_status};

mod observe;
pub use observe::ServiceMonitorState;

/// What a reconcile's steps found out beyond the Deployment.
#[derive(Debug, Default)]
pub struct Observed {
    /// The registry's usage report, if it wrote a readable one.
    pub report: Option<Report>,
    /// The registry's storage probe, if it reported a readable one.
    pub health: Option<StorageHealth>,
    /// The ServiceMonitor, while one is asked for.
    pub service_monitor: Option<ServiceMonitorState>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The status for `reg`, given its Deployment (if any), a problem that stops
/// the operator (if any) and what the reconcile's steps found out: `None` when
/// they did not run (a problem stopped them, or one failed), and then the
/// status keeps what it said of the report, the storage probe and the
/// ServiceMonitor. Conditions whose status did not change keep their
/// `lastTransitionTime`, so an unchanged world yields an identical status.
pub fn desired(
    reg: &Registry,
    deployment: Option<&Deployment>,
    problem: Option<&str>,
    observed: Option<&Observed>,
    now: Time,
) -> RegistryStatus {
    let kept = last_report(reg);
    let report = match observed {
        Some(o) => o.report.as_ref(),
        None => kept.as_ref(),
    };
    let generation = reg.metadata.generation;
    let want = reg.spec.replicas;
    let ds = deployment.and_then(|d| d.status.as_ref());
    let ready = ds.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = ds.and_then(|s| s.updated_replicas).unwrap_or(0);
    let rolled_out = deployment.is_some_and(|d| {
        d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation && updated >= want
    });
    let mut conditions = vec![
        match problem {
            Some(p) => condition(READY, false, "Degraded", p.to_owned(), generation, &now),
            None if ready >= want => {
                condition(READY, true, "ReplicasReady", format!("{ready}/{want} replicas ready"), generation, &now)
            }
            None => {
                condition(READY, false, "ReplicasNotReady", format!("{ready}/{want} replicas ready"), generation, &now)
            }
        },
        if rolled_out {
            condition(
                PROGRESSING,
                false,
                "RolledOut",
                "the registry runs the current configuration".into(),
                generation,
                &now,
            )
        } else {
            condition(PROGRESSING, true, "RollingOut", format!("{updated}/{want} replicas updated"), generation, &now)
        },
        match problem {
            Some(p) => condition(DEGRADED, true, "ReconcileFailed", p.to_owned(), generation, &now),
            None => condition(DEGRADED, false, "Reconciled", "all objects are as specified".into(), generation, &now),
        },
    ];
    // A bucket has no size to fill: StoragePressure is about the claim's volume.
    let on_volume = report.filter(|_| reg.spec.storage.uses_claim());
    conditions.extend(on_volume.map(|r| storage_pressure(&r.usage, generation, &now)));
    let previous = reg.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match observed {
        Some(o) => {
            conditions.extend(o.health.as_ref().map(|h| observe::storage_healthy(h, generation, &now)));
            conditions.extend(o.service_monitor.as_ref().map(|m| observe::service_monitor(m, generation, &now)));
        }
        None => conditions.extend(
            previous.iter().filter(|c| [STORAGE_HEALTHY, SERVICE_MONITOR].contains(&c.type_.as_str())).cloned(),
        ),
    }
    let conditions = conditions
        .into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect();
    RegistryStatus {
        observed_generation: generation,
        conditions,
        ready_replicas: ready,
        endpoint: Some(endpoint(reg)),
        audience: kubernetes_auth(reg).then(|| audience(reg)),
        usage: report.map(|r| r.usage.clone()),
        used: report.map(|r| human_bytes(r.usage.bytes)),
        last_collection: report.and_then(|r| r.last_collection.clone()),
        storage: Some(storage_status(reg)),
    }
}

/// True past [`STORAGE_PRESSURE_PERCENT`], Unknown when the registry does not
/// know its volume's size.
fn storage_pressure(usage: &Usage, generation: Option<i64>, now: &Time) -> Condition {
    let Some(percent) = usage.volume_percent() else {
        let mut c = condition(
            STORAGE_PRESSURE,
            false,
            "VolumeSizeUnknown",
            "the volume's size is unknown".into(),
            generation,
            now,
        );
        c.status = "Unknown".into();
        return c;
    };
    let size = usage.volume_bytes.unwrap_or_default();
    let free = usage.volume_available_bytes.unwrap_or_default();
    let message = format!(
        "the volume is {percent}% full: {} of {} free; the registry stores {}",
        human_bytes(free),
        human_bytes(size),
        human_bytes(usage.bytes)
    );
    if percent > STORAGE_PRESSURE_PERCENT {
        condition(STORAGE_PRESSURE, true, "VolumeAlmostFull", message, generation, now)
    } else {
        condition(STORAGE_PRESSURE, false, "VolumeHasRoom", message, generation, now)
    }
}

/// Bytes with a binary suffix and one decimal, as `kubectl` users read sizes: `1.2Gi`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{}{}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

/// The report the status holds, to keep it while no new one can be read.
pub fn last_report(reg: &Registry) -> Option<Report> {
    let status = reg.status.as_ref()?;
    Some(Report { usage: status.usage.clone()?, last_collection: status.last_collection.clone() })
}

/// True when the Registry's status has condition `type_` with status True.
pub fn is_true(reg: &Registry, type_: &str) -> bool {
    reg.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The name used in log lines and events.
pub fn display(reg: &Registry) -> String {
    format!("{}/{}", reg.namespace().unwrap_or_default(), reg.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn now(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn registry() -> Registry {
        let mut reg = Registry::new("r", serde_saphyr::from_str("{}").unwrap());
        reg.metadata.namespace = Some("ns".into());
        reg.metadata.generation = Some(3);
        reg
    }

    fn deployment(ready: i32, updated: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(2);
        d.status = Some(DeploymentStatus {
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            observed_generation: Some(2),
            ..Default::default()
        });
        d
    }

    fn get<'a>(s: &'a RegistryStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn pending_pods_are_progressing_not_ready() {
        let s = desired(&registry(), Some(&deployment(0, 0)), None, None, now(1));
        assert_eq!(get(&s, READY).status, "False");
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.endpoint.as_deref(), Some("r.ns.svc:5000"));
        assert_eq!(s.audience.as_deref(), Some("berth.dev/ns/r"), "Kubernetes auth is on by default");
    }

    #[test]
    fn no_audience_without_kubernetes_auth() {
        let mut reg = registry();
        reg.spec.auth.kubernetes.enabled = false;
        assert_eq!(desired(&reg, None, None, None, now(1)).audience, None);
    }

    #[test]
    fn ready_when_all_replicas_are() {
        let s = desired(&registry(), Some(&deployment(1, 1)), None, None, now(1));
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(s.ready_replicas, 1);
    }

    #[test]
    fn problems_degrade() {
        let s = desired(&registry(), Some(&deployment(1, 1)), Some("claim conflict"), None, now(1));
        assert_eq!(get(&s, READY).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "True");
        assert_eq!(get(&s, DEGRADED).message, "claim conflict");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut reg = registry();
        reg.status = Some(desired(&reg, Some(&deployment(0, 0)), None, None, now(1)));
        let again = desired(&reg, Some(&deployment(0, 0)), None, None, now(99));
        assert_eq!(Some(&again), reg.status.as_ref(), "no change, no new status");
        let ready = desired(&reg, Some(&deployment(1, 1)), None, None, now(99));
        assert_eq!(get(&ready, READY).last_transition_time, now(99));
        assert_eq!(get(&ready, DEGRADED).last_transition_time, now(1));
    }

    /// What steps that ran found: this report, nothing else.
    fn seen(report: Report) -> Observed {
        Observed { report: Some(report), ..Default::default() }
    }

    fn report(bytes: u64, size: Option<u64>, free: Option<u64>) -> Report {
        let usage = Usage { bytes, volume_bytes: size, volume_available_bytes: free, ..Default::default() };
        Report { usage, last_collection: None }
    }

    #[test]
    fn no_report_no_usage_and_no_storage_pressure() {
        let s = desired(&registry(), None, None, None, now(1));
        assert!(s.usage.is_none() && s.used.is_none() && s.last_collection.is_none());
        assert!(!s.conditions.iter().any(|c| c.type_ == STORAGE_PRESSURE));
    }

    #[test]
    fn a_report_fills_usage_and_pressure_past_85_percent() {
        let gi = 1024 * 1024 * 1024;
        let mut collected = report(1288490189, Some(10 * gi), Some(gi));
        collected.last_collection = Some(berth_registry::report::Collection { bytes_freed: 7, ..Default::default() });
        let s = desired(&registry(), None, None, Some(&seen(collected)), now(1));
        assert_eq!(s.usage.as_ref().unwrap().bytes, 1288490189);
        assert_eq!(s.used.as_deref(), Some("1.2Gi"));
        assert_eq!(s.last_collection.as_ref().unwrap().bytes_freed, 7);
        let pressure = get(&s, STORAGE_PRESSURE);
        assert_eq!((pressure.status.as_str(), pressure.reason.as_str()), ("True", "VolumeAlmostFull"));
        assert_eq!(pressure.message, "the volume is 90% full: 1Gi of 10Gi free; the registry stores 1.2Gi");

        let roomy = desired(&registry(), None, None, Some(&seen(report(5, Some(100), Some(15)))), now(1));
        assert_eq!(get(&roomy, STORAGE_PRESSURE).status, "False", "85% is not yet pressure");
        let unknown = desired(&registry(), None, None, Some(&seen(report(5, None, None))), now(1));
        assert_eq!(get(&unknown, STORAGE_PRESSURE).status, "Unknown");
    }

    #[test]
    fn a_bucket_has_no_storage_pressure() {
        let mut reg = registry();
        reg.spec.storage = serde_saphyr::from_str("s3: {bucket: images}").unwrap();
        let s = desired(&reg, None, None, Some(&seen(report(5, None, None))), now(1));
        assert!(!s.conditions.iter().any(|c| c.type_ == STORAGE_PRESSURE), "{:?}", s.conditions);
        assert_eq!(s.usage.unwrap().bytes, 5, "usage is still reported");
        let storage = s.storage.unwrap();
        assert_eq!((storage.backend, storage.bucket.as_deref()), (berth_crds::StorageBackend::S3, Some("images")));
        let on_claim = desired(&registry(), None, None, None, now(1)).storage.unwrap();
        assert_eq!(on_claim.backend, berth_crds::StorageBackend::Filesystem);
    }

    #[test]
    fn the_same_report_gives_the_same_status() {
        let mut reg = registry();
        let full = report(1, Some(100), Some(5));
        let full = seen(full);
        reg.status = Some(desired(&reg, None, None, Some(&full), now(1)));
        assert_eq!(desired(&reg, None, None, Some(&full), now(50)), reg.status.clone().unwrap());
        reg.metadata.generation = Some(3);
        assert!(is_true(&reg, STORAGE_PRESSURE));
    }

    fn health(writable: bool) -> StorageHealth {
        StorageHealth {
            writable,
            message: (!writable).then(|| "disk on fire".into()),
            since: "2026-11-29T10:00:00Z".into(),
            pod: None,
        }
    }

    fn types(s: &RegistryStatus) -> Vec<&str> {
        s.conditions.iter().map(|c| c.type_.as_str()).collect()
    }

    #[test]
    fn storage_health_and_service_monitor_conditions_appear_only_when_there_is_something_to_say() {
        let nothing = desired(&registry(), None, None, Some(&Observed::default()), now(1));
        assert_eq!(types(&nothing), [READY, PROGRESSING, DEGRADED]);

        let observed = Observed {
            health: Some(health(false)),
            service_monitor: Some(ServiceMonitorState::CrdNotInstalled),
            ..Default::default()
        };
        let s = desired(&registry(), None, None, Some(&observed), now(1));
        assert_eq!(types(&s), [READY, PROGRESSING, DEGRADED, STORAGE_HEALTHY, SERVICE_MONITOR]);
        let healthy = get(&s, STORAGE_HEALTHY);
        assert_eq!((healthy.status.as_str(), healthy.reason.as_str()), ("False", "Unwritable"));
        assert!(healthy.message.ends_with("disk on fire"), "{}", healthy.message);
        assert_eq!(get(&s, SERVICE_MONITOR).reason, "CRDNotInstalled");
        assert_eq!(get(&s, DEGRADED).status, "False", "a missing CRD is not a failure of the operator");
    }

    #[test]
    fn the_same_observations_give_the_same_status_and_a_change_a_new_transition() {
        let mut reg = registry();
        let monitor =
            |state| Observed { health: Some(health(true)), service_monitor: Some(state), ..Default::default() };
        reg.status = Some(desired(&reg, None, None, Some(&monitor(ServiceMonitorState::CrdNotInstalled)), now(1)));
        let again = desired(&reg, None, None, Some(&monitor(ServiceMonitorState::CrdNotInstalled)), now(50));
        assert_eq!(Some(&again), reg.status.as_ref(), "nothing changed: nothing to write");
        let applied = desired(&reg, None, None, Some(&monitor(ServiceMonitorState::Applied("r".into()))), now(60));
        assert_eq!(get(&applied, SERVICE_MONITOR).status, "True");
        assert_eq!(get(&applied, SERVICE_MONITOR).last_transition_time, now(60));
        assert_eq!(get(&applied, STORAGE_HEALTHY).last_transition_time, now(1));
        // Switched off: the condition goes.
        reg.status = Some(applied);
        let off =
            desired(&reg, None, None, Some(&Observed { health: Some(health(true)), ..Default::default() }), now(70));
        assert!(!types(&off).contains(&SERVICE_MONITOR), "{:?}", types(&off));
    }

    #[test]
    fn steps_that_did_not_run_keep_what_the_status_said() {
        let mut reg = registry();
        let observed = Observed {
            report: Some(report(1, Some(100), Some(50))),
            health: Some(health(false)),
            service_monitor: Some(ServiceMonitorState::Applied("r".into())),
        };
        reg.status = Some(desired(&reg, None, None, Some(&observed), now(1)));
        let failed = desired(&reg, None, Some("the API server is gone"), None, now(9));
        assert_eq!(types(&failed), [READY, PROGRESSING, DEGRADED, STORAGE_PRESSURE, STORAGE_HEALTHY, SERVICE_MONITOR]);
        for t in [STORAGE_PRESSURE, STORAGE_HEALTHY, SERVICE_MONITOR] {
            assert_eq!(get(&failed, t), get(reg.status.as_ref().unwrap(), t), "{t} changed");
        }
        assert_eq!(failed.usage.as_ref().unwrap().bytes, 1);
        // Steps that ran and found nothing clear it all.
        let cleared = desired(&reg, None, None, Some(&Observed::default()), now(9));
        assert_eq!(types(&cleared), [READY, PROGRESSING, DEGRADED]);
        assert!(cleared.usage.is_none());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(1024), "1Ki");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024 * 1024), "5Ti");
        assert_eq!(human_bytes(u64::MAX), "16Ei");
    }
}
