//! Single flight: concurrent requests for one thing make one upstream fetch.
//! The fetch runs as a task of its own, so a client that goes away does not
//! cancel it for the others, and it leaves the table when it finishes.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct Flights<K, V: Clone> {
    running: Mutex<HashMap<K, Flight<V>>>,
}

impl<K, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights { running: Mutex::default() }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The flight for `key`: a running one (`false`), or one started with
    /// `start()` (`true`). `failed` turns a fetch task that panicked into a value.
    pub fn join<F>(self: &Arc<Self>, key: K, start: impl FnOnce() -> F, failed: fn() -> V) -> (Flight<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap();
        if let Some(flight) = running.get(&key) {
            return (flight.clone(), false);
        }
        let (me, k, fetch) = (self.clone(), key.clone(), start());
        let task = tokio::spawn(
            async move {
                let _leave = Leave { flights: me, key: k };
                fetch.await
            }
            .instrument(fetch_span()),
        );
        let flight = async move { task.await.unwrap_or_else(|_| failed()) }.boxed().shared();
        running.insert(key, flight.clone());
        (flight, true)
    }

    fn leave(&self, key: &K) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Fetches in progress.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.running.lock().unwrap().len()
    }
}

/// The span of a fetch: in the trace of the request that started it, but
/// not a tracing child of its span, which would then stay open until the
/// fetch ends (the request may be long gone: its client left).
fn fetch_span() -> tracing::Span {
    let request = tracing::Span::current();
    if request.is_disabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(parent: None, "fetch", otel.name = "mirror fetch");
    // Fails only when spans are not exported, and then there is no trace.
    let _ = span.set_parent(request.context());
    span
}

/// Takes a finished fetch out of the table, also when it panicked.
struct Leave<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    flights: Arc<Flights<K, V>>,
    key: K,
}

impl<K, V> Drop for Leave<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.flights.leave(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_fetch_for_many_and_none_left_behind() {
        let flights = Arc::new(Flights::<&str, usize>::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut joined = Vec::new();
        for _ in 0..20 {
            let f = fetches.clone();
            joined.push(flights.join(
                "k",
                move || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    f.fetch_add(1, Ordering::SeqCst) + 7
                },
                || 0,
            ));
        }
        assert_eq!(joined.iter().filter(|(_, leader)| *leader).count(), 1);
        // The leader's client goes away: the fetch still finishes for the rest.
        drop(joined.remove(0));
        for (flight, _) in joined {
            assert_eq!(flight.await, 7);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
        let (again, leader) = flights.join("k", || async { 9 }, || 0);
        assert!(leader, "a finished flight is not joined");
        assert_eq!(again.await, 9);
    }

    #[tokio::test]
    async fn a_panicking_fetch_is_an_answer() {
        let flights = Arc::new(Flights::<u8, usize>::default());
        let (flight, _) = flights.join(1, || async { panic!("fetch bug") }, || 42);
        assert_eq!(flight.await, 42);
        assert_eq!(flights.len(), 0, "the entry is gone even after a panic");
    }
}
