//! berth-registry: an OCI distribution-spec v1.1 registry with crash-safe
//! filesystem storage and configurable manifest handlers.

pub mod api;
pub mod config;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod names;
pub mod server;
pub mod storage;

pub use config::Config;
