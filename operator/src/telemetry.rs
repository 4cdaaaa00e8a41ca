//! JSON logs, filtered by `RUST_LOG` (default `info`), and OTLP traces when
//! the standard `OTEL_*` environment asks for them: set up as the registry's.

use berth_registry::config::LogFormat;
pub use berth_registry::telemetry::{Telemetry, TelemetryError};

pub fn init() -> Result<Telemetry, TelemetryError> {
    berth_registry::telemetry::init("berth-operator", "info", LogFormat::Json)
}
