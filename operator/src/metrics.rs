//! Prometheus metrics of the reconciler.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// Writes to the API (applies, status patches, deletes): zero while idle.
    pub writes: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_operator");
        let reconciliations = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        let writes = Counter::default();
        registry.register("reconciliations", "Reconciliations started", reconciliations.clone());
        registry.register("reconcile_failures", "Reconciliations that failed, by error", failures.clone());
        registry.register("reconcile_duration_seconds", "Time spent reconciling", duration.clone());
        registry.register("api_writes", "Writes the operator made to the Kubernetes API", writes.clone());
        Metrics { reconciliations, failures, duration, writes, registry }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }

    pub fn start(&self) -> Timer<'_> {
        self.reconciliations.inc();
        Timer { metrics: self, start: Instant::now() }
    }
}

pub struct Timer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `berth_operator_*` name in `text`, as far as its name goes.
    fn names(text: &str) -> Vec<&str> {
        text.match_indices("berth_operator_")
            .map(|(i, _)| {
                let len = text[i..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(text.len() - i);
                &text[i..i + len]
            })
            .collect()
    }

    #[test]
    fn the_dashboard_asks_only_for_metrics_the_operator_exports() {
        let m = Metrics::default();
        drop(m.start());
        m.failures.get_or_create(&ErrorLabels { error: "kube".into() }).inc();
        let text = m.encode();
        let exported: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let dashboard =
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/monitoring/grafana-dashboard.json"));
        let asked = names(dashboard);
        assert!(asked.len() >= 4, "{asked:?}");
        for name in asked {
            let family =
                ["_bucket", "_sum", "_count", "_total"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(exported.contains(&family), "the dashboard asks for {name}, which the operator does not export");
        }
    }
}
