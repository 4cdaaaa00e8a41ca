//! The reconciler: one flat pass that applies the objects built by
//! [`crate::resources`], skipping any whose applied hash already matches, and
//! writes status only when it changed. Idle means no writes at all.

mod lifecycle;
mod observe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_crds::{Registry, RegistryStatus, RetentionPolicy, SERVICE_MONITOR, STORAGE_HEALTHY, STORAGE_PRESSURE};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::metrics::{ErrorLabels, Metrics};
use crate::resources::{self, OWNER_UID, applied_hash, quantity_bytes, with_applied_hash};
use crate::status::Observed;
use crate::{images, status};

/// Field manager of every server-side apply, and the finalizer's name.
pub const MANAGER: &str = "berth-operator";
pub const FINALIZER: &str = "berth.dev/cleanup";
/// How often an unchanged Registry is looked at again.
const RESYNC: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Registry image used when a Registry names none.
    pub image: String,
    failures: Mutex<HashMap<ObjectRef<Registry>, u32>>,
    /// Every Pod in the cluster, reduced to its image references.
    pods: Store<Pod>,
    /// Fills `pods`; taken by [`run`].
    pods_writer: Mutex<Option<reflector::store::Writer<Pod>>>,
    /// Per Registry, which Pod events concern it.
    targets: Mutex<HashMap<ObjectRef<Registry>, lifecycle::Targets>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, image: String) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance: None });
        let (pods, writer) = reflector::store();
        Arc::new(Context {
            client,
            metrics,
            recorder,
            image,
            failures: Mutex::default(),
            pods,
            pods_writer: Mutex::new(Some(writer)),
            targets: Mutex::default(),
        })
    }

    /// Publishes an event; `action` names what was acted on, so events about
    /// different objects are not folded into one series.
    async fn event(&self, reg: &Registry, type_: EventType, reason: &str, action: &str, note: String) {
        self.metrics.writes.inc();
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &reg.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let registries = Api::<Registry>::all(client.clone());
    let writer = ctx.pods_writer.lock().expect("not poisoned").take().expect("the controller runs once");
    // One watch of every Pod both fills the cache the protected lists are made
    // from and triggers the Registries whose pods came, changed or went.
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().any_semantic())
        .modify(images::slim)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let mapper = ctx.clone();
    Controller::new(registries, watcher::Config::default().any_semantic())
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ConfigMap>::all(client.clone()), watcher::Config::default())
        .owns(Api::<DaemonSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), watcher::Config::default())
        .watches_stream(pods, move |pod| mapper.registries_using(&pod))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile attempt ended with an error");
            }
        })
        .await;
}

/// One span per reconcile, named by the Registry, so its API calls, logs and
/// (once exported) traces can be told apart from other Registries'.
#[tracing::instrument(skip_all, fields(namespace = reg.namespace().unwrap_or_default(), name = reg.name_any()))]
pub async fn reconcile(reg: Arc<Registry>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start();
    let namespace = reg.namespace().ok_or_else(|| Error::Invalid("a Registry is namespaced".into()))?;
    let api = Api::<Registry>::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, FINALIZER, reg.clone(), |event| async {
        match event {
            Finalizer::Apply(reg) => apply(&reg, &ctx).await,
            Finalizer::Cleanup(reg) => cleanup(&reg, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.failures.lock().expect("not poisoned").remove(&ObjectRef::from_obj(&*reg));
    Ok(action)
}

/// The wait before retrying after the `n`th failure in a row (from 1):
/// 5 s, 10 s, 20 s, ... capped at the resync period.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(5u64 << n.clamp(1, 7).saturating_sub(1)).min(RESYNC)
}

/// Backs off exponentially per Registry; a success resets it.
pub fn error_policy(reg: Arc<Registry>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.get_or_create(&ErrorLabels { error: error.metric_label().into() }).inc();
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(ObjectRef::from_obj(&*reg)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    tracing::warn!(registry = %status::display(&reg), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

enum Change {
    Created,
    Updated,
    Deleted,
    Unchanged,
}

/// Server-side applies `desired` unless the live object already carries its hash.
async fn apply_if_changed<K>(ctx: &Context, api: &Api<K>, desired: K) -> Result<Change>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let desired = with_applied_hash(desired);
    let name = desired.meta().name.clone().unwrap_or_default();
    let existing = api.get_opt(&name).await?;
    if existing.as_ref().is_some_and(|e| applied_hash(e) == applied_hash(&desired)) {
        return Ok(Change::Unchanged);
    }
    ctx.metrics.writes.inc();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&desired)).await?;
    Ok(if existing.is_some() { Change::Updated } else { Change::Created })
}

/// Deletes `name` if it exists and `ours` says this Registry made it; one
/// that goes meanwhile (the garbage collector was quicker) is as good.
async fn remove_if_ours<K>(ctx: &Context, api: &Api<K>, name: &str, ours: impl Fn(&K) -> bool) -> Result<Change>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(existing) if ours(&existing) => {
            ctx.metrics.writes.inc();
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(Change::Deleted),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(Change::Unchanged),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(Change::Unchanged),
    }
}

/// True for an object marked with this Registry's uid (objects it cannot own).
fn marked_for<K: Resource>(reg: &Registry) -> impl Fn(&K) -> bool + '_ {
    move |obj| {
        obj.meta().annotations.as_ref().and_then(|a| a.get(OWNER_UID)).map(String::as_str) == reg.uid().as_deref()
    }
}

/// The registry's ServiceAccount. One of that name that this Registry did not
/// create is refused: binding it would hand review rights to another workload,
/// and owning it would get it garbage-collected with the Registry.
async fn ensure_account(ctx: &Context, reg: &Registry, api: &Api<ServiceAccount>) -> Result<Change> {
    let name = resources::service_account_name(reg);
    if let Some(existing) = api.get_opt(&name).await? {
        let uid = reg.uid();
        if !existing.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()) {
            return Err(Error::ForeignAccount(name));
        }
    }
    apply_if_changed(ctx, api, resources::service_account(reg)).await
}

/// True when another object than `reg` is `obj`'s controller.
fn controlled_by_another<K: Resource>(obj: &K, reg: &Registry) -> bool {
    let uid = reg.uid();
    obj.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) != uid.as_ref())
}

/// One of the Registry's Services. Their names can meet: Registry `a`'s
/// metrics Service and Registry `a-metrics`'s own are both `a-metrics`. One
/// that another object controls is refused, not taken over: both Registries
/// apply under the same field manager, so each apply would take it from the
/// other, ports, selector and owner.
async fn apply_service(ctx: &Context, reg: &Registry, api: &Api<Service>, desired: Service) -> Result<Change> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some_and(|existing| controlled_by_another(&existing, reg)) {
        return Err(Error::ForeignService(name));
    }
    apply_if_changed(ctx, api, desired).await
}

/// The ClusterRoleBinding that lets the registry review tokens, present exactly
/// while `spec.auth.kubernetes.enabled`.
async fn review_binding(ctx: &Context, reg: &Registry) -> Result<Change> {
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    if resources::kubernetes_auth(reg) {
        apply_if_changed(ctx, &bindings, resources::cluster_role_binding(reg)).await
    } else {
        remove_if_ours(ctx, &bindings, &resources::cluster_role_binding_name(reg), marked_for(reg)).await
    }
}

/// The node forwarder and the KEP-1755 ConfigMap, present exactly while
/// `spec.nodeAccess.enabled`.
async fn node_access(ctx: &Context, reg: &Registry, changes: &mut Vec<(&'static str, Change)>) -> Result<()> {
    let namespace = reg.namespace().unwrap_or_default();
    let daemonsets = Api::<DaemonSet>::namespaced(ctx.client.clone(), &namespace);
    let (hosting_ns, hosting_name) = resources::LOCAL_REGISTRY_HOSTING;
    let hosting = Api::<ConfigMap>::namespaced(ctx.client.clone(), hosting_ns);
    if reg.spec.node_access.enabled {
        changes.push(("DaemonSet", apply_if_changed(ctx, &daemonsets, resources::node_access(reg, &ctx.image)).await?));
        changes.push((
            "ConfigMap kube-public/local-registry-hosting",
            apply_if_changed(ctx, &hosting, resources::local_registry_hosting(reg)).await?,
        ));
    } else {
        let uid = reg.uid();
        let owned = |d: &DaemonSet| d.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref());
        changes.push(("DaemonSet", remove_if_ours(ctx, &daemonsets, &resources::node_access_name(reg), owned).await?));
        changes.push((
            "ConfigMap kube-public/local-registry-hosting",
            remove_if_ours(ctx, &hosting, hosting_name, marked_for(reg)).await?,
        ));
    }
    Ok(())
}

/// The PodDisruptionBudget, present exactly while the Registry runs more than
/// one replica.
async fn disruption_budget(ctx: &Context, reg: &Registry) -> Result<Change> {
    let budgets = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &reg.namespace().unwrap_or_default());
    if resources::wants_disruption_budget(reg) {
        apply_if_changed(ctx, &budgets, resources::disruption_budget(reg)).await
    } else {
        let uid = reg.uid();
        let owned = |b: &PodDisruptionBudget| b.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref());
        remove_if_ours(ctx, &budgets, &resources::disruption_budget_name(reg), owned).await
    }
}

/// Creates the claim, or grows it; never touches a claim created for something else.
async fn ensure_claim(ctx: &Context, reg: &Registry, api: &Api<PersistentVolumeClaim>) -> Result<Change> {
    let desired = resources::claim(reg);
    let name = resources::claim_name(reg);
    if let Some(existing) = api.get_opt(&name).await? {
        let owner = existing.metadata.annotations.as_ref().and_then(|a| a.get(OWNER_UID));
        if owner.map(String::as_str) != reg.uid().as_deref() {
            return Err(Error::ForeignClaim(name));
        }
        let size = |pvc: &PersistentVolumeClaim| {
            pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").and_then(|q| quantity_bytes(&q.0))
        };
        if size(&desired) < size(&existing) {
            return Ok(Change::Unchanged); // never shrink; the CRD refuses it too
        }
    }
    apply_if_changed(ctx, api, desired).await
}

async fn apply(reg: &Registry, ctx: &Context) -> Result<Action> {
    let namespace = reg.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);

    let mut changes = Vec::new();
    let mut problem = None;
    // None while a problem stops the steps: the status keeps what they last found.
    let mut observed = None;
    // On S3 there is no claim: the CRD refuses to switch an existing Registry
    // between the two, so there is never one of ours to clean up either.
    if reg.spec.storage.uses_claim() {
        match ensure_claim(ctx, reg, &claims).await {
            Ok(change) => changes.push(("PersistentVolumeClaim", change)),
            Err(e @ Error::ForeignClaim(_)) => problem = Some(e.to_string()),
            Err(e) => return fail(reg, ctx, e).await,
        }
    }
    // A configuration the registry would refuse is not applied: the running
    // pods keep the last good one instead of rolling into a crash loop.
    if problem.is_none()
        && let Err(e) = resources::check(reg)
    {
        problem = Some(format!("the registry would refuse this configuration, so it is not applied: {e}"));
    }
    if problem.is_none() {
        let steps = async {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
            changes.push(("ConfigMap", apply_if_changed(ctx, &cm, resources::config_map(reg)).await?));
            // The account and its binding before the pods that use them.
            let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &namespace);
            changes.push(("ServiceAccount", ensure_account(ctx, reg, &accounts).await?));
            changes.push(("ClusterRoleBinding", review_binding(ctx, reg).await?));
            changes.push((
                "Deployment",
                apply_if_changed(ctx, &deployments, resources::deployment(reg, &ctx.image)).await?,
            ));
            changes.push(("PodDisruptionBudget", disruption_budget(ctx, reg).await?));
            let svc = Api::<Service>::namespaced(client.clone(), &namespace);
            changes.push(("Service", apply_service(ctx, reg, &svc, resources::service(reg)).await?));
            // Beside it, not on it: the metrics port stays inside the cluster.
            changes.push(("Service metrics", apply_service(ctx, reg, &svc, resources::metrics_service(reg)).await?));
            node_access(ctx, reg, &mut changes).await?;
            let mut found = lifecycle::apply(ctx, reg, &mut changes).await?;
            // Last: monitoring is optional, and a failure here (say, a ClusterRole
            // from before ServiceMonitors) must not hold back the protected images.
            let (change, monitor) = observe::service_monitor(ctx, reg).await?;
            changes.push(("ServiceMonitor", change));
            found.service_monitor = monitor;
            Ok(found)
        };
        match steps.await {
            Ok(found) => observed = Some(found),
            Err(e) => return fail(reg, ctx, e).await,
        }
    }
    for (kind, change) in &changes {
        match change {
            Change::Created => ctx.event(reg, EventType::Normal, "Created", kind, format!("created {kind}")).await,
            Change::Updated => ctx.event(reg, EventType::Normal, "Updated", kind, format!("updated {kind}")).await,
            Change::Deleted => ctx.event(reg, EventType::Normal, "Deleted", kind, format!("deleted {kind}")).await,
            Change::Unchanged => {}
        }
    }
    let deployment = deployments.get_opt(&reg.name_any()).await?;
    let became_degraded = problem.is_some() && !is_degraded(reg);
    let status = write_status(reg, ctx, deployment.as_ref(), problem.as_deref(), observed.as_ref()).await?;
    if let (true, Some(p)) = (became_degraded, problem) {
        ctx.event(reg, EventType::Warning, "Degraded", "Reconcile", p).await;
    }
    // A Warning when a condition turns bad, not at every reconcile while it stays so.
    for (type_, bad, reason, action) in [
        (STORAGE_PRESSURE, "True", STORAGE_PRESSURE, "Storage"),
        (STORAGE_HEALTHY, "False", "StorageUnwritable", "Storage"),
        (SERVICE_MONITOR, "False", "ServiceMonitorCRDNotInstalled", "ServiceMonitor"),
    ] {
        if let Some(c) = turned(reg, &status, type_, bad) {
            ctx.event(reg, EventType::Warning, reason, action, c.message.clone()).await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// The condition `type_` of the new `status` when it has status `value` and
/// the Registry's current status did not say so.
fn turned<'a>(reg: &Registry, status: &'a RegistryStatus, type_: &str, value: &str) -> Option<&'a Condition> {
    let was = reg.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == value));
    status.conditions.iter().find(|c| c.type_ == type_ && c.status == value).filter(|_| !was)
}

fn is_degraded(reg: &Registry) -> bool {
    status::is_true(reg, berth_crds::DEGRADED)
}

/// Reports a failed step in the status and as an event, then hands the error
/// to the error policy.
async fn fail(reg: &Registry, ctx: &Context, error: Error) -> Result<Action> {
    let message = error.to_string();
    if !is_degraded(reg) {
        ctx.event(reg, EventType::Warning, "Failed", "Reconcile", message.clone()).await;
    }
    let namespace = reg.namespace().unwrap_or_default();
    let deployment =
        Api::<Deployment>::namespaced(ctx.client.clone(), &namespace).get_opt(&reg.name_any()).await.ok().flatten();
    let _ = write_status(reg, ctx, deployment.as_ref(), Some(&message), None).await;
    Err(error)
}

/// Writes the status if it changed; returns it. `observed` as [`status::desired`] takes it.
async fn write_status(
    reg: &Registry,
    ctx: &Context,
    deployment: Option<&Deployment>,
    problem: Option<&str>,
    observed: Option<&Observed>,
) -> Result<RegistryStatus> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::desired(reg, deployment, problem, observed, now);
    if reg.status.as_ref() == Some(&status) {
        return Ok(status);
    }
    ctx.metrics.writes.inc();
    let api = Api::<Registry>::namespaced(ctx.client.clone(), &reg.namespace().unwrap_or_default());
    let mut patch = serde_json::json!({ "status": status });
    // A merge patch leaves out what it does not mention: a field that went away is nulled.
    for (field, absent) in [
        ("audience", status.audience.is_none()),
        ("usage", status.usage.is_none()),
        ("used", status.used.is_none()),
        ("lastCollection", status.last_collection.is_none()),
    ] {
        if absent {
            patch["status"][field] = serde_json::Value::Null;
        }
    }
    if let Some(storage) = &status.storage {
        for (field, absent) in [("bucket", storage.bucket.is_none()), ("endpoint", storage.endpoint.is_none())] {
            if absent {
                patch["status"]["storage"][field] = serde_json::Value::Null;
            }
        }
    }
    api.patch_status(&reg.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(status)
}

/// On deletion: delete the objects outside the Registry's namespace, and the
/// claim if the retention policy says so; owned objects are garbage-collected
/// through their owner references. A bucket's content is never deleted.
async fn cleanup(reg: &Registry, ctx: &Context) -> Result<Action> {
    ctx.forget(reg);
    let (hosting_ns, hosting_name) = resources::LOCAL_REGISTRY_HOSTING;
    let hosting = Api::<ConfigMap>::namespaced(ctx.client.clone(), hosting_ns);
    remove_if_ours(ctx, &hosting, hosting_name, marked_for(reg)).await?;
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    remove_if_ours(ctx, &bindings, &resources::cluster_role_binding_name(reg), marked_for(reg)).await?;
    if reg.spec.storage.uses_claim() && reg.spec.storage.retention_policy == RetentionPolicy::Delete {
        let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &reg.namespace().unwrap_or_default());
        let name = resources::claim_name(reg);
        if let Some(existing) = claims.get_opt(&name).await? {
            let owner = existing.metadata.annotations.as_ref().and_then(|a| a.get(OWNER_UID));
            if owner.map(String::as_str) == reg.uid().as_deref() {
                ctx.metrics.writes.inc();
                claims.delete(&name, &DeleteParams::default()).await?;
                ctx.event(
                    reg,
                    EventType::Normal,
                    "Deleted",
                    "PersistentVolumeClaim",
                    format!("deleted PersistentVolumeClaim {name}"),
                )
                .await;
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_resync_period() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    /// Registry `cache-metrics`'s own Service is named like Registry `cache`'s
    /// metrics Service: whichever Registry has it, the other keeps off.
    #[test]
    fn a_service_another_registry_controls_is_not_ours() {
        let reg = |name: &str, uid: &str| {
            let mut reg = Registry::new(name, serde_json::from_str("{}").unwrap());
            reg.metadata.namespace = Some("team".into());
            reg.metadata.uid = Some(uid.into());
            reg
        };
        let (cache, other) = (reg("cache", "uid-1"), reg("cache-metrics", "uid-2"));
        let theirs = resources::service(&other);
        assert_eq!(theirs.metadata.name, resources::metrics_service(&cache).metadata.name);
        assert!(controlled_by_another(&theirs, &cache));
        assert!(!controlled_by_another(&theirs, &other));
        assert!(!controlled_by_another(&resources::metrics_service(&cache), &cache));
        // Nobody's (made by hand): not refused, as the main Service never was.
        let mut bare = theirs.clone();
        bare.metadata.owner_references = None;
        assert!(!controlled_by_another(&bare, &cache));
    }
}
