//! Failed-login throttling for directory passwords: failures are counted per source address,
//! per user and source, and per user across all sources, in fixed windows.
//!
//! An attempt is reserved, atomically against every limit, after the name is looked up and
//! before the password reaches the directory; while attempts in flight could still reach a
//! limit, the next one waits for them to settle. So parallel attempts cannot outrun a limit
//! (and parallel right passwords are never refused), and the
//! per-user budget (set below the directory's own lockout threshold) means nobody can make the
//! directory lock an account through idbridge. Users are counted by their directory entry, so
//! every spelling of a name shares one count; names no entry has get the same budget and the
//! same answer, so a 429 tells nobody who exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits; from `directory.throttle`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed from one address per window.
    pub per_source: u32,
    /// Failures allowed for one user from one address per window.
    pub per_user_source: u32,
    /// The window of both limits above.
    pub window: Duration,
    /// Failed binds allowed for one user from all sources together per `per_user_window`.
    pub per_user: u32,
    /// The window of `per_user`.
    pub per_user_window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    since: Instant,
    failures: u32,
    /// Attempts reserved and not yet settled.
    in_flight: u32,
    /// The window this counter counts in: counters of several windows share the map, and a
    /// sweep keeps each for its own.
    window: Duration,
}

impl Count {
    fn new(now: Instant, window: Duration) -> Self {
        Self {
            since: now,
            failures: 0,
            in_flight: 0,
            window,
        }
    }

    /// Starts a new window when the last one has ended.
    fn roll(&mut self, window: Duration, now: Instant) {
        if self.since + window <= now {
            self.since = now;
            self.failures = 0;
        }
    }
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 100_000;

/// The longest an attempt waits for others of the same user or source to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(15);

/// The failure counters.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    counts: Mutex<Counts>,
    settled: tokio::sync::Notify,
}

/// The counters, and the size at which the next sweep runs.
#[derive(Debug)]
struct Counts {
    map: HashMap<String, Count>,
    sweep_at: usize,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: SWEEP_AT,
        }
    }
}

impl Counts {
    /// Drops counters whose window has ended once there are `sweep_at` of them. When many are
    /// still live, the next sweep waits until the map has doubled, so a flood of fresh keys
    /// costs a scan now and then, not one per attempt.
    fn sweep(&mut self, now: Instant) {
        if self.map.len() < self.sweep_at {
            return;
        }
        self.map
            .retain(|_, c| c.in_flight > 0 || c.since + c.window > now);
        self.sweep_at = SWEEP_AT.max(self.map.len() * 2);
    }
}

fn source_key(source: Option<IpAddr>) -> String {
    source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The three counters an attempt for `user` (a [`LoginCandidate`](idbridge_core::LoginCandidate)
/// key) from `source` counts against, with their limits and windows.
fn keys(
    policy: &ThrottlePolicy,
    source: Option<IpAddr>,
    user: &str,
) -> [(String, u32, Duration); 3] {
    let src = source_key(source);
    [
        (format!("s\0{src}"), policy.per_source, policy.window),
        (
            format!("us\0{src}\0{user}"),
            policy.per_user_source,
            policy.window,
        ),
        (
            format!("u\0{user}"),
            policy.per_user,
            policy.per_user_window,
        ),
    ]
}

/// Seconds to wait, rounded up: a client that waits exactly this long is let through.
fn wait_secs(w: Duration) -> u64 {
    w.as_secs() + u64::from(w.subsec_nanos() > 0)
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The password was wrong: a failure against every counter.
    Failed,
    /// The password was right: the user's count from that source starts again.
    Succeeded,
    /// The directory decided nothing (it did not answer).
    Undecided,
}

/// One reserved attempt; settled as [`Outcome::Failed`] if dropped unsettled (a cancelled
/// request whose bind may have reached the directory).
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    throttle: &'a Throttle,
    keys: Vec<String>,
    settled: bool,
}

impl Reservation<'_> {
    /// Records how the attempt ended.
    pub(crate) fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.throttle.settle(&self.keys, outcome, Instant::now());
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle
                .settle(&self.keys, Outcome::Failed, Instant::now());
        }
    }
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(seconds to wait)` when the source alone is over its limit: checked before the
    /// directory is asked anything.
    pub(crate) fn check_source(
        &self,
        policy: &ThrottlePolicy,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), u64> {
        let key = format!("s\0{}", source_key(source));
        match self.lock().map.get(&key) {
            Some(c) if c.failures >= policy.per_source && c.since + policy.window > now => {
                Err(wait_secs(c.since + policy.window - now))
            }
            _ => Ok(()),
        }
    }

    /// Reserves an attempt for `user` from `source`: `Err(seconds to wait)` when failures
    /// have reached any limit. While attempts in flight could still reach one, this one waits
    /// for them to settle, so parallel attempts never outrun a limit and parallel right
    /// passwords are never refused.
    pub(crate) async fn reserve(
        &self,
        policy: &ThrottlePolicy,
        source: Option<IpAddr>,
        user: &str,
    ) -> Result<Reservation<'_>, u64> {
        let keys = keys(policy, source, user);
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.try_reserve(&keys, Instant::now()) {
                Ok(Some(r)) => return Ok(r),
                Err(wait) => return Err(wait),
                Ok(None) => {
                    if tokio::time::timeout_at(deadline, settled).await.is_err() {
                        // Attempts that never settle: treat this one as over the limit.
                        let longest = keys.iter().map(|k| k.2).max().unwrap_or_default();
                        return Err(wait_secs(longest));
                    }
                }
            }
        }
    }

    /// `Ok(None)`: attempts in flight must settle first.
    fn try_reserve(
        &self,
        keys: &[(String, u32, Duration); 3],
        now: Instant,
    ) -> Result<Option<Reservation<'_>>, u64> {
        let mut guard = self.lock();
        guard.sweep(now);
        let counts = &mut guard.map;
        let mut wait = None::<Duration>;
        let mut busy = false;
        for (key, limit, window) in keys {
            if let Some(c) = counts.get_mut(key) {
                c.roll(*window, now);
                if c.failures >= *limit {
                    let w = c.since + *window - now;
                    wait = Some(wait.unwrap_or_default().max(w));
                } else if c.failures + c.in_flight >= *limit {
                    busy = true;
                }
            }
        }
        if let Some(w) = wait {
            return Err(wait_secs(w));
        }
        if busy {
            return Ok(None);
        }
        for (key, _, window) in keys {
            counts
                .entry(key.clone())
                .or_insert_with(|| Count::new(now, *window))
                .in_flight += 1;
        }
        Ok(Some(Reservation {
            throttle: self,
            keys: keys.iter().map(|k| k.0.clone()).collect(),
            settled: false,
        }))
    }

    /// Counts one `what` (a device-code guess, a revocation: requests that never reach the
    /// directory) from `source`, atomically: `Err(seconds to wait)` when `limit` were counted
    /// in the current `window` already. A right guess is given back with
    /// [`Throttle::forgive_per_source`].
    pub(crate) fn count_per_source(
        &self,
        what: &str,
        source: Option<IpAddr>,
        limit: u32,
        window: Duration,
    ) -> Result<(), u64> {
        let now = Instant::now();
        let mut counts = self.lock();
        counts.sweep(now);
        let c = counts
            .map
            .entry(format!("{what}\0{}", source_key(source)))
            .or_insert_with(|| Count::new(now, window));
        c.roll(window, now);
        if c.failures >= limit {
            return Err(wait_secs(c.since + window - now));
        }
        c.failures += 1;
        Ok(())
    }

    /// Takes back one `what` [`Throttle::count_per_source`] counted from `source`.
    pub(crate) fn forgive_per_source(&self, what: &str, source: Option<IpAddr>) {
        let key = format!("{what}\0{}", source_key(source));
        if let Some(c) = self.lock().map.get_mut(&key) {
            c.failures = c.failures.saturating_sub(1);
        }
    }

    fn settle(&self, keys: &[String], outcome: Outcome, now: Instant) {
        {
            let counts = &mut self.lock().map;
            for (i, key) in keys.iter().enumerate() {
                let Some(c) = counts.get_mut(key) else {
                    continue;
                };
                c.in_flight = c.in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failed => c.failures += 1,
                    // The user's count from this source starts again (not the source's, nor
                    // the user's budget across sources).
                    Outcome::Succeeded if i == 1 => {
                        c.failures = 0;
                        c.since = now;
                    }
                    Outcome::Succeeded | Outcome::Undecided => {}
                }
            }
        }
        self.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ThrottlePolicy = ThrottlePolicy {
        per_source: 5,
        per_user_source: 2,
        window: Duration::from_secs(60),
        per_user: 3,
        per_user_window: Duration::from_secs(900),
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    async fn fail(t: &Throttle, source: &str, user: &str) {
        t.reserve(&P, ip(source), user)
            .await
            .unwrap()
            .settle(Outcome::Failed);
    }

    #[tokio::test]
    async fn per_user_and_source_then_per_source() {
        let t = Throttle::default();
        fail(&t, "10.0.0.1", "id:alice").await;
        fail(&t, "10.0.0.1", "id:alice").await;
        // Two failures for alice from a: she is throttled there.
        assert_eq!(
            t.reserve(&P, ip("10.0.0.1"), "id:alice").await.unwrap_err(),
            60
        );
        fail(&t, "10.0.0.1", "id:bob").await;
        fail(&t, "10.0.0.1", "id:carol").await;
        fail(&t, "10.0.0.1", "id:dave").await;
        // Five failures from a, whoever: a is throttled for everyone.
        let now = Instant::now();
        assert!(t.check_source(&P, ip("10.0.0.1"), now).is_err());
        assert!(t.reserve(&P, ip("10.0.0.1"), "id:erin").await.is_err());
        assert!(t.check_source(&P, ip("10.0.0.2"), now).is_ok());
        assert_eq!(
            t.check_source(&P, ip("10.0.0.1"), now + Duration::from_secs(60)),
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_per_user_budget_spans_sources() {
        let t = Throttle::default();
        for s in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            fail(&t, s, "id:alice").await;
        }
        // A fourth address: alice's budget is spent wherever the attempt comes from, for the
        // rest of the per-user window.
        let wait = t.reserve(&P, ip("10.0.0.4"), "id:alice").await.unwrap_err();
        assert!((899..=900).contains(&wait), "{wait}");
        assert!(t.reserve(&P, ip("10.0.0.4"), "id:bob").await.is_ok());
    }

    #[tokio::test]
    async fn parallel_wrong_passwords_cannot_outrun_a_limit() {
        let t = std::sync::Arc::new(Throttle::default());
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                match t.reserve(&P, ip("10.0.0.1"), "id:dave").await {
                    Ok(r) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        r.settle(Outcome::Failed);
                        true
                    }
                    Err(_) => false,
                }
            }));
        }
        let mut admitted = 0;
        for h in tasks {
            admitted += usize::from(h.await.unwrap());
        }
        assert_eq!(admitted, 2);
    }

    #[tokio::test]
    async fn parallel_right_passwords_all_get_through() {
        let t = std::sync::Arc::new(Throttle::default());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let r = t.reserve(&P, ip("10.0.0.1"), "id:jo").await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                r.settle(Outcome::Succeeded);
            }));
        }
        for h in tasks {
            h.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_unsettled_attempt_counts_as_a_failure() {
        let t = Throttle::default();
        drop(t.reserve(&P, ip("::1"), "id:alice").await.unwrap());
        t.reserve(&P, ip("::1"), "id:alice")
            .await
            .unwrap()
            .settle(Outcome::Undecided);
        drop(t.reserve(&P, ip("::1"), "id:alice").await.unwrap());
        assert!(t.reserve(&P, ip("::1"), "id:alice").await.is_err());
    }

    #[test]
    fn a_sweep_keeps_each_counter_for_its_own_window() {
        let now = Instant::now();
        let two_minutes_ago = now.checked_sub(Duration::from_secs(120)).unwrap();
        let mut counts = Counts {
            map: HashMap::new(),
            sweep_at: 2,
        };
        // A user's failures counted over 15 minutes, and a per-minute count of another kind:
        // a sweep run for the second must not forget the first.
        let mut user = Count::new(two_minutes_ago, Duration::from_secs(900));
        user.failures = 4;
        counts.map.insert("u\0alice".into(), user);
        counts.map.insert(
            "workload\0::1".into(),
            Count::new(two_minutes_ago, Duration::from_secs(60)),
        );
        counts.sweep(now);
        assert_eq!(counts.map.len(), 1);
        assert_eq!(counts.map["u\0alice"].failures, 4);
    }
}
