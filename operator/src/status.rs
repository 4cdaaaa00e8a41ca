//! The Registry's status, computed from what the operator observed. Pure.

use berth_crds::{DEGRADED, PROGRESSING, READY, Registry, RegistryStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::resources::{audience, endpoint, kubernetes_auth};

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

/// The status for `reg`, given its Deployment (if any) and a problem that stops
/// the operator (if any). Conditions whose status did not change keep their
/// `lastTransitionTime`, so an unchanged world yields an identical status.
pub fn desired(reg: &Registry, deployment: Option<&Deployment>, problem: Option<&str>, now: Time) -> RegistryStatus {
    let generation = reg.metadata.generation;
    let want = reg.spec.replicas;
    let ds = deployment.and_then(|d| d.status.as_ref());
    let ready = ds.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = ds.and_then(|s| s.updated_replicas).unwrap_or(0);
    let rolled_out = deployment.is_some_and(|d| {
        d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation && updated >= want
    });
    let conditions = vec![
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
    let previous = reg.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
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
    }
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
        let s = desired(&registry(), Some(&deployment(0, 0)), None, now(1));
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
        assert_eq!(desired(&reg, None, None, now(1)).audience, None);
    }

    #[test]
    fn ready_when_all_replicas_are() {
        let s = desired(&registry(), Some(&deployment(1, 1)), None, now(1));
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(s.ready_replicas, 1);
    }

    #[test]
    fn problems_degrade() {
        let s = desired(&registry(), Some(&deployment(1, 1)), Some("claim conflict"), now(1));
        assert_eq!(get(&s, READY).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "True");
        assert_eq!(get(&s, DEGRADED).message, "claim conflict");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut reg = registry();
        reg.status = Some(desired(&reg, Some(&deployment(0, 0)), None, now(1)));
        let again = desired(&reg, Some(&deployment(0, 0)), None, now(99));
        assert_eq!(Some(&again), reg.status.as_ref(), "no change, no new status");
        let ready = desired(&reg, Some(&deployment(1, 1)), None, now(99));
        assert_eq!(get(&ready, READY).last_transition_time, now(99));
        assert_eq!(get(&ready, DEGRADED).last_transition_time, now(1));
    }
}
