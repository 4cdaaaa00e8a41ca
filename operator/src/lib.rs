//! berth-operator: reconciles `Registry` resources (berth.dev/v1alpha1) into a
//! ConfigMap with the registry's configuration, a PersistentVolumeClaim, a
//! ServiceAccount (with a ClusterRoleBinding to review tokens), a Deployment,
//! a Service for the registry's API, a ClusterIP Service `<name>-metrics` for
//! its metrics and probes and, when asked for and prometheus-operator is
//! installed, a ServiceMonitor; and for the registry's garbage collector the images pods use
//! (ConfigMap `<name>-gc-requests`), reading its usage report and storage
//! health back (`<name>-usage`).

pub mod controller;
pub mod error;
pub mod http;
pub mod images;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod telemetry;
