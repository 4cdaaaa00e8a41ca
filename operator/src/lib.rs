//! berth-operator: reconciles `Registry` resources (berth.dev/v1alpha1) into a
//! ConfigMap with the registry's configuration, a PersistentVolumeClaim, a
//! ServiceAccount (with a ClusterRoleBinding to review tokens), a Deployment
//! and a Service.

pub mod controller;
pub mod error;
pub mod http;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod telemetry;
