//! W3C trace context (`traceparent`, `tracestate`): a request that arrives
//! inside a trace continues it, and requests berth sends on (a mirror's
//! upstream fetches) tell the server they go to which trace they belong to,
//! and whether it is sampled. Headers are read and written only while spans
//! are exported and `OTEL_PROPAGATORS` (default `tracecontext,baggage`)
//! names `tracecontext`.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use reqwest::header::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Env;

/// The longest `tracestate` kept. W3C lets a participant drop a longer one;
/// kept, a client's 16 KB of it would ride on every span of its request and
/// on every upstream request the request causes (where proxies refuse
/// header lines over 8 KB).
const MAX_TRACE_STATE: usize = 512;

/// Whether trace context is read and written.
static PROPAGATING: AtomicBool = AtomicBool::new(false);

/// Turns propagation on while spans are exported, unless the standard
/// `OTEL_PROPAGATORS` leaves `tracecontext` out (`none`, `b3`, …).
pub(super) fn configure(exporting: bool, var: Env) {
    let wanted = var("OTEL_PROPAGATORS")
        .filter(|v| !v.trim().is_empty())
        .is_none_or(|list| list.split(',').any(|p| p.trim().eq_ignore_ascii_case("tracecontext")));
    PROPAGATING.store(exporting && wanted, Ordering::Relaxed);
}

/// The trace a request arrives in, from its `traceparent` and `tracestate`
/// headers, when well formed (a malformed one is ignored, and the request
/// starts a trace of its own).
pub fn caller(headers: &HeaderMap) -> Option<Context> {
    if !PROPAGATING.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Bounded(HeaderExtractor(headers)));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Headers with an over-long `tracestate` left out.
struct Bounded<'a>(HeaderExtractor<'a>);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).filter(|v| key != "tracestate" || v.len() <= MAX_TRACE_STATE)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// Adds the trace context of a request berth sends on to its headers: the
/// current span's when it is traced, otherwise a new trace marked unsampled,
/// so that a server sampling as its callers do does not trace it either.
pub fn carry(headers: &mut HeaderMap) {
    if !PROPAGATING.load(Ordering::Relaxed) {
        return;
    }
    let span = tracing::Span::current();
    let cx = if span.is_disabled() { unsampled() } else { span.context() };
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// A trace of its own that nobody samples.
fn unsampled() -> Context {
    let (trace, span) = (TraceId::from(fastrand::u128(1..)), SpanId::from(fastrand::u64(1..)));
    let context = SpanContext::new(trace, span, TraceFlags::NOT_SAMPLED, false, TraceState::NONE);
    Context::new().with_remote_span_context(context)
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    /// The switch is one per process: a test that turns it holds this first.
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn exclusive() -> std::sync::MutexGuard<'static, ()> {
        SWITCH.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Propagation on for the guard's life; off again after it, even when
    /// the test panics.
    struct Propagating;

    impl Propagating {
        fn on() -> Propagating {
            configure(true, &env(&[]));
            Propagating
        }
    }

    impl Drop for Propagating {
        fn drop(&mut self) {
            configure(false, &env(&[]));
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_trace_is_read_only_from_a_well_formed_header_while_propagating() {
        let _serial = exclusive();
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        headers.insert("tracestate", "vendor=a".parse().unwrap());
        assert!(caller(&headers).is_none(), "nothing is read while no spans are exported");
        let _on = Propagating::on();
        let cx = caller(&headers).expect("a well-formed traceparent");
        let span = cx.span();
        let parent = span.span_context();
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_state().get("vendor"), Some("a"));
        headers.insert("tracestate", format!("vendor={}", "x".repeat(600)).parse().unwrap());
        let cx = caller(&headers).expect("the traceparent stands without its tracestate");
        assert_eq!(cx.span().span_context().trace_state().header(), "", "a tracestate over 512 characters is dropped");
        for bad in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01", "junk"] {
            headers.insert("traceparent", bad.parse().unwrap());
            assert!(caller(&headers).is_none(), "{bad} is no trace");
        }
    }

    #[test]
    fn an_untraced_request_sends_on_a_trace_marked_unsampled() {
        let _serial = exclusive();
        let mut headers = HeaderMap::new();
        carry(&mut headers);
        assert!(headers.is_empty(), "nothing is written while no spans are exported");
        let _on = Propagating::on();
        carry(&mut headers);
        let sent = headers.get("traceparent").expect("a traceparent").to_str().unwrap().to_owned();
        assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
        assert_ne!(&sent[3..35], "00000000000000000000000000000000");
    }

    #[test]
    fn otel_propagators_can_leave_trace_context_out() {
        let _serial = exclusive();
        let wanted = |value: &str| {
            configure(true, &env(&[("OTEL_PROPAGATORS", value)]));
            let _off = Propagating;
            PROPAGATING.load(Ordering::Relaxed)
        };
        assert!(wanted(""), "unset or empty: the default, tracecontext and baggage");
        assert!(wanted("baggage, TraceContext"));
        assert!(!wanted("none"));
        assert!(!wanted("b3"));
    }
}
