//! Logs and traces, set up the same way for `berth-registry` and
//! `berth-operator`. Logs go to stdout as text or JSON lines, filtered by
//! `RUST_LOG` (or the configured level). Traces go out over OTLP (HTTP with
//! protobuf or JSON, or gRPC: [`exporter`]) only when the standard
//! environment asks for them
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); without
//! it no exporter exists and nothing is sent. Spans are never written to the
//! logs: a request's log line carries its fields itself, and spans cost
//! nothing while no exporter wants them.
//!
//! Sampling happens at the head, before a request's spans exist
//! ([`sampling`]): with `OTEL_TRACES_SAMPLER=traceidratio` and
//! `OTEL_TRACES_SAMPLER_ARG=0.01`, one request in a hundred is traced and the
//! others create no span at all. A request that arrives inside a trace (a W3C
//! `traceparent` header, [`context`]) gets a span in that trace, and under a
//! `parentbased_` sampler (the default) it is traced exactly when its
//! caller's is.

use std::io::IsTerminal;
use std::path::PathBuf;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

mod context;
mod exporter;
mod logged;
mod sampling;

pub use context::{caller, carry};
use sampling::Sampling;
pub use sampling::sampled;

/// The environment, read through a function (tests give their own).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Which spans are exported: berth's own, and warnings of everything else.
/// Events below warnings (the access log among them) never reach the
/// exporter: a span carries what its request did.
const TRACE_FILTER: &str = "warn,berth_registry=info,berth_operator=info";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OTLP protocol {0:?} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf, http/json or grpc"
    )]
    Protocol(String),
    #[error("the OTLP/gRPC exporter needs a Tokio runtime to start in")]
    NoRuntime,
    #[error("reading {0}: {1}")]
    File(PathBuf, #[source] std::io::Error),
    #[error(
        "a client certificate for the OTLP collector needs its key and a key its certificate \
         (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
    )]
    ClientIdentity,
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
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
    /// With the exporter's timeout.
    provider: Option<(SdkTracerProvider, std::time::Duration)>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued (blocks for at most the exporter's
    /// timeout and a second; the SDK alone would give up after 5 s).
    pub fn shutdown(self) {
        if let Some((provider, timeout)) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(timeout + std::time::Duration::from_secs(1))
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
    let traces = provider.as_ref().map(|(p, _)| {
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
    context::configure(provider.is_some(), &|k| std::env::var(k).ok());
    Ok(Telemetry { provider })
}

/// Whether the environment (read through `var`) asks for OTLP traces.
fn otlp_wanted(var: Env) -> bool {
    let set = |k: &str| var(k).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").as_deref() == Some("true") {
        return false;
    }
    // A list (`otlp,console`): berth exports to OTLP when it is named.
    if set("OTEL_TRACES_EXPORTER").is_some_and(|list| !list.split(',').any(|e| e.trim() == "otlp")) {
        return false;
    }
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// A batch exporter over OTLP, on a thread of its own. The SDK keeps every
/// span it is given: [`sampled`] chose them already.
fn provider(service: &'static str) -> Result<(SdkTracerProvider, std::time::Duration), TelemetryError> {
    let var = |k: &str| std::env::var(k).ok();
    let (exporter, timeout) = exporter::from_env(&var)?;
    Sampling::from_env(&var)?.install();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build();
    Ok((provider, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
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
        assert!(otlp_wanted(&env(&[endpoint, ("OTEL_TRACES_EXPORTER", "console, otlp")])));
    }
}
