//! berth-registry: an OCI distribution-spec v1.1 registry with crash-safe
//! filesystem storage and configurable manifest handlers.
//!
//! Without the default `server` feature only [`config`] is built: the typed
//! configuration that the operator renders for the registry.

pub mod config;
pub mod error_chain;
pub mod report;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod digest;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod forward;
#[cfg(feature = "server")]
pub mod gc;
#[cfg(feature = "server")]
mod kube_client;
#[cfg(feature = "server")]
pub mod manifest;
#[cfg(feature = "server")]
pub mod mirror;
#[cfg(feature = "server")]
pub mod names;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod node_mirrors;
#[cfg(feature = "server")]
pub mod observe;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;

pub use config::Config;
