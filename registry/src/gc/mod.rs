//! Online garbage collection with retention rules. A collection:
//! 1. takes the storage's collector lock (one collector across replicas);
//! 2. passes over every repository under its lock: the retention rules and the
//!    protected references decide which tags and manifests go (`plan.rs`), and
//!    links to blobs no remaining manifest references go once older than the
//!    grace period;
//! 3. deletes stored blobs that no repository links or references any more and
//!    that are older than the grace period;
//! 4. reports what it did and what the storage now holds.
//!
//! If a repository cannot be passed over (its lock stays taken, a read fails),
//! step 3 is skipped: what that repository references is unknown.

mod evict;
pub mod exchange;
mod plan;
mod protected;
pub mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use evict::Eviction;
pub use plan::{Decision, Inputs, Protected, References, decide};
pub use protected::ProtectedSet;

use crate::config::{CollectorConfig, ManifestsConfig, MirrorConfig, RetentionConfig, mirror_for};
use crate::digest::Digest;
use crate::manifest::Policy;
use crate::names::RepoName;
use crate::report::{Collection, Report, Usage};
use crate::storage::lifecycle::{Planner, RepoSnapshot};
use crate::storage::{Error, Storage};

/// What a collection found stored afterwards, per repository included.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub usage: Usage,
    /// Bytes each repository holds: every blob it links (manifests count in
    /// the total only, as the quota book counts them).
    pub repositories: BTreeMap<String, u64>,
}

pub struct Collector {
    storage: Arc<dyn Storage>,
    gc: CollectorConfig,
    retention: RetentionConfig,
    /// Every manifest handler on: stored manifests are read whatever the
    /// configuration accepts for new pushes now.
    parser: Policy,
    /// Mirrors whose byte cap the collector keeps.
    mirrors: Vec<MirrorConfig>,
}

/// How one run goes: a full collection, or only counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Collect {
        dry_run: bool,
    },
    /// Deletes nothing and applies no rule: the usage figures at start.
    Count,
}

impl Collector {
    pub fn new(storage: Arc<dyn Storage>, gc: CollectorConfig, retention: RetentionConfig) -> Collector {
        let mut all = ManifestsConfig::default();
        all.docker.schema1 = true;
        let parser = Policy::new(&all).expect("the default manifest configuration is valid");
        Collector { storage, gc, retention, parser, mirrors: Vec::new() }
    }

    /// Keeps the caps of `mirrors` too.
    pub fn with_mirrors(self, mirrors: &[MirrorConfig]) -> Collector {
        Collector { mirrors: mirrors.iter().filter(|m| m.max_bytes.is_some()).cloned().collect(), ..self }
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.gc
    }

    fn references(&self, snap: &RepoSnapshot, i: usize) -> Option<References> {
        let m = &snap.manifests[i];
        let parsed = self.parser.parse(Some(&m.media_type), m.bytes.as_ref()?).ok()?;
        Some(References {
            blobs: parsed.blobs.into_iter().chain(parsed.foreign_blobs).collect(),
            children: parsed.manifests.into_iter().map(|c| c.digest).collect(),
            subject: parsed.subject,
        })
    }

    fn planner(
        self: &Arc<Self>,
        mode: Mode,
        protected: Arc<ProtectedSet>,
        evictions: Arc<HashMap<String, Eviction>>,
        now: SystemTime,
        cutoff: SystemTime,
    ) -> Planner {
        let me = self.clone();
        Arc::new(move |repo: &RepoName, snap: &RepoSnapshot| {
            let rule = match mode {
                Mode::Collect { .. } => me.retention.rule_for(repo.as_str()),
                Mode::Count => None,
            };
            let protected = protected.for_repo(repo);
            let evict = evictions.get(repo.as_str());
            let inputs = Inputs { rule, rule_dry_run: me.retention.dry_run, protected: &protected, now, cutoff, evict };
            let decision = decide(snap, |i| me.references(snap, i), &inputs);
            log_decision(repo, &decision, mode);
            decision.plan
        })
    }

    /// Runs one collection (or count). `None` when another collector holds the lock.
    pub async fn run(
        self: &Arc<Self>,
        mode: Mode,
        request: Option<String>,
        protected: ProtectedSet,
    ) -> Result<Option<(Collection, Tally)>, Error> {
        let Some(_lock) = self.storage.collector_lock().await? else {
            return Ok(None);
        };
        let (started, clock) = (SystemTime::now(), Instant::now());
        let dry_run = match mode {
            Mode::Collect { dry_run } => dry_run || self.gc.dry_run,
            Mode::Count => true,
        };
        // Times in the storage are stamped by its clock, not ours.
        let now = self.storage.clock().await?;
        let cutoff = now.checked_sub(self.gc.grace_period.0).unwrap_or(SystemTime::UNIX_EPOCH);
        let evictions = match mode {
            Mode::Collect { .. } => self.evictions(&protected, cutoff).await?,
            Mode::Count => HashMap::new(),
        };
        let planner = self.planner(mode, Arc::new(protected), Arc::new(evictions), now, cutoff);
        let mut run = Run::default();
        for repo in self.storage.collectable_repositories().await? {
            match self.storage.collect_repository(&repo, planner.clone(), cutoff, dry_run).await {
                Ok(outcome) => run.add(&repo, outcome),
                // The other repositories still get their pass; only the sweep,
                // which needs to know every reference, is skipped.
                Err(e) => {
                    tracing::warn!(target: "gc", repository = %repo, error = %e, "skipping the blob sweep");
                    run.error.get_or_insert_with(|| format!("repository {repo}: {e}"));
                }
            }
        }
        let stored = self.storage.stored_blobs().await?;
        let candidates: Vec<Digest> = match run.error {
            Some(_) => Vec::new(),
            None => stored
                .iter()
                .filter(|b| !run.keep.contains(&b.digest) && b.modified < cutoff)
                .map(|b| b.digest.clone())
                .collect(),
        };
        let sizes: HashMap<&Digest, u64> = stored.iter().map(|b| (&b.digest, b.size)).collect();
        let deleted: Vec<(Digest, u64)> = if dry_run {
            candidates.iter().map(|d| (d.clone(), sizes.get(d).copied().unwrap_or(0))).collect()
        } else {
            self.storage.sweep_blobs(candidates, cutoff).await?
        };
        let (swept, freed) = (deleted.len() as u64, deleted.iter().map(|(_, size)| size).sum());
        let gone: HashSet<&Digest> = deleted.iter().map(|(d, _)| d).collect();
        let tally = run.tally(&sizes, &gone, self.storage.volume().await);
        let finished = SystemTime::now();
        let collection = Collection {
            request,
            started: humantime::format_rfc3339_seconds(started).to_string(),
            finished: humantime::format_rfc3339_seconds(finished).to_string(),
            duration_ms: clock.elapsed().as_millis() as u64,
            dry_run,
            blobs_deleted: swept,
            manifests_deleted: run.manifests_deleted,
            tags_deleted: run.tags_deleted,
            bytes_freed: freed,
            protected_kept: run.protected_kept,
            error: run.error,
        };
        Ok(Some((collection, tally)))
    }

    /// For each mirror over its cap: the least recently used images to evict.
    /// A repository that cannot be read is left out (its images are neither
    /// counted nor chosen), so a partial view evicts less, never more.
    async fn evictions(
        self: &Arc<Self>,
        protected: &ProtectedSet,
        cutoff: SystemTime,
    ) -> Result<HashMap<String, Eviction>, Error> {
        let mut out = HashMap::new();
        if self.mirrors.is_empty() {
            return Ok(out);
        }
        let repos = self.storage.collectable_repositories().await?;
        let sizes: HashMap<Digest, u64> =
            self.storage.stored_blobs().await?.into_iter().map(|b| (b.digest, b.size)).collect();
        for mirror in &self.mirrors {
            let cap = mirror.max_bytes.unwrap_or(u64::MAX);
            let mut images = Vec::new();
            for repo in repos.iter().filter(|r| mirror_for(std::slice::from_ref(mirror), r.as_str()).is_some()) {
                match self.images(repo, protected, cutoff).await {
                    Ok(found) => images.extend(found),
                    Err(e) => {
                        tracing::warn!(target: "gc", repository = %repo, error = %e, "not counted for the mirror's cap")
                    }
                }
            }
            let (chosen, freed) = evict::choose(images, &sizes, cap);
            for (repo, e) in &chosen {
                tracing::info!(target: "gc", mirror = %mirror.prefix, repository = %repo, tags = ?e.tags,
                    manifests = e.digests.len(), "evicting least recently used images over the mirror's cap");
            }
            if !chosen.is_empty() {
                tracing::info!(target: "gc", mirror = %mirror.prefix, cap, freed, "mirror over its cap");
            }
            out.extend(chosen);
        }
        Ok(out)
    }

    /// A repository's images, read under its lock without changing anything.
    async fn images(
        self: &Arc<Self>,
        repo: &RepoName,
        protected: &ProtectedSet,
        cutoff: SystemTime,
    ) -> Result<Vec<evict::Image>, Error> {
        let found = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (me, sink, guarded) = (self.clone(), found.clone(), protected.for_repo(repo));
        let planner: Planner = Arc::new(move |repo: &RepoName, snap: &RepoSnapshot| {
            let images = evict::images(repo.as_str(), snap, |i| me.references(snap, i), &guarded, cutoff);
            sink.lock().unwrap().extend(images);
            Default::default()
        });
        self.storage.collect_repository(repo, planner, cutoff, true).await?;
        let images = std::mem::take(&mut *found.lock().unwrap());
        Ok(images)
    }

    /// Saves `report` where every process sharing the storage finds it.
    pub async fn save(&self, report: &Report) -> Result<(), Error> {
        let json = serde_json::to_vec(report).map_err(|e| Error::Task(e.to_string()))?;
        self.storage.save_report(Bytes::from(json)).await
    }

    pub async fn load(&self) -> Option<Report> {
        let bytes = self.storage.load_report().await.ok().flatten()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn log_decision(repo: &RepoName, decision: &Decision, mode: Mode) {
    if mode == Mode::Count {
        return;
    }
    for tag in &decision.plan.tags {
        tracing::info!(target: "gc", repository = %repo, tag, "deleting tag");
    }
    for digest in &decision.plan.manifests {
        tracing::info!(target: "gc", repository = %repo, %digest, "deleting manifest");
    }
    let (tags, manifests) = &decision.would_delete;
    for tag in tags {
        tracing::info!(target: "gc", repository = %repo, tag, "retention dry run: would delete tag");
    }
    for digest in manifests {
        tracing::info!(target: "gc", repository = %repo, %digest, "retention dry run: would delete manifest");
    }
}

/// What the repository passes add up to.
#[derive(Default)]
struct Run {
    keep: HashSet<Digest>,
    /// Per repository: what it still holds.
    held: BTreeMap<String, Vec<Digest>>,
    /// Manifest records (one per repository holding it), and their distinct contents.
    manifests: u64,
    manifest_contents: HashSet<Digest>,
    manifests_deleted: u64,
    tags_deleted: u64,
    protected_kept: u64,
    error: Option<String>,
}

impl Run {
    fn add(&mut self, repo: &RepoName, outcome: crate::storage::lifecycle::RepoOutcome) {
        let plan = outcome.plan;
        self.manifests_deleted += plan.manifests.len() as u64;
        self.tags_deleted += plan.tags.len() as u64;
        self.protected_kept += plan.protected_kept;
        self.manifests += plan.kept_manifests.len() as u64;
        self.manifest_contents.extend(plan.kept_manifests.iter().cloned());
        // What the repository still holds: what the plan keeps, and the links
        // it could not remove this time.
        let mut held = plan.keep;
        held.extend(outcome.links_left);
        self.keep.extend(held.iter().cloned());
        if !held.is_empty() {
            self.held.insert(repo.as_str().to_owned(), held);
        }
    }

    fn tally(&self, sizes: &HashMap<&Digest, u64>, gone: &HashSet<&Digest>, volume: Option<(u64, u64)>) -> Tally {
        let remaining = sizes.iter().filter(|(d, _)| !gone.contains(*d));
        let (blobs, bytes) = remaining
            .fold((0u64, 0u64), |(n, b), (d, size)| (n + u64::from(!self.manifest_contents.contains(*d)), b + size));
        let repositories: BTreeMap<String, u64> = self
            .held
            .iter()
            .map(|(repo, digests)| {
                let blobs = digests.iter().filter(|d| !self.manifest_contents.contains(*d));
                (repo.clone(), blobs.filter_map(|d| sizes.get(d)).sum())
            })
            .collect();
        let usage = Usage {
            bytes,
            blobs,
            manifests: self.manifests,
            repositories: repositories.len() as u64,
            volume_bytes: volume.map(|v| v.0),
            volume_available_bytes: volume.map(|v| v.1),
        };
        Tally { usage, repositories }
    }
}

/// One collection from the command line: the configured rules and protected
/// file, the report saved where the serving processes find it and returned as JSON.
pub async fn collect_once(config: &crate::config::Config, dry_run: bool) -> Result<Option<String>, String> {
    schedule::lowest_priority();
    let storage = crate::server::open_backend(config).await?;
    let collector = Arc::new(Collector::new(storage, config.gc.clone(), config.retention.clone()));
    let protected = ProtectedSet::from_config(&config.gc).await?;
    let Some((collection, tally)) =
        collector.run(Mode::Collect { dry_run }, None, protected).await.map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let report = Report { usage: tally.usage, last_collection: Some(collection) };
    collector.save(&report).await.map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&report).map(Some).map_err(|e| e.to_string())
}
