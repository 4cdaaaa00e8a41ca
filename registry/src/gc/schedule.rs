//! When collections run: every `gc.interval` after the last one (whichever
//! process ran it: the report is kept in the storage), and on demand when the
//! requests' `collect` value changes. The first pass only counts, so usage is
//! known from the start.
//!
//! Retention may delete tags and manifests, so a collection never runs without
//! knowing what is protected: if the protected references cannot be read (the
//! file or the API server is unavailable), the collection waits.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Collector, Mode, ProtectedSet, Tally};
use crate::report::{Collection, Report, Usage};

/// How often requests are looked at (and a due collection noticed).
const POLL: Duration = Duration::from_secs(5);
/// How often changed usage is published between collections.
const USAGE_EVERY: Duration = Duration::from_secs(30);

/// Where protected references and on-demand requests come from, and where
/// reports go, beyond the storage (under the operator: two ConfigMaps).
#[async_trait]
pub trait Requests: Send + Sync {
    /// The protected references and the current `collect` value; an error
    /// when they cannot be known.
    async fn fetch(&self) -> Result<(ProtectedSet, Option<String>), String>;
    async fn publish(&self, report: &Report) -> Result<(), String>;
}

/// What the rest of the registry learns from collections and reports between them.
pub struct Hooks {
    /// Exact figures after a pass (the quota book takes them).
    pub on_tally: Box<dyn Fn(&Tally) + Send + Sync>,
    /// Usage as kept up to date between passes, if anyone keeps it.
    pub usage: Box<dyn Fn() -> Option<Usage> + Send + Sync>,
    /// A collection finished (`Some`), or failed before it could report.
    pub collected: Box<Collected>,
}

/// Told of each collection: `Some` when it finished, `None` when it failed.
pub type Collected = dyn Fn(Option<&Collection>) + Send + Sync;

impl Hooks {
    /// The quota book takes each pass's figures and answers for usage between them.
    pub fn from_book(book: Arc<crate::storage::UsageBook>) -> Hooks {
        let reader = book.clone();
        Hooks {
            on_tally: Box::new(move |tally: &Tally| {
                book.replace(crate::storage::Scan {
                    bytes: tally.usage.bytes,
                    blobs: tally.usage.blobs,
                    manifests: tally.usage.manifests,
                    repositories: tally.repositories.clone(),
                })
            }),
            usage: Box::new(move || reader.scanned().then(|| reader.usage())),
            collected: Box::new(|_| {}),
        }
    }
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks { on_tally: Box::new(|_| {}), usage: Box::new(|| None), collected: Box::new(|_| {}) }
    }
}

pub struct Scheduler {
    pub collector: Arc<Collector>,
    pub requests: Option<Arc<dyn Requests>>,
    pub hooks: Hooks,
}

/// Runs `scheduler` on a thread of its own at the lowest CPU priority, with
/// its own runtime, so a collection takes what requests leave of the CPU and
/// none of the request runtime's threads. Threads inherit their creator's
/// priority, so the collector's blocking steps run at it too.
pub fn spawn_idle(scheduler: Scheduler) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("berth-gc-io").build()?;
    std::thread::Builder::new().name("berth-gc".into()).spawn(move || {
        lowest_priority();
        runtime.block_on(scheduler.run());
    })?;
    Ok(())
}

/// Lowers the calling thread's CPU priority to nice 19 (best effort: an
/// unprivileged process may always lower its own priority).
pub fn lowest_priority() {
    // SAFETY: plain syscalls on the calling thread; no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// When the last collection of `report` finished.
fn finished(report: &Report) -> Option<SystemTime> {
    humantime::parse_rfc3339(&report.last_collection.as_ref()?.finished).ok()
}

impl Scheduler {
    /// The protected references: the configured file's and the requests'.
    async fn protected(&self, fetched: Option<ProtectedSet>) -> Result<ProtectedSet, String> {
        let mut set = fetched.unwrap_or_default();
        set.merge(ProtectedSet::from_config(self.collector.config()).await?);
        if !set.invalid.is_empty() {
            tracing::warn!(target: "gc", invalid = ?set.invalid, "ignoring protected lines that are not image references");
        }
        Ok(set)
    }

    /// Runs one pass and records it; `false` when another collector was running.
    async fn pass(&self, mode: Mode, request: Option<String>, protected: ProtectedSet) -> bool {
        let previous = self.collector.load().await.unwrap_or_default();
        match self.collector.run(mode, request, protected).await {
            Ok(Some((collection, tally))) => {
                (self.hooks.on_tally)(&tally);
                let last_collection = match mode {
                    Mode::Count => previous.last_collection,
                    Mode::Collect { .. } => {
                        tracing::info!(target: "gc", report = ?collection, "collection finished");
                        (self.hooks.collected)(Some(&collection));
                        Some(collection)
                    }
                };
                let report = Report { usage: tally.usage, last_collection };
                if let Err(e) = self.collector.save(&report).await {
                    tracing::warn!(target: "gc", error = %e, "saving the collection report failed");
                }
                self.publish(&report).await;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(target: "gc", error = %e, "collection failed");
                if matches!(mode, Mode::Collect { .. }) {
                    (self.hooks.collected)(None);
                }
                true
            }
        }
    }

    async fn publish(&self, report: &Report) {
        if let Some(requests) = &self.requests
            && let Err(e) = requests.publish(report).await
        {
            tracing::warn!(target: "gc", error = %e, "publishing the report failed");
        }
    }

    pub async fn run(self) {
        while !self.pass(Mode::Count, None, ProtectedSet::default()).await {
            tokio::time::sleep(POLL).await;
        }
        // With no collection on record, the interval counts from now.
        let since = SystemTime::now();
        let mut published_usage: Option<Usage> = None;
        let mut usage_clock = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            let report = self.collector.load().await.unwrap_or_default();
            let fetched = match &self.requests {
                Some(r) => match r.fetch().await {
                    Ok(got) => Some(got),
                    Err(e) => {
                        tracing::warn!(target: "gc", error = %e, "reading collection requests failed; collecting later");
                        continue;
                    }
                },
                None => None,
            };
            let (protected, requested) = fetched.map_or((None, None), |(p, c)| (Some(p), c));
            let handled = report.last_collection.as_ref().and_then(|c| c.request.clone());
            let on_demand = requested.filter(|r| !r.is_empty() && Some(r) != handled.as_ref());
            let last = finished(&report).unwrap_or(since);
            let due = self
                .collector
                .config()
                .interval
                .is_some_and(|every| SystemTime::now().duration_since(last).is_ok_and(|age| age >= every.0));
            if on_demand.is_some() || due {
                match self.protected(protected).await {
                    Ok(set) => {
                        self.pass(Mode::Collect { dry_run: false }, on_demand, set).await;
                    }
                    Err(e) => {
                        tracing::warn!(target: "gc", error = %e, "protected references unknown; collecting later")
                    }
                }
                continue;
            }
            if usage_clock.elapsed() >= USAGE_EVERY {
                usage_clock = tokio::time::Instant::now();
                if let Some(mut usage) = (self.hooks.usage)() {
                    let volume = self.collector.storage.volume().await;
                    (usage.volume_bytes, usage.volume_available_bytes) = (volume.map(|v| v.0), volume.map(|v| v.1));
                    if published_usage.as_ref() != Some(&usage) {
                        self.publish(&Report { usage: usage.clone(), last_collection: report.last_collection }).await;
                        published_usage = Some(usage);
                    }
                }
            }
        }
    }
}
