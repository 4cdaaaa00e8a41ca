//! The storage lifecycle step of a reconcile: tell the registry which images
//! pods use (so its collector keeps them) and when to collect, let it write its
//! report and its storage probe's answer, and read both back for the status.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use berth_crds::Registry;
use berth_registry::report::{HEALTH_KEY, REPORT_KEY};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Change, Context, apply_if_changed};
use crate::error::{Error, Result};
use crate::status::Observed;
use crate::{images, resources};

/// How long a reconcile waits for the first complete list of Pods. Until then
/// the operator cannot know what runs, and an empty list would let the
/// collector delete images that pods use.
const PODS_LISTED: Duration = Duration::from_secs(30);

/// What the Pod watch needs to know of a Registry to decide whether a Pod event
/// concerns it: the hosts it answers to, and the Pods that named it last time
/// (so a deleted Pod, or one whose image changed away, is noticed too).
#[derive(Default)]
pub struct Targets {
    hosts: images::Hosts,
    pods: HashSet<ObjectRef<Pod>>,
}

impl Context {
    /// The Registries a Pod event may change the protected images of.
    pub fn registries_using(&self, pod: &Pod) -> Vec<ObjectRef<Registry>> {
        let pod_ref = ObjectRef::from_obj(pod);
        let targets = self.targets.lock().expect("not poisoned");
        targets
            .iter()
            .filter(|(_, t)| t.pods.contains(&pod_ref) || images::refers_to(pod, &t.hosts))
            .map(|(reg, _)| reg.clone())
            .collect()
    }

    pub(super) fn forget(&self, reg: &Registry) {
        self.targets.lock().expect("not poisoned").remove(&ObjectRef::from_obj(reg));
    }

    /// The protected references of `reg`, from every Pod in the cluster;
    /// remembers which hosts and Pods that involved.
    async fn protected(&self, reg: &Registry, cluster_ip: Option<&str>) -> Result<BTreeSet<String>> {
        let ready = tokio::time::timeout(PODS_LISTED, self.pods.wait_until_ready()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return Err(Error::PodsNotListed);
        }
        let hosts = resources::image_hosts(reg, cluster_ip);
        let pods = self.pods.state();
        let using: Vec<&Pod> = pods.iter().map(|p| &**p).filter(|p| images::refers_to(p, &hosts)).collect();
        let protected = images::protected(using.iter().copied(), &hosts);
        let targets = Targets { pods: using.iter().map(|p| ObjectRef::from_obj(*p)).collect(), hosts };
        self.targets.lock().expect("not poisoned").insert(ObjectRef::from_obj(reg), targets);
        Ok(protected)
    }
}

/// Applies the requests and report ConfigMaps and the registry's Role and
/// RoleBinding; returns the registry's last report and storage health, each
/// if it wrote a readable one.
pub(super) async fn apply(
    ctx: &Context,
    reg: &Registry,
    changes: &mut Vec<(&'static str, Change)>,
) -> Result<Observed> {
    let namespace = reg.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let service = Api::<Service>::namespaced(client.clone(), &namespace).get_opt(&reg.name_any()).await?;
    let cluster_ip = service.as_ref().and_then(|s| s.spec.as_ref()?.cluster_ip.clone());
    let protected = ctx.protected(reg, cluster_ip.as_deref()).await?;

    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let requests = resources::gc_requests(reg, &protected);
    changes.push(("ConfigMap gc-requests", apply_if_changed(ctx, &config_maps, requests).await?));
    changes.push(("ConfigMap usage", apply_if_changed(ctx, &config_maps, resources::usage_config_map(reg)).await?));
    // The Role before its binding, so the binding never points at nothing.
    let roles = Api::<Role>::namespaced(client.clone(), &namespace);
    changes.push(("Role", apply_if_changed(ctx, &roles, resources::registry_role(reg)).await?));
    let bindings = Api::<RoleBinding>::namespaced(client, &namespace);
    changes.push(("RoleBinding", apply_if_changed(ctx, &bindings, resources::registry_role_binding(reg)).await?));

    let Some(usage) = config_maps.get_opt(&resources::usage_name(reg)).await? else {
        return Ok(Observed::default());
    };
    Ok(Observed { report: read(reg, &usage, REPORT_KEY), health: read(reg, &usage, HEALTH_KEY), service_monitor: None })
}

/// The JSON document under `key` of the registry's ConfigMap `cm`. The
/// registry is not trusted to write it well: a malformed one is logged and
/// ignored, as if absent (the registry writes the report again after every
/// collection, its health whenever its probe changes its answer).
fn read<T: DeserializeOwned>(reg: &Registry, cm: &ConfigMap, key: &str) -> Option<T> {
    let text = cm.data.as_ref()?.get(key)?;
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            let name = cm.meta().name.as_deref().unwrap_or_default();
            tracing::warn!(registry = %crate::status::display(reg), configmap = name, key, error = %e, "unreadable document from the registry");
            None
        }
    }
}
