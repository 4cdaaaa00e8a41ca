//! Logs and traces, set up the same way for `berth-registry` and
//! `berth-operator`. Logs go to stdout as text or JSON lines, filtered by
//! `RUST_LOG` (or the configured level). Traces go out over OTLP, HTTP with
//! protobuf (the specification's default) or gRPC
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`), only when the standard environment asks for them
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and
//! neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`); without
//! it no exporter exists and nothing is sent. Spans are never written to the
//! logs: a request's log line carries its fields itself, and spans cost
//! nothing while no exporter wants them.
//!
//! Sampling happens at the head, before a request's spans exist: with
//! `OTEL_TRACES_SAMPLER=traceidratio` and `OTEL_TRACES_SAMPLER_ARG=0.01`, one
//! request in a hundred is traced and the others create no span at all. The
//! SDK's own sampler would decide only when a span ends, after every span had
//! been built: at tens of thousands of requests a second that alone costs a
//! sixth of the throughput.
//!
//! A request that arrives inside a trace (a W3C `traceparent` header) gets a
//! span in that trace, and under a `parentbased_` sampler (the default) it is
//! traced exactly when its caller's is. Requests berth sends on (a mirror's
//! upstream fetches) carry the trace on in their own `traceparent`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, trace::TraceId};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use reqwest::header::HeaderMap;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// Which spans are exported: berth's own, and warnings of everything else.
/// Events below warnings (the access log among them) never reach the
/// exporter: a span carries what its request did.
const TRACE_FILTER: &str = "warn,berth_registry=info,berth_operator=info";

/// The share of new traces started, as `f64` bits: 1.0 until set up.
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);
/// Whether a request inside a caller's trace follows the caller's choice.
static PARENT_BASED: AtomicBool = AtomicBool::new(true);
/// Whether spans are exported: without it no header is read or written.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The trace a request arrives in, from its `traceparent` and `tracestate`
/// headers: only while spans are exported, and only when the header is well
/// formed (a malformed one is ignored, and the request starts a trace).
pub fn caller(headers: &HeaderMap) -> Option<Context> {
    if !EXPORTING.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Whether to trace the request starting now: as its caller chose under a
/// `parentbased_` sampler, otherwise at the configured ratio (of the caller's
/// trace id when there is one, so that services sampling alike agree).
pub fn sampled(caller: Option<&Context>) -> bool {
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    match caller.map(|cx| cx.span().span_context().clone()) {
        Some(parent) if PARENT_BASED.load(Ordering::Relaxed) => parent.is_sampled(),
        Some(parent) => within(parent.trace_id(), ratio),
        None => ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
    }
}

/// The specification's `TraceIdRatioBased` test: the trace id's lower 63
/// bits below `ratio` of their range.
fn within(trace: TraceId, ratio: f64) -> bool {
    let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().expect("8 bytes")) >> 1;
    ratio >= 1.0 || (low as f64) < ratio * (1u64 << 63) as f64
}

/// Adds the current span's trace to the headers of a request berth sends on,
/// when that span is traced; otherwise leaves them alone.
pub fn carry(headers: &mut HeaderMap) {
    let span = tracing::Span::current();
    if !EXPORTING.load(Ordering::Relaxed) || span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP protocol {0:?} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf or grpc")]
    Protocol(String),
    #[error("the OTLP/gRPC exporter needs a Tokio runtime to start in")]
    NoRuntime,
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
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
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

/// The protocol asked for, checked: HTTP with protobuf (the default) or
/// gRPC; JSON over HTTP is not built in.
fn protocol(var: &dyn Fn(&str) -> Option<String>) -> Result<Protocol, TelemetryError> {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    let asked = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match asked.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// The endpoint the gRPC exporter will use, as it reads the environment.
fn grpc_endpoint(var: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let set = |k: &str| var(k).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// How requests are sampled, from `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, PartialEq)]
struct Sampling {
    /// The share of new traces started (a missing or invalid ratio is 1.0,
    /// as the specification says).
    ratio: f64,
    /// Whether a request in a caller's trace follows the caller's choice.
    parent_based: bool,
}

fn sampling(var: &dyn Fn(&str) -> Option<String>) -> Result<Sampling, TelemetryError> {
    let named = var("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    // The specification's default is parentbased_always_on.
    let sampler = if named.is_empty() { "parentbased_always_on" } else { &named };
    let (parent_based, sampler) = match sampler.strip_prefix("parentbased_") {
        Some(root) => (true, root),
        None => (false, sampler),
    };
    let ratio = match sampler {
        "always_on" => 1.0,
        "always_off" => 0.0,
        "traceidratio" => {
            let arg = var("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.trim().parse::<f64>().ok());
            arg.filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0)
        }
        _ => return Err(TelemetryError::Sampler(var("OTEL_TRACES_SAMPLER").unwrap_or_default())),
    };
    Ok(Sampling { ratio, parent_based })
}

/// A batch exporter over OTLP, on a thread of its own (the exporter reads
/// the endpoint, headers and timeout from the standard environment). The
/// SDK keeps every span it is given: [`sampled`] chose them already.
fn provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let var = |k: &str| std::env::var(k).ok();
    let protocol = protocol(&var)?;
    let sampling = sampling(&var)?;
    RATIO.store(sampling.ratio.to_bits(), Ordering::Relaxed);
    PARENT_BASED.store(sampling.parent_based, Ordering::Relaxed);
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match protocol {
        Protocol::Grpc => {
            // tonic's channel runs on the runtime it starts in; the batch
            // thread's exports are served there.
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
            let tonic = builder.with_tonic().with_protocol(protocol);
            // Left to itself the exporter would trust no root at all: the
            // system's (`SSL_CERT_FILE` honoured), as over HTTP.
            if grpc_endpoint(&var).is_some_and(|e| e.starts_with("https://")) {
                tonic.with_tls_config(ClientTlsConfig::new().with_native_roots()).build()
            } else {
                tonic.build()
            }
        }
        _ => builder.with_http().with_protocol(protocol).build(),
    };
    let exporter = exporter.map_err(|e| TelemetryError::Exporter(e.to_string()))?;
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

    fn ratio(pairs: &[(&str, &str)]) -> (f64, bool) {
        let s = sampling(&env(pairs)).unwrap();
        (s.ratio, s.parent_based)
    }

    #[test]
    fn the_sampler_gives_the_share_of_requests_traced_and_whether_callers_decide() {
        assert_eq!(ratio(&[]), (1.0, true), "the specification's default: parentbased_always_on");
        assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]), (0.0, true));
        assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "always_on")]), (1.0, false));
        let sampled = [("OTEL_TRACES_SAMPLER", "TraceIdRatio"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")];
        assert_eq!(ratio(&sampled), (0.01, false));
        let parent = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")];
        assert_eq!(ratio(&parent), (0.25, true));
        let invalid = [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")];
        assert_eq!(ratio(&invalid).0, 1.0);
        let unknown = sampling(&env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]));
        assert!(matches!(unknown, Err(TelemetryError::Sampler(_))));
    }

    #[test]
    fn a_trace_id_ratio_takes_the_ids_below_its_share_of_the_range() {
        let id = |low: u64| TraceId::from_bytes([[0xff; 8], low.to_be_bytes()].concat().try_into().unwrap());
        assert!(within(id(0), 0.01));
        assert!(!within(id(u64::MAX), 0.99));
        assert!(within(id(u64::MAX), 1.0));
        assert!(!within(id(0), 0.0));
        // The lower 63 bits at a quarter of their range: a quarter takes them, a fifth does not.
        let quarter = id(1 << 62);
        assert!(within(quarter, 0.26) && !within(quarter, 0.2));
    }

    #[test]
    fn a_callers_trace_is_read_only_from_a_well_formed_header_while_exporting() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert!(caller(&headers).is_none(), "nothing is read while no spans are exported");
        EXPORTING.store(true, Ordering::Relaxed);
        let cx = caller(&headers).expect("a well-formed traceparent");
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.span().span_context().is_remote() && cx.span().span_context().is_sampled());
        for bad in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01", "junk"] {
            headers.insert("traceparent", bad.parse().unwrap());
            assert!(caller(&headers).is_none(), "{bad} is no trace");
        }
        EXPORTING.store(false, Ordering::Relaxed);
    }

    #[test]
    fn http_protobuf_by_default_grpc_when_asked_and_nothing_else() {
        let asked = |pairs: &[(&str, &str)]| protocol(&env(pairs)).ok();
        assert_eq!(asked(&[]), Some(Protocol::HttpBinary));
        assert_eq!(asked(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]), Some(Protocol::HttpBinary));
        assert_eq!(asked(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), Some(Protocol::Grpc));
        let json = protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]));
        assert!(matches!(json, Err(TelemetryError::Protocol(_))));
        let traces_win =
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")];
        assert_eq!(asked(&traces_win), Some(Protocol::HttpBinary));
        let empty = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert_eq!(asked(&empty), Some(Protocol::Grpc), "an empty variable is no setting");
    }
}
