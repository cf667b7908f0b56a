//! A process-wide cache of tc-token rows: whatsapp-rust reads the recipient's row on
//! every send (`get_tc_token`), one pool round trip each, while the rows change rarely
//! (a token received, the sender timestamp raised once per bucket).
//!
//! Correctness: every write through [`super::WaStore`] forgets the key after its
//! statement ran (whatever its outcome), and a reader caches what it read only if no
//! write forgot anything since it began (one generation counter, checked and bumped
//! under the same lock), so a value read before a write never lands after it.
//! Entries live at most [`TTL`] (a row written by anything but this process — another
//! node sharing the database — is seen again within it) and the map is bounded.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use wacore::store::traits::TcTokenEntry;

/// How long a cached row (or its absence) is trusted.
const TTL: Duration = Duration::from_secs(30);
/// Entries kept at most; past it, the map is emptied.
const MAX: usize = 50_000;

/// (database, instance, contact JID).
pub(super) type Key = (usize, String, String);

#[derive(Default)]
pub(super) struct TcCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    rows: HashMap<Key, (Instant, Option<TcTokenEntry>)>,
}

/// The process's cache.
pub(super) fn cache() -> &'static TcCache {
    static CACHE: OnceLock<TcCache> = OnceLock::new();
    CACHE.get_or_init(TcCache::default)
}

impl TcCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached row (`Some(None)`: known absent), or `Err(generation)` to read the
    /// database with and hand back to [`TcCache::fill`].
    pub(super) fn get(&self, key: &Key) -> Result<Option<TcTokenEntry>, u64> {
        let g = self.lock();
        match g.rows.get(key) {
            Some((at, row)) if at.elapsed() < TTL => Ok(row.clone()),
            _ => Err(g.generation),
        }
    }

    /// Caches what a reader found, unless a write forgot anything since it began.
    pub(super) fn fill(&self, key: Key, generation: u64, row: Option<TcTokenEntry>) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        if g.rows.len() >= MAX {
            g.rows.clear();
        }
        g.rows.insert(key, (Instant::now(), row));
    }

    /// After a write of `key`: drop it and turn away readers that began before.
    pub(super) fn forget(&self, key: &Key) {
        let mut g = self.lock();
        g.generation += 1;
        g.rows.remove(key);
    }

    /// After a write of many of an instance's rows (expiry sweep, wipe).
    pub(super) fn forget_instance(&self, db: usize, instance: &str) {
        let mut g = self.lock();
        g.generation += 1;
        g.rows.retain(|(d, i, _), _| !(*d == db && i == instance));
    }
}

/// Forgets its key when dropped: after the write it guards ends, or when the writer's
/// future is dropped mid-way (the write may still commit; forgetting then too keeps a
/// reader that began earlier from caching the old row).
pub(super) struct Forget(pub(super) Key);

impl Drop for Forget {
    fn drop(&mut self) {
        cache().forget(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(j: &str) -> Key {
        (1, "inst".into(), j.into())
    }

    fn entry(ts: i64) -> Option<TcTokenEntry> {
        Some(TcTokenEntry {
            token: vec![1, 2],
            token_timestamp: ts,
            sender_timestamp: None,
        })
    }

    #[test]
    fn a_read_that_began_before_a_write_is_not_cached() {
        let c = TcCache::default();
        let Err(g) = c.get(&key("a")) else {
            panic!("an empty cache has nothing")
        };
        c.forget(&key("a"));
        c.fill(key("a"), g, entry(1));
        assert!(c.get(&key("a")).is_err(), "the stale read was cached");
        let Err(g) = c.get(&key("a")) else {
            panic!("nothing cached yet")
        };
        c.fill(key("a"), g, entry(2));
        let got = c.get(&key("a")).expect("cached");
        assert_eq!(got.map(|e| e.token_timestamp), Some(2));
    }

    #[test]
    fn forgetting_an_instance_leaves_the_others() {
        let c = TcCache::default();
        let g = c.get(&key("a")).unwrap_err();
        c.fill(key("a"), g, None);
        c.fill((1, "other".into(), "a".into()), g, entry(3));
        c.forget_instance(1, "inst");
        assert!(c.get(&key("a")).is_err());
        assert!(c.get(&(1, "other".into(), "a".into())).is_ok());
    }
}
