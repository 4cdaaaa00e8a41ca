//! Readiness that means something: a background probe writes, reads and
//! deletes a small object in the storage every few seconds, and `/readyz`
//! answers from its last result. Requests never wait for a probe; a probe
//! that hangs counts as failed after its timeout.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::metrics::Metrics;
use crate::config::HealthConfig;
use crate::gc::exchange::Exchange;
use crate::report::StorageHealth;
use crate::storage::{Storage, UsageBook};

/// The last answer of the probe.
pub struct Health {
    state: RwLock<StorageHealth>,
}

impl Default for Health {
    fn default() -> Self {
        let state = StorageHealth {
            writable: false,
            message: Some("the storage has not been probed yet".into()),
            since: now(),
            pod: pod(),
        };
        Health { state: RwLock::new(state) }
    }
}

impl Health {
    /// `Err` with the reason while the storage cannot take writes.
    pub fn ready(&self) -> Result<(), String> {
        let state = self.state.read().expect("health lock");
        if state.writable { Ok(()) } else { Err(state.message.clone().unwrap_or_default()) }
    }

    pub fn current(&self) -> StorageHealth {
        self.state.read().expect("health lock").clone()
    }

    /// Takes a probe's outcome; `true` when it changed the answer.
    fn set(&self, outcome: Result<(), String>) -> bool {
        let mut state = self.state.write().expect("health lock");
        let writable = outcome.is_ok();
        let message = outcome.err();
        if state.writable == writable && state.message == message {
            return false;
        }
        *state = StorageHealth { writable, message, since: now(), pod: pod() };
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
}

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

    async fn probe(&self) -> Result<(), String> {
        let limit = Duration::from_secs(self.config.probe_timeout_secs);
        let start = Instant::now();
        let outcome = match tokio::time::timeout(limit, self.storage.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the storage cannot take writes: {e}")),
            Err(_) => Err(format!("the storage probe took longer than {} s", limit.as_secs())),
        };
        self.metrics.probe_duration.observe(start.elapsed().as_secs_f64());
        self.metrics.storage_healthy.set(i64::from(outcome.is_ok()));
        outcome
    }

    fn announce(&self) {
        match self.health.ready() {
            Ok(()) => tracing::info!("the storage takes writes: ready"),
            Err(reason) => tracing::warn!(%reason, "not ready"),
        }
    }

    /// `true` once the operator can see the answer.
    async fn publish(&self) -> bool {
        let Some(exchange) = &self.exchange else { return true };
        match exchange.publish_health(&self.health.current()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "publishing the storage health failed; retrying with the next probe");
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
