//! Rate limits that protect the server without throttling its users.
//!
//! - [`RateLimiter`]: token buckets keyed by anything (client address, instance id), on
//!   `governor`'s GCRA limiter, plus a non-consuming `peek`. The table is bounded: past its
//!   capacity, buckets that have refilled (idle keys) are dropped, and if it is still
//!   full it starts over: a new key is never refused because the table is full. Client
//!   addresses are keyed as `conn::client_key` says (IPv6 per /64; behind
//!   `server.trusted_proxies`, the forwarded client).
//! - Per client IP, two limiters exist (see `config.toml` `[limits]`): a general one over
//!   every request, **off by default** (an integrator's backend sits behind one IP and
//!   sends far more than any per-IP rate a human would hit), and one charged only by
//!   failed authentications and failed logins (brute force), on by default. An IP whose
//!   failure bucket is empty gets 429 on every authenticated route and on the login,
//!   right credentials included, until the bucket refills.
//! - [`SendGovernor`]: optional anti-ban pacing per instance (messages per second with a
//!   burst, per minute, and first contacts per hour), off by default.

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::Quota;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Keys kept per limiter before idle ones are dropped.
const MAX_KEYS: usize = 100_000;

/// `governor`'s keyed GCRA limiter, answering with the bucket's state on success.
/// On the standard monotonic clock (not `governor`'s default TSC clock): the refill
/// times noted for `peek` are `std::time::Instant`s, and both must read the same clock
/// or a peek can see a token the bucket does not have yet.
type Keyed<K> =
    governor::RateLimiter<K, DashMapStateStore<K>, MonotonicClock, StateInformationMiddleware>;

/// Token buckets keyed by `K` (a client address by default), on `governor`.
///
/// Two things `governor` does not do are added here:
/// - **peek** (is there a token, without taking it), needed where the decision to take
///   one comes later (failed logins) or from several limits at once (the send governor).
///   Whenever a take leaves a bucket empty, the time it refills is noted (by asking
///   `governor` once more: a refused check changes nothing), so `peek` is a lookup.
/// - **a bound on keys**: past `max_keys`, buckets that have refilled are dropped
///   (`retain_recent`); if the table is still full (a flood from many addresses), it
///   starts over empty. A new key is never refused because the table is full.
pub struct RateLimiter<K: Hash + Eq + Clone = IpAddr> {
    quota: Option<Quota>,
    max_keys: usize,
    buckets: RwLock<Keyed<K>>,
    /// Keys whose bucket is empty, with when it next has a token.
    empty_until: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_sec <= 0` disables limiting.
    pub fn new(per_sec: f64, burst: u32) -> Self {
        Self::with_capacity(per_sec, burst, MAX_KEYS)
    }

    /// The same, keeping at most `max_keys` keys.
    pub fn with_capacity(per_sec: f64, burst: u32, max_keys: usize) -> Self {
        let quota = (per_sec > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / per_sec).ok())
            .flatten()
            .and_then(Quota::with_period)
            .map(|q| q.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)));
        Self {
            max_keys: max_keys.max(1),
            buckets: RwLock::new(Self::table(quota)),
            quota,
            empty_until: Mutex::new(HashMap::new()),
        }
    }

    fn table(quota: Option<Quota>) -> Keyed<K> {
        // Disabled limiters never consult their table; any quota does.
        let q = quota.unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        governor::RateLimiter::dashmap_with_clock(q, MonotonicClock)
            .with_middleware::<StateInformationMiddleware>()
    }

    /// Whether this limiter limits anything.
    pub fn enabled(&self) -> bool {
        self.quota.is_some()
    }

    /// Takes one token for `key`; `Err(seconds)` tells when to retry.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        self.peek(key)?;
        let outcome = {
            // A poisoned lock only means a panic elsewhere; the table is still valid.
            let table = self.buckets.read().unwrap_or_else(|p| p.into_inner());
            let outcome = match table.check_key(key) {
                Ok(state) if state.remaining_burst_capacity() > 0 => Ok(()),
                // Emptied by this take: note when it refills (the probe is refused, so
                // it takes nothing).
                Ok(_) => {
                    if let Err(refill) = table.check_key(key) {
                        self.note_empty(key, refill.wait_time_from(table.clock().now()));
                    }
                    Ok(())
                }
                Err(refill) => {
                    let wait = refill.wait_time_from(table.clock().now());
                    self.note_empty(key, wait);
                    Err(whole_secs(wait))
                }
            };
            (outcome, table.len() > self.max_keys)
        };
        if outcome.1 {
            self.shrink();
        }
        outcome.0
    }

    /// Whether `key` has a token, without taking it; `Err(seconds)` as [`Self::check`].
    pub fn peek(&self, key: &K) -> Result<(), u64> {
        let mut empty = self.empty_until.lock().unwrap_or_else(|p| p.into_inner());
        match empty.get(key) {
            Some(until) if *until > Instant::now() => {
                Err(whole_secs(until.saturating_duration_since(Instant::now())))
            }
            Some(_) => {
                empty.remove(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn note_empty(&self, key: &K, wait: Duration) {
        let mut empty = self.empty_until.lock().unwrap_or_else(|p| p.into_inner());
        if empty.len() >= self.max_keys {
            let now = Instant::now();
            empty.retain(|_, until| *until > now);
        }
        empty.insert(key.clone(), Instant::now() + wait);
    }

    /// Drops refilled buckets; starts over if the table is still over its bound.
    fn shrink(&self) {
        let mut table = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        table.retain_recent();
        if table.len() > self.max_keys {
            *table = Self::table(self.quota);
            self.empty_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.read().map(|t| t.len()).unwrap_or(0)
    }
}

/// A wait as the whole seconds of a `Retry-After` (at least 1).
fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// Per-account backoff on failed logins, whatever address they come from: after
/// [`LoginBackoff::FREE_FAILURES`] wrong passwords in a row, the account refuses
/// every login (the right password too) for 1 s, then 2, 4, ... up to 15 minutes,
/// doubling with each further failure. A success clears it. Bounded: at most
/// `MAX_ACCOUNTS` names are tracked (the least recently failed go first).
#[derive(Default)]
pub struct LoginBackoff {
    accounts: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

const MAX_ACCOUNTS: usize = 10_000;

impl LoginBackoff {
    /// Failures allowed before the backoff starts.
    pub const FREE_FAILURES: u32 = 5;
    /// The longest wait.
    pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(900);

    fn key(username: &str) -> String {
        username.trim().to_lowercase()
    }

    /// `Err(seconds)` while the account is blocked.
    pub fn check(&self, username: &str) -> Result<(), u64> {
        let m = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(&Self::key(username)).and_then(|f| f.blocked_until) {
            Some(until) if until > Instant::now() => {
                Err((until - Instant::now()).as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failed(&self, username: &str) {
        let now = Instant::now();
        let mut m = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_ACCOUNTS && !m.contains_key(&Self::key(username)) {
            if let Some(oldest) = m.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        let f = m.entry(Self::key(username)).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        f.count += 1;
        f.last = now;
        if f.count > Self::FREE_FAILURES {
            let exp = (f.count - Self::FREE_FAILURES - 1).min(20);
            let wait = std::time::Duration::from_secs(1u64 << exp).min(Self::MAX_WAIT);
            f.blocked_until = Some(now + wait);
        }
    }

    /// Records a successful login (the count starts over).
    pub fn succeeded(&self, username: &str) {
        let mut m = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&Self::key(username));
    }
}

/// Settings of the [`SendGovernor`]; zero turns a limit off.
#[derive(Debug, Clone, Copy, Default)]
pub struct GovernorSettings {
    pub per_sec: u32,
    pub burst: u32,
    pub per_min: u32,
    pub new_chats_per_hour: u32,
}

/// Per-instance send pacing for operators who want it (anti-ban). Off by default.
///
/// First contacts are recipients this instance has not sent to since the process
/// started (the set is kept in memory, at most `MAX_SEEN` per instance, then reset).
pub struct SendGovernor {
    per_sec: RateLimiter<String>,
    per_min: RateLimiter<String>,
    new_chats: RateLimiter<String>,
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

/// Recipients remembered per instance for the first-contact limit.
const MAX_SEEN: usize = 50_000;

/// Which governor limit refused a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    Rate(u64),
    NewChats(u64),
}

impl Paced {
    /// Seconds until a retry can pass.
    pub fn retry_after(self) -> u64 {
        match self {
            Self::Rate(s) | Self::NewChats(s) => s,
        }
    }
}

impl SendGovernor {
    pub fn new(s: GovernorSettings) -> Self {
        Self {
            per_sec: RateLimiter::new(f64::from(s.per_sec), s.burst.max(s.per_sec).max(1)),
            per_min: RateLimiter::new(f64::from(s.per_min) / 60.0, s.per_min),
            new_chats: RateLimiter::new(
                f64::from(s.new_chats_per_hour) / 3600.0,
                s.new_chats_per_hour,
            ),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any limit is configured.
    pub fn enabled(&self) -> bool {
        self.per_sec.enabled() || self.per_min.enabled() || self.new_chats.enabled()
    }

    /// Admits one send of `instance` to `to`, or says when to retry. Nothing is taken
    /// from any bucket unless every limit admits the send.
    pub fn admit(&self, instance: &str, to: &str) -> Result<(), Paced> {
        if !self.enabled() {
            return Ok(());
        }
        let key = instance.to_string();
        // One lock over the check-then-take so two concurrent sends cannot both pass
        // on the last token. A poisoned lock only means a panic elsewhere; the set is
        // still a valid set.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let known = seen.get(instance).is_some_and(|s| s.contains(to));
        let first_contact = self.new_chats.enabled() && !known;
        self.per_sec.peek(&key).map_err(Paced::Rate)?;
        self.per_min.peek(&key).map_err(Paced::Rate)?;
        if first_contact {
            self.new_chats.peek(&key).map_err(Paced::NewChats)?;
        }
        self.per_sec.check(&key).map_err(Paced::Rate)?;
        self.per_min.check(&key).map_err(Paced::Rate)?;
        if first_contact {
            self.new_chats.check(&key).map_err(Paced::NewChats)?;
        }
        if self.new_chats.enabled() && !known {
            let set = seen.entry(key).or_default();
            if set.len() >= MAX_SEEN {
                set.clear();
            }
            set.insert(to.to_string());
        }
        Ok(())
    }

    /// Forgets an instance (deleted).
    pub fn forget(&self, instance: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_client() {
        let r = RateLimiter::new(1.0, 3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(r.check(&a).is_ok());
        }
        assert_eq!(r.check(&a), Err(1));
        assert_eq!(r.peek(&a), Err(1));
        assert!(r.check(&b).is_ok(), "another client has its own bucket");
        assert!(RateLimiter::<IpAddr>::new(0.0, 0).check(&a).is_ok());
    }

    #[test]
    fn peek_takes_nothing() {
        let r = RateLimiter::new(1.0, 2);
        let a = "x".to_string();
        for _ in 0..10 {
            assert!(r.peek(&a).is_ok());
        }
        assert!(r.check(&a).is_ok());
        assert!(r.check(&a).is_ok());
        assert!(r.check(&a).is_err());
    }

    #[test]
    fn governor_paces_rate_and_first_contacts() {
        let off = SendGovernor::new(GovernorSettings::default());
        assert!(!off.enabled());
        for _ in 0..1000 {
            assert!(off.admit("i", "1").is_ok());
        }
        let g = SendGovernor::new(GovernorSettings {
            per_sec: 1,
            burst: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            assert!(g.admit("i", "1").is_ok());
        }
        assert_eq!(g.admit("i", "1"), Err(Paced::Rate(1)));
        assert!(g.admit("j", "1").is_ok(), "instances are paced apart");

        let g = SendGovernor::new(GovernorSettings {
            new_chats_per_hour: 2,
            ..Default::default()
        });
        assert!(g.admit("i", "a").is_ok());
        assert!(g.admit("i", "b").is_ok());
        assert!(matches!(g.admit("i", "c"), Err(Paced::NewChats(_))));
        for _ in 0..10 {
            assert!(
                g.admit("i", "a").is_ok(),
                "known chats are not first contacts"
            );
        }
    }

    #[test]
    fn a_full_table_never_refuses_a_new_key_and_stays_bounded() {
        // Three keys fit; every one has spent its burst (none is idle).
        let l: RateLimiter<u32> = RateLimiter::with_capacity(0.001, 1, 3);
        for k in 0..3 {
            assert!(l.check(&k).is_ok());
            assert!(l.check(&k).is_err(), "key {k} spent its burst");
        }
        // A fourth client is served: no collateral 429 for a new client ...
        assert!(l.check(&3).is_ok());
        // ... and the table never holds more than its bound.
        for k in 4..100 {
            assert!(l.check(&k).is_ok(), "new key {k} refused");
            assert!(l.keys() <= 3, "{} keys", l.keys());
        }
    }

    #[test]
    fn an_emptied_bucket_refills_on_time() {
        let l: RateLimiter<u32> = RateLimiter::new(20.0, 1);
        assert!(l.check(&1).is_ok());
        assert_eq!(l.peek(&1), Err(1), "empty right after its one token");
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.peek(&1).is_err() {
            assert!(Instant::now() < deadline, "never refilled");
            std::thread::yield_now();
        }
        assert!(l.check(&1).is_ok(), "peek said there is a token");
    }

    #[test]
    fn failed_logins_back_off_per_account() {
        let b = LoginBackoff::default();
        for _ in 0..LoginBackoff::FREE_FAILURES {
            assert!(b.check("Admin").is_ok());
            b.failed("admin");
        }
        assert!(b.check("admin").is_ok(), "the free failures do not block");
        b.failed("ADMIN");
        assert_eq!(b.check("admin"), Err(1), "then 1 s");
        b.failed("admin");
        assert_eq!(b.check("admin"), Err(2), "doubling");
        for _ in 0..30 {
            b.failed("admin");
        }
        assert_eq!(b.check("admin"), Err(900), "capped at 15 minutes");
        assert!(b.check("someone-else").is_ok(), "per account");
        b.succeeded("admin");
        assert!(b.check("admin").is_ok());
    }
}
