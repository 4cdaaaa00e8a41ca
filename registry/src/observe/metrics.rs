//! The registry's Prometheus metrics. Every label has a fixed, small set of
//! values (routes, methods, status classes, operation names): never a
//! repository, tag or digest, so the number of series stays bounded however
//! much is pushed. Components that count on their own (the credential cache,
//! the upload slots) are given clones of their
//! counters, which share the values registered here.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::series::Indexed;
use crate::report::{Collection, Usage};

/// Request latencies, from a cached manifest (well under a millisecond) to a
/// large blob (minutes).
const REQUEST_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
/// Storage operations and the health probe.
const STORAGE_BUCKETS: [f64; 12] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The API resource a request was for, from its path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Route {
    // The order numbers the series (`Indexed`); `other` stays last.
    base,
    catalog,
    tags,
    manifest,
    blob,
    upload,
    referrers,
    health,
    metrics,
    other,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Method {
    // OTHER stays last (`Method::COUNT`).
    GET,
    HEAD,
    PUT,
    POST,
    PATCH,
    DELETE,
    OTHER,
}

// Each enum's last variant numbers its size: a variant goes before it.
impl Route {
    pub const COUNT: usize = Route::other as usize + 1;
}

impl Method {
    pub const COUNT: usize = Method::OTHER as usize + 1;
}

impl StatusClass {
    pub const COUNT: usize = StatusClass::ServerError as usize + 1;
}

impl RequestLabels {
    /// The series' number among all label sets.
    pub fn index(&self) -> usize {
        let (route, method, status) = (self.route as usize, self.method as usize, self.status as usize);
        (route * Method::COUNT + method) * StatusClass::COUNT + status
    }
}

impl LatencyLabels {
    pub fn index(&self) -> usize {
        self.route as usize * Method::COUNT + self.method as usize
    }
}

/// The storage operations (the storage layer's methods) by name.
macro_rules! operations {
    ($($name:ident)*) => {
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
        #[allow(non_camel_case_types)]
        pub enum Operation {
            $($name),*
        }

        impl Operation {
            pub const COUNT: usize = [$(Operation::$name),*].len();

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Operation::$name => stringify!($name)),*
                }
            }
        }
    };
}

operations!(
    blob_delete blob_mount blob_put blob_read blob_size blob_stored blob_url manifest_delete manifest_exists
    manifest_get manifest_put purge referrers repositories tag_delete tag_get tag_manifest tags upload_append
    upload_cancel upload_finish upload_offset upload_start
);

impl From<&axum::http::Method> for Method {
    fn from(m: &axum::http::Method) -> Method {
        match *m {
            axum::http::Method::GET => Method::GET,
            axum::http::Method::HEAD => Method::HEAD,
            axum::http::Method::PUT => Method::PUT,
            axum::http::Method::POST => Method::POST,
            axum::http::Method::PATCH => Method::PATCH,
            axum::http::Method::DELETE => Method::DELETE,
            _ => Method::OTHER,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    // ServerError stays last (`StatusClass::COUNT`).
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        })
    }
}

impl From<axum::http::StatusCode> for StatusClass {
    fn from(s: axum::http::StatusCode) -> StatusClass {
        match s.as_u16() {
            ..200 => StatusClass::Informational,
            200..300 => StatusClass::Success,
            300..400 => StatusClass::Redirection,
            400..500 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Route,
    pub method: Method,
    pub status: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub route: Route,
    pub method: Method,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: Operation,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Decision {
    allowed,
    denied,
    unauthenticated,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: Decision,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A mirror (its prefix, from the configuration), what was asked for
/// (`manifest`, `blob`) and how it was answered: `hit` from storage, `miss`
/// fetched, `linked` (a blob already stored for another repository, linked once
/// the upstream confirmed this one has it), `revalidated` (a tag confirmed upstream), `stale` (served cached
/// while the upstream failed), `coalesced` (joined a fetch in progress), `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: String,
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorBytesLabels {
    pub mirror: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn storage_histogram() -> Histogram {
    Histogram::new(STORAGE_BUCKETS)
}

pub struct Metrics {
    pub requests: Indexed<RequestLabels, Counter>,
    pub duration: Indexed<LatencyLabels, Histogram>,
    pub received: Indexed<RouteLabels, Counter>,
    pub sent: Indexed<RouteLabels, Counter>,
    pub in_flight: Gauge,
    pub connections: Gauge,
    pub storage_operations: Arc<Indexed<OperationLabels, Histogram>>,
    pub access: Family<DecisionLabels, Counter>,
    /// Credential and decision cache lookups, by `hit` or `miss`.
    pub auth_cache: Family<ResultLabels, Counter>,
    /// Request bodies being received into uploads.
    pub uploads_in_flight: Gauge,
    pub storage_healthy: Gauge,
    pub probe_duration: Histogram,
    usage: [Gauge; 4],
    volume: [Gauge; 2],
    gc_runs: Family<ResultLabels, Counter>,
    gc_freed: Counter,
    gc_deleted: Family<KindLabels, Counter>,
    gc_last_run: Gauge,
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_upstream_bytes: Family<MirrorBytesLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    /// The metrics of one server. `volume` registers the volume figures, which
    /// exist only on a filesystem.
    pub fn new(volume: bool) -> Metrics {
        let mut r = Registry::with_prefix("berth_registry");
        let m = Metrics {
            requests: Indexed::new(Family::default(), Route::COUNT * Method::COUNT * StatusClass::COUNT),
            duration: Indexed::new(Family::new_with_constructor(latency_histogram), Route::COUNT * Method::COUNT),
            received: Indexed::new(Family::default(), Route::COUNT),
            sent: Indexed::new(Family::default(), Route::COUNT),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            storage_operations: Arc::new(Indexed::new(
                Family::new_with_constructor(storage_histogram),
                Operation::COUNT,
            )),
            access: Family::default(),
            auth_cache: Family::default(),
            uploads_in_flight: Gauge::default(),
            storage_healthy: Gauge::default(),
            probe_duration: storage_histogram(),
            usage: Default::default(),
            volume: Default::default(),
            gc_runs: Family::default(),
            gc_freed: Counter::default(),
            gc_deleted: Family::default(),
            gc_last_run: Gauge::default(),
            mirror_requests: Family::default(),
            mirror_upstream_bytes: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method and status class",
            m.requests.family().clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from request to the last byte of the response",
            m.duration.family().clone(),
        );
        r.register("http_received_bytes", "Request body bytes received", m.received.family().clone());
        r.register("http_sent_bytes", "Response body bytes sent", m.sent.family().clone());
        r.register("http_requests_in_flight", "Requests being handled", m.in_flight.clone());
        r.register("connections_open", "Client connections open", m.connections.clone());
        r.register("uploads_in_flight", "Upload bodies being received", m.uploads_in_flight.clone());
        r.register(
            "storage_operation_duration_seconds",
            "Time of storage operations, by operation",
            m.storage_operations.family().clone(),
        );
        r.register("access_decisions", "Access checks, by decision", m.access.clone());
        r.register("auth_cache", "Credential and decision cache lookups, by result", m.auth_cache.clone());
        r.register(
            "storage_healthy",
            "1 while the storage probe can write, read and delete",
            m.storage_healthy.clone(),
        );
        r.register("storage_probe_duration_seconds", "Time of the storage probe", m.probe_duration.clone());
        let usage = ["bytes", "blobs", "manifests", "repositories"];
        for (name, gauge) in usage.iter().zip(&m.usage) {
            r.register(format!("storage_{name}"), format!("Stored {name}, as last counted"), gauge.clone());
        }
        if volume {
            r.register("volume_bytes", "Size of the storage volume", m.volume[0].clone());
            r.register("volume_available_bytes", "Bytes still free on the storage volume", m.volume[1].clone());
        }
        r.register("gc_runs", "Garbage collections, by result", m.gc_runs.clone());
        r.register("gc_freed_bytes", "Bytes freed by garbage collection", m.gc_freed.clone());
        r.register("gc_deleted", "Objects deleted by garbage collection, by kind", m.gc_deleted.clone());
        r.register("gc_last_run_timestamp_seconds", "When the last collection finished", m.gc_last_run.clone());
        r.register("mirror_requests", "Pulls through mirrors, by mirror, kind and result", m.mirror_requests.clone());
        r.register(
            "mirror_upstream_bytes",
            "Bytes mirrors fetched from their upstreams",
            m.mirror_upstream_bytes.clone(),
        );
        m.zero_known_series();
        let info = Family::<VersionLabels, Gauge>::default();
        info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        r.register("build_info", "The running version", info);
        Metrics { registry: r, ..m }
    }

    /// Series with a known, small set of labels exist from the start at zero,
    /// so `rate()` and alerts see their first increase.
    fn zero_known_series(&self) {
        for decision in [Decision::allowed, Decision::denied, Decision::unauthenticated] {
            drop(self.access.get_or_create(&DecisionLabels { decision }));
        }
        for result in ["hit", "miss"] {
            drop(self.auth_cache.get_or_create(&ResultLabels { result }));
        }
        for result in ["ok", "error"] {
            drop(self.gc_runs.get_or_create(&ResultLabels { result }));
        }
        for kind in ["blob", "manifest", "tag"] {
            drop(self.gc_deleted.get_or_create(&KindLabels { kind }));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn record_usage(&self, usage: &Usage) {
        let figures = [usage.bytes, usage.blobs, usage.manifests, usage.repositories];
        for (gauge, v) in self.usage.iter().zip(figures) {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    pub fn record_volume(&self, size: u64, available: u64) {
        self.volume[0].set(i64::try_from(size).unwrap_or(i64::MAX));
        self.volume[1].set(i64::try_from(available).unwrap_or(i64::MAX));
    }

    /// A finished collection (dry runs delete nothing and count as runs only).
    pub fn record_collection(&self, c: &Collection) {
        let result = if c.error.is_some() { "error" } else { "ok" };
        self.gc_runs.get_or_create(&ResultLabels { result }).inc();
        if !c.dry_run {
            self.gc_freed.inc_by(c.bytes_freed);
            for (kind, n) in [("blob", c.blobs_deleted), ("manifest", c.manifests_deleted), ("tag", c.tags_deleted)] {
                self.gc_deleted.get_or_create(&KindLabels { kind }).inc_by(n);
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.gc_last_run.set(now.as_secs() as i64);
    }

    /// A collection that failed before it could report.
    pub fn record_failed_collection(&self) {
        self.gc_runs.get_or_create(&ResultLabels { result: "error" }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(m: &Metrics, series: &str) -> Option<f64> {
        m.encode().lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_request_label_set_has_a_number_of_its_own_within_the_handles() {
        use std::collections::HashSet;
        let routes = [
            Route::base,
            Route::catalog,
            Route::tags,
            Route::manifest,
            Route::blob,
            Route::upload,
            Route::referrers,
            Route::health,
            Route::metrics,
            Route::other,
        ];
        let methods =
            [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH, Method::DELETE, Method::OTHER];
        let statuses = [
            StatusClass::Informational,
            StatusClass::Success,
            StatusClass::Redirection,
            StatusClass::ClientError,
            StatusClass::ServerError,
        ];
        assert_eq!((routes.len(), methods.len(), statuses.len()), (Route::COUNT, Method::COUNT, StatusClass::COUNT));
        let mut requests = HashSet::new();
        let mut latencies = HashSet::new();
        for route in routes {
            for method in methods {
                latencies.insert(LatencyLabels { route, method }.index());
                for status in statuses {
                    requests.insert(RequestLabels { route, method, status }.index());
                }
            }
        }
        assert_eq!(requests.len(), Route::COUNT * Method::COUNT * StatusClass::COUNT);
        assert!(requests.iter().all(|&i| i < requests.len()));
        assert_eq!(latencies.len(), Route::COUNT * Method::COUNT);
        assert!(latencies.iter().all(|&i| i < latencies.len()));
        assert_eq!(Operation::COUNT, 23);
        assert_eq!(Operation::upload_start.as_str(), "upload_start");
    }

    #[test]
    fn collections_count_runs_freed_bytes_and_deletions_but_dry_runs_free_nothing() {
        let m = Metrics::new(false);
        assert_eq!(sample(&m, "berth_registry_gc_runs_total{result=\"ok\"}"), Some(0.0), "known series start at 0");
        let run = Collection {
            bytes_freed: 300,
            blobs_deleted: 2,
            manifests_deleted: 1,
            tags_deleted: 4,
            ..Default::default()
        };
        m.record_collection(&run);
        m.record_collection(&Collection { dry_run: true, ..run.clone() });
        m.record_collection(&Collection { error: Some("stopped".into()), ..Default::default() });
        m.record_failed_collection();
        assert_eq!(sample(&m, "berth_registry_gc_runs_total{result=\"ok\"}"), Some(2.0));
        assert_eq!(sample(&m, "berth_registry_gc_runs_total{result=\"error\"}"), Some(2.0));
        assert_eq!(sample(&m, "berth_registry_gc_freed_bytes_total"), Some(300.0));
        assert_eq!(sample(&m, "berth_registry_gc_deleted_total{kind=\"tag\"}"), Some(4.0));
        assert_eq!(sample(&m, "berth_registry_gc_deleted_total{kind=\"blob\"}"), Some(2.0));
        assert!(sample(&m, "berth_registry_gc_last_run_timestamp_seconds").unwrap() > 1.7e9);
        assert_eq!(sample(&m, "berth_registry_volume_bytes"), None, "no volume on object storage");
    }

    #[test]
    fn usage_and_volume_figures_become_gauges() {
        let m = Metrics::new(true);
        m.record_usage(&Usage { bytes: 10, blobs: 2, manifests: 1, repositories: 1, ..Default::default() });
        m.record_volume(1000, 400);
        assert_eq!(sample(&m, "berth_registry_storage_bytes"), Some(10.0));
        assert_eq!(sample(&m, "berth_registry_storage_blobs"), Some(2.0));
        assert_eq!(sample(&m, "berth_registry_volume_bytes"), Some(1000.0));
        assert_eq!(sample(&m, "berth_registry_volume_available_bytes"), Some(400.0));
    }
}
