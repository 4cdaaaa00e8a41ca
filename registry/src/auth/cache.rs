//! A bounded cache whose entries expire: identities and access decisions are
//! remembered briefly, never longer than they are valid. quick_cache bounds the
//! size; the expiry lives in the value.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};

use crate::observe::metrics::ResultLabels;

/// Entries kept at most; an attacker spraying credentials only evicts others.
const CAPACITY: usize = 10_000;

/// A cache key: the SHA-256 of what identifies the entry (never the secret itself).
pub type Key = [u8; 32];

pub fn key(parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

pub struct TtlCache<V: Clone> {
    entries: quick_cache::sync::Cache<Key, (Instant, V)>,
    ttl: Duration,
    counts: Lookups,
}

/// Counters of lookups that found a live entry and of those that did not.
#[derive(Clone, Debug, Default)]
pub struct Lookups {
    pub hits: Counter,
    pub misses: Counter,
}

impl Lookups {
    /// Counters that add up under `result="hit"` and `result="miss"` of `family`.
    pub fn of(family: &Family<ResultLabels, Counter>) -> Lookups {
        let counter = |result| family.get_or_create(&ResultLabels { result }).clone();
        Lookups { hits: counter("hit"), misses: counter("miss") }
    }
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, counts: Lookups) -> Self {
        TtlCache { entries: quick_cache::sync::Cache::new(CAPACITY), ttl, counts }
    }

    pub fn get(&self, key: &Key) -> Option<V> {
        let found = match self.entries.get(key) {
            Some((expires, value)) if Instant::now() < expires => Some(value),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        };
        let counter = if found.is_some() { &self.counts.hits } else { &self.counts.misses };
        counter.inc();
        found
    }

    /// Remembers `value` for the cache's time to live, or for `valid_for` when
    /// that is shorter.
    pub fn insert(&self, key: Key, value: V, valid_for: Option<Duration>) {
        let ttl = valid_for.map_or(self.ttl, |v| v.min(self.ttl));
        if ttl.is_zero() {
            return;
        }
        self.entries.insert(key, (Instant::now() + ttl, value));
    }

    pub fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_never_outlive_their_validity() {
        let cache = TtlCache::new(Duration::from_millis(200), Lookups::default());
        cache.insert(key(&[b"a"]), 1, None);
        cache.insert(key(&[b"b"]), 2, Some(Duration::from_millis(20)));
        assert_eq!(cache.get(&key(&[b"a"])), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&key(&[b"b"])), None, "outlived its own validity");
        assert_eq!(cache.get(&key(&[b"a"])), Some(1));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(cache.get(&key(&[b"a"])), None, "outlived the cache's time to live");
    }

    #[test]
    fn zero_ttl_caches_nothing_and_keys_are_unambiguous() {
        let cache = TtlCache::new(Duration::ZERO, Lookups::default());
        cache.insert(key(&[b"a"]), 1, None);
        assert_eq!(cache.get(&key(&[b"a"])), None);
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }
}
