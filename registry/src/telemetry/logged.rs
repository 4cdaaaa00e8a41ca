//! Export failures in the log. The exporter says nothing of its own (its
//! internal logs are off), so a collector that refuses berth's certificate,
//! is away or rejects what it gets would otherwise look like a quiet one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// After a failure is logged, the next ones are only counted for this long.
const QUIET: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Logged<E> {
    inner: E,
    /// When a failure was last logged.
    logged: Mutex<Option<Instant>>,
    /// Spans lost since then.
    lost: AtomicU64,
}

impl<E> Logged<E> {
    pub fn new(inner: E) -> Logged<E> {
        Logged { inner, logged: Mutex::new(None), lost: AtomicU64::new(0) }
    }

    /// Counts `spans` lost, and says whether to log it now (the first
    /// failure, then at most one a minute) with the spans lost since the last line.
    fn failed(&self, spans: usize) -> Option<u64> {
        let lost = self.lost.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_some_and(|at| at.elapsed() < QUIET) {
            return None;
        }
        *logged = Some(Instant::now());
        self.lost.fetch_sub(lost, Ordering::Relaxed);
        Some(lost)
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(error) = &result
            && let Some(lost) = self.failed(spans)
        {
            warn(error, lost);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn warn(error: &OTelSdkError, lost: u64) {
    tracing::warn!(
        lost_spans = lost,
        "sending spans to the OTLP collector failed (logged at most once a minute): {error}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_logged_and_the_next_are_counted_until_the_quiet_time_is_over() {
        let logged = Logged::new(());
        assert_eq!(logged.failed(3), Some(3));
        assert_eq!(logged.failed(2), None);
        assert_eq!(logged.failed(5), None);
        // The quiet time over: the spans lost since the last line.
        *logged.logged.lock().unwrap() = Some(Instant::now() - QUIET);
        assert_eq!(logged.failed(1), Some(8));
        assert_eq!(logged.failed(1), None);
    }
}
