//! Head sampling: whether a request is traced is decided before any of its
//! spans exists, so a request left out costs nothing. The SDK's own sampler
//! would decide only when a span ends, after every span had been built: at
//! tens of thousands of requests a second that alone costs a sixth of the
//! throughput.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, TraceId};

use super::{Env, TelemetryError};

/// The share of new traces started, as `f64` bits: 1.0 until set up.
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);
/// Whether a request inside a caller's trace follows the caller's choice.
static PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// How requests are sampled, from `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, PartialEq)]
pub(super) struct Sampling {
    /// The share of new traces started (a missing or invalid ratio is 1.0,
    /// as the specification says).
    ratio: f64,
    /// Whether a request in a caller's trace follows the caller's choice.
    parent_based: bool,
}

impl Sampling {
    /// Reads the standard variables; an unknown sampler is an error.
    pub(super) fn from_env(var: Env) -> Result<Sampling, TelemetryError> {
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

    /// Makes this the process's sampling.
    pub(super) fn install(&self) {
        RATIO.store(self.ratio.to_bits(), Ordering::Relaxed);
        PARENT_BASED.store(self.parent_based, Ordering::Relaxed);
    }
}

/// Whether to trace the request starting now: as its caller chose under a
/// `parentbased_` sampler, otherwise at the configured ratio (of the caller's
/// trace id when there is one, so that services sampling alike agree).
pub fn sampled(caller: Option<&Context>) -> bool {
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    let Some(caller) = caller else {
        return ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio);
    };
    let span = caller.span();
    let parent = span.span_context();
    if PARENT_BASED.load(Ordering::Relaxed) { parent.is_sampled() } else { within(parent.trace_id(), ratio) }
}

/// The specification's `TraceIdRatioBased` test: the trace id's lower 63
/// bits below `ratio` of their range.
fn within(trace: TraceId, ratio: f64) -> bool {
    let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().expect("8 bytes")) >> 1;
    ratio >= 1.0 || (low as f64) < ratio * (1u64 << 63) as f64
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    fn ratio(pairs: &[(&str, &str)]) -> (f64, bool) {
        let s = Sampling::from_env(&env(pairs)).unwrap();
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
        let unknown = Sampling::from_env(&env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]));
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
}
