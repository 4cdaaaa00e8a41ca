//! What the registry tells about itself: Prometheus metrics, a span and an
//! access log line per request, and readiness from a storage probe.

pub mod health;
pub mod http;
pub mod metrics;
pub mod series;

pub use health::{Health, Prober};
pub use http::Observer;
pub use metrics::Metrics;
