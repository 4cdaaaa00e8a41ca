//! Logs and traces, set up the same way for `berth-registry` and
//! `berth-operator`. Logs go to stdout as text or JSON lines, filtered by
//! `RUST_LOG` (or the configured level). Traces go out over OTLP/HTTP
//! (protobuf) only when the standard environment asks for them
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); without
//! it no exporter exists and nothing is sent. Spans are never written to the
//! logs: a request's log line carries its fields itself, and spans cost
//! nothing while no exporter wants them.
//!
//! Sampling happens at the head, before a request's spans exist: with
//! `OTEL_TRACES_SAMPLER=traceidratio` (or `parentbased_traceidratio`; a
//! request's span is always a root) and `OTEL_TRACES_SAMPLER_ARG=0.01`, one
//! request in a hundred is traced and the others create no span at all. The
//! SDK's own sampler would decide only when a span ends, after every span had
//! been built: at tens of thousands of requests a second that alone costs a
//! sixth of the throughput.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// Which spans are exported: berth's own, and warnings of everything else.
/// Events below warnings (the access log among them) never reach the
/// exporter: a span carries what its request did.
const TRACE_FILTER: &str = "warn,berth_registry=info,berth_operator=info";

/// The share of requests traced, as `f64` bits: 1.0 until set up.
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Whether to trace the request starting now (a draw at the configured ratio).
pub fn sampled() -> bool {
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP protocol {0:?} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")]
    Protocol(String),
    #[error("setting up the OTLP trace exporter: {0}")]
    Exporter(String),
    #[error(
        "OTEL_TRACES_SAMPLER {0:?} is not supported: use always_on, always_off or traceidratio (parentbased_ or not)"
    )]
    Sampler(String),
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
    // Not spans: events, and the hints `tracing::enabled!` asks about.
    let events_only = filter.and(filter_fn(|meta| !meta.is_span()));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_filter(events_only).boxed(),
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()).with_filter(events_only).boxed()
        }
    };
    let provider = otlp_wanted(&|k| std::env::var(k).ok()).then(|| provider(service)).transpose()?;
    // No source locations, thread names or busy/idle times on spans: each
    // costs work on every request, sampled or not, and tells little here.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(
                EnvFilter::new(TRACE_FILTER).and(filter_fn(|meta| meta.is_span() || *meta.level() <= Level::WARN)),
            )
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
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    let asked = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match asked.as_deref().map(str::trim) {
        None | Some("") | Some("http/protobuf") => Ok(()),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// The share of requests to trace, from `OTEL_TRACES_SAMPLER` and its
/// argument (a missing or invalid ratio is 1.0, as the specification says).
fn ratio(var: &dyn Fn(&str) -> Option<String>) -> Result<f64, TelemetryError> {
    let sampler = var("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    let sampler = sampler.strip_prefix("parentbased_").unwrap_or(&sampler);
    match sampler {
        "" | "always_on" => Ok(1.0),
        "always_off" => Ok(0.0),
        "traceidratio" => {
            let arg = var("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.trim().parse::<f64>().ok());
            Ok(arg.filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0))
        }
        _ => Err(TelemetryError::Sampler(var("OTEL_TRACES_SAMPLER").unwrap_or_default())),
    }
}

/// A batch exporter over OTLP/HTTP, on a thread of its own (the exporter
/// reads the endpoint, headers and timeout from the standard environment).
/// The SDK keeps every span it is given: [`sampled`] chose them already.
fn provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let var = |k: &str| std::env::var(k).ok();
    protocol(&var)?;
    RATIO.store(ratio(&var)?.to_bits(), Ordering::Relaxed);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build())
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
    fn the_sampler_gives_the_share_of_requests_traced() {
        assert_eq!(ratio(&env(&[])).unwrap(), 1.0, "the specification's default: every trace");
        assert_eq!(ratio(&env(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")])).unwrap(), 0.0);
        let sampled = [("OTEL_TRACES_SAMPLER", "TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")];
        assert_eq!(ratio(&env(&sampled)).unwrap(), 0.01);
        let parent = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")];
        assert_eq!(ratio(&env(&parent)).unwrap(), 0.25);
        let invalid = [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")];
        assert_eq!(ratio(&env(&invalid)).unwrap(), 1.0);
        assert!(matches!(ratio(&env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")])), Err(TelemetryError::Sampler(_))));
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        assert!(protocol(&env(&[])).is_ok());
        assert!(protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
        assert!(matches!(protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])), Err(TelemetryError::Protocol(_))));
        let traces_win =
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")];
        assert!(protocol(&env(&traces_win)).is_ok());
        let empty = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert!(protocol(&env(&empty)).is_err(), "an empty variable is no setting");
    }
}
