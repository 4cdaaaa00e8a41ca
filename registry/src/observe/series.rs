//! Handles on a family's series by index, for label sets that are few and
//! known in advance (routes × methods × status classes, storage
//! operations). A family looks a series up under a lock, hashing its labels,
//! on every use; after a series' first use here, recording into it is one
//! atomic step on a handle, which the request path does several times per
//! request.

use std::hash::Hash;
use std::sync::OnceLock;

use prometheus_client::metrics::family::{Family, MetricConstructor};

pub struct Indexed<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    handles: Box<[OnceLock<M>]>,
}

impl<L, M, C> Indexed<L, M, C>
where
    L: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// Handles for `len` label sets of `family`, numbered `0..len`.
    pub fn new(family: Family<L, M, C>, len: usize) -> Self {
        Indexed { family, handles: (0..len).map(|_| OnceLock::new()).collect() }
    }

    /// The family, to register it.
    pub fn family(&self) -> &Family<L, M, C> {
        &self.family
    }

    /// Records into the series numbered `index` with `record`; its labels,
    /// from `labels`, are needed only on first use. A clone of a metric
    /// shares its value, so the handle records into the registered series.
    /// An index out of range (a label value added without its number) is
    /// recorded through the family, never a panic on the request path.
    pub fn record<R>(&self, index: usize, labels: impl FnOnce() -> L, record: impl FnOnce(&M) -> R) -> R {
        match self.handles.get(index) {
            Some(handle) => record(handle.get_or_init(|| self.family.get_or_create(&labels()).clone())),
            None => record(&self.family.get_or_create(&labels())),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn a_handle_records_into_the_familys_series_for_its_labels() {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        let labels = |n: usize| move || vec![("n".to_owned(), n.to_string())];
        let indexed = Indexed::new(family.clone(), 2);
        indexed.record(0, labels(0), |c| c.inc());
        indexed.record(0, || unreachable!("made once"), |c| c.inc_by(2));
        indexed.record(1, labels(1), |c| c.inc());
        indexed.record(7, labels(7), |c| c.inc());
        assert_eq!(family.get_or_create(&labels(0)()).get(), 3);
        assert_eq!(family.get_or_create(&labels(1)()).get(), 1);
        assert_eq!(family.get_or_create(&labels(7)()).get(), 1, "out of range: through the family");
    }
}
