//! Logs and traces, set up the same way for `berth-registry` and
//! `berth-operator`. Logs go to stdout as text or JSON lines, filtered by
//! `RUST_LOG` (or the configured level). Traces go out over OTLP/HTTP
//! (protobuf) only when the standard environment asks for them
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); without
//! it no exporter exists and nothing is sent. Spans are never written to the
//! logs: a request's log line carries its fields itself, and spans cost
//! nothing while no exporter wants them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// Which spans are exported: berth's own, and warnings of everything else.
const TRACE_FILTER: &str = "warn,berth_registry=info,berth_operator=info";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP protocol {0:?} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")]
    Protocol(String),
    #[error("setting up the OTLP trace exporter: {0}")]
    Exporter(String),
    #[error("logging is already set up")]
    Installed,
}

/// Keeps the trace exporter running; [`Telemetry::shutdown`] sends what is left.
#[must_use = "dropping it stops nothing, but shutdown() sends the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued (blocks for at most the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("sending the last spans failed: {e}");
        }
    }
}

/// Sets up logging (and tracing when the environment asks) for `service`,
/// the default `service.name` of its spans (`OTEL_SERVICE_NAME` wins).
pub fn init(service: &'static str, level: &str, format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let events_only = filter.and(filter_fn(|meta| meta.is_event()));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_filter(events_only).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_filter(events_only).boxed(),
    };
    let provider = otlp_wanted(&|k| std::env::var(k).ok()).then(|| provider(service)).transpose()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer(service)).with_filter(EnvFilter::new(TRACE_FILTER))
    });
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = match traces {
        Some(traces) => vec![logs, traces.boxed()],
        None => vec![logs],
    };
    tracing_subscriber::registry().with(layers).try_init().map_err(|_| TelemetryError::Installed)?;
    Ok(Telemetry { provider })
}

/// Whether the environment (read through `var`) asks for OTLP traces.
fn otlp_wanted(var: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").as_deref() == Some("true") {
        return false;
    }
    if set("OTEL_TRACES_EXPORTER").is_some_and(|e| e != "otlp") {
        return false;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// The protocol asked for, checked: only HTTP with protobuf is built in.
fn protocol(var: &dyn Fn(&str) -> Option<String>) -> Result<(), TelemetryError> {
    let asked = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match asked.as_deref().map(str::trim) {
        None | Some("") | Some("http/protobuf") => Ok(()),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// A batch exporter over OTLP/HTTP, on a thread of its own (the exporter
/// reads the endpoint, headers and timeout from the standard environment).
fn provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    protocol(&|k| std::env::var(k).ok())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn traces_go_out_only_when_an_endpoint_is_set_and_nothing_turns_them_off() {
        assert!(!otlp_wanted(&env(&[])));
        assert!(!otlp_wanted(&env(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(otlp_wanted(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])));
        assert!(otlp_wanted(&env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert!(!otlp_wanted(&env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(!otlp_wanted(&env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])));
        assert!(otlp_wanted(&env(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_SDK_DISABLED", "false")])));
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        assert!(protocol(&env(&[])).is_ok());
        assert!(protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
        assert!(matches!(protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])), Err(TelemetryError::Protocol(_))));
        let traces_win =
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")];
        assert!(protocol(&env(&traces_win)).is_ok());
    }
}
