//! Readiness that means something: a background probe writes, reads and
//! deletes a small object in the storage every few seconds (a read-only
//! registry only reads), and `/readyz` answers from its last result. Requests
//! never wait for a probe; a probe that hangs counts as failed after its
//! timeout. `/readyz` tells strangers only the kind of failure; the storage's
//! own message goes to the log and, under the operator, to the status.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::metrics::Metrics;
use crate::config::HealthConfig;
use crate::gc::exchange::Exchange;
use crate::report::StorageHealth;
use crate::storage::{Storage, UsageBook};

/// Why a probe failed: a kind fit for anyone's eyes, and the storage's own words.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    fn of(e: &crate::storage::Error) -> Failure {
        use crate::storage::Error;
        let kind = match e {
            Error::StorageFull(_) => "the storage is full",
            Error::Io(io) if io.raw_os_error() == Some(libc::EROFS) => "the storage is read-only",
            Error::Remote(_) => "the object storage failed",
            _ => "the storage failed",
        };
        Failure { kind, detail: e.to_string() }
    }
}

/// The last answer of the probe.
pub struct Health {
    state: RwLock<(StorageHealth, Option<&'static str>)>,
}

impl Default for Health {
    fn default() -> Self {
        let state = StorageHealth {
            writable: false,
            message: Some("the storage has not been probed yet".into()),
            since: now(),
            pod: pod(),
        };
        Health { state: RwLock::new((state, Some("the storage has not been probed yet"))) }
    }
}

impl Health {
    /// `Err` with the kind of failure while the storage fails its probe.
    pub fn ready(&self) -> Result<(), &'static str> {
        match self.state.read().expect("health lock").1 {
            None => Ok(()),
            Some(kind) => Err(kind),
        }
    }

    pub fn current(&self) -> StorageHealth {
        self.state.read().expect("health lock").0.clone()
    }

    /// Takes a probe's outcome; `true` when it changed the answer. A failure
    /// of the same kind is the same answer, whatever its message (an object
    /// store's names its request), so the status is not rewritten every probe.
    fn set(&self, outcome: Result<(), Failure>) -> bool {
        let mut state = self.state.write().expect("health lock");
        let kind = outcome.as_ref().err().map(|f| f.kind);
        if state.1 == kind {
            return false;
        }
        let health = StorageHealth {
            writable: kind.is_none(),
            message: outcome.err().map(|f| f.detail),
            since: now(),
            pod: pod(),
        };
        *state = (health, kind);
        true
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn pod() -> Option<String> {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
}

/// What the probe loop works with.
pub struct Prober {
    pub health: Arc<Health>,
    pub storage: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub book: Arc<UsageBook>,
    /// Under the operator: where the answer is published.
    pub exchange: Option<Arc<Exchange>>,
    pub config: HealthConfig,
    /// A read-only registry takes no writes: its probe only reads.
    pub read_only: bool,
}

/// How long publishing the answer may take: the API server may accept and
/// never answer, and the probe loop must go on.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl Prober {
    /// Probes now and then every interval, for as long as the process runs.
    pub async fn run(self) {
        let mut every = tokio::time::interval(Duration::from_secs(self.config.probe_interval_secs));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unpublished = self.exchange.is_some();
        loop {
            every.tick().await;
            let outcome = self.probe().await;
            if self.health.set(outcome) {
                self.announce();
                unpublished = self.exchange.is_some();
            }
            if unpublished {
                unpublished = !self.publish().await;
            }
            self.refresh_figures().await;
        }
    }

    async fn probe(&self) -> Result<(), Failure> {
        let limit = Duration::from_secs(self.config.probe_timeout_secs);
        let start = Instant::now();
        let probed = async {
            match self.read_only {
                true => self.storage.load_report().await.map(|_| ()),
                false => self.storage.probe().await,
            }
        };
        let outcome = match tokio::time::timeout(limit, probed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::of(&e)),
            Err(_) => {
                let detail = format!("the storage probe took longer than {} s", limit.as_secs());
                Err(Failure { kind: "the storage probe timed out", detail })
            }
        };
        self.metrics.probe_duration.observe(start.elapsed().as_secs_f64());
        self.metrics.storage_healthy.set(i64::from(outcome.is_ok()));
        outcome
    }

    fn announce(&self) {
        let health = self.health.current();
        match &health.message {
            None => tracing::info!("the storage passes its probe: ready"),
            Some(reason) => tracing::warn!(%reason, "the storage fails its probe: not ready"),
        }
    }

    /// `true` once the operator can see the answer.
    async fn publish(&self) -> bool {
        let Some(exchange) = &self.exchange else { return true };
        let published = tokio::time::timeout(PUBLISH_TIMEOUT, exchange.publish_health(&self.health.current())).await;
        match published {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "publishing the storage health failed; retrying with the next probe");
                false
            }
            Err(_) => {
                tracing::warn!("publishing the storage health timed out; retrying with the next probe");
                false
            }
        }
    }

    /// The usage and volume figures, for the metrics.
    async fn refresh_figures(&self) {
        if self.book.scanned() {
            self.metrics.record_usage(&self.book.usage());
        }
        if let Some((size, available)) = self.storage.volume().await {
            self.metrics.record_volume(size, available);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Error;

    #[test]
    fn failures_of_one_kind_are_one_answer_and_strangers_see_only_the_kind() {
        let h = Health::default();
        assert!(h.ready().is_err(), "not ready before the first probe");
        assert!(h.set(Ok(())));
        assert_eq!(h.ready(), Ok(()));
        assert!(!h.set(Ok(())));
        let remote =
            |n: u32| Err(Failure::of(&Error::Remote(format!("request {n} to http://store/b/health/x failed"))));
        assert!(h.set(remote(1)));
        assert!(!h.set(remote(2)), "another request's words are the same answer: nothing to publish");
        assert_eq!(h.ready(), Err("the object storage failed"));
        let current = h.current();
        assert!(!current.writable);
        assert!(current.message.is_some_and(|m| m.contains("request 1")), "the detail goes to the status");
        let read_only = Failure::of(&Error::from(std::io::Error::from_raw_os_error(libc::EROFS)));
        assert_eq!(read_only.kind, "the storage is read-only");
        let full = Failure::of(&Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert_eq!(full.kind, "the storage is full");
        assert!(h.set(Err(full)));
        assert_eq!(h.ready(), Err("the storage is full"));
    }
}
