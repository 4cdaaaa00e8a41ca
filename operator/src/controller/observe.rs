//! The ServiceMonitor step of a reconcile. prometheus-operator's CRDs may be
//! missing, or installed after the Registry: the kind is discovered at every
//! reconcile (one GET), so a later reconcile (the periodic resync, or any
//! change) picks up CRDs installed meanwhile without a restart. Nothing
//! watches ServiceMonitors: the kind may not exist when the operator starts.

use berth_crds::Registry;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::error::DiscoveryError;
use kube::{Client, ResourceExt, discovery};

use super::{Change, Context, apply_if_changed, remove_if_ours};
use crate::error::{Error, Result};
use crate::resources;
use crate::status::ServiceMonitorState;

/// The ServiceMonitor kind as the API server serves it, or `None` when it does
/// not: a 404 for the group version (no CRD of the group), or a group version
/// without the kind. Any other failure is an error, not an answer.
///
/// That 404 is a plain-text `404 page not found`, which kube turns into a
/// `Status` with the code but without the `NotFound` reason, and kube 5's
/// `is_not_found()` looks at the reason only: the code is what tells.
async fn served(client: &Client) -> Result<Option<ApiResource>> {
    match discovery::pinned_kind(client, &resources::service_monitor_gvk()).await {
        Ok((resource, _)) => Ok(Some(resource)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(kube::Error::Discovery(DiscoveryError::MissingKind(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Applies the ServiceMonitor while one is asked for and the kind is served;
/// deletes the one this Registry owns when it is no longer asked for. Returns
/// what changed and, while one is asked for, its state for the condition.
pub(super) async fn service_monitor(ctx: &Context, reg: &Registry) -> Result<(Change, Option<ServiceMonitorState>)> {
    let wanted = reg.spec.monitoring.service_monitor.enabled;
    let Some(resource) = served(&ctx.client).await? else {
        // Nothing to delete either: without the kind there are no ServiceMonitors.
        return Ok((Change::Unchanged, wanted.then_some(ServiceMonitorState::CrdNotInstalled)));
    };
    let namespace = reg.namespace().unwrap_or_default();
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let name = resources::service_monitor_name(reg);
    // One of that name that another owner made (or a user's own) is left alone.
    let uid = reg.uid();
    let owned = |m: &DynamicObject| {
        m.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    };
    if wanted {
        if api.get_opt(&name).await?.is_some_and(|existing| !owned(&existing)) {
            return Err(Error::ForeignServiceMonitor(name));
        }
        let change = apply_if_changed(ctx, &api, resources::service_monitor(reg, &resource)).await?;
        return Ok((change, Some(ServiceMonitorState::Applied(name))));
    }
    match remove_if_ours(ctx, &api, &name, owned).await {
        // An operator whose ClusterRole predates ServiceMonitors may not even
        // look: with none asked for, that is no reason to degrade the Registry.
        Err(Error::Kube(kube::Error::Api(status))) if status.code == 403 => Ok((Change::Unchanged, None)),
        removed => Ok((removed?, None)),
    }
}
