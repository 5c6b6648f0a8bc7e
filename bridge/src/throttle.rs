//! Failed-login throttling: counts failures per source address and per username and source in
//! fixed windows. Never per username alone, so nobody can lock another user out by failing on
//! purpose; the per-user limit sits below the directory's own lockout threshold, so attackers are
//! stopped here before the directory locks the account.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits; from `directory.throttle`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed from one address per window.
    pub per_source: u32,
    /// Failures allowed for one username from one address per window.
    pub per_user_source: u32,
    /// The window.
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    since: Instant,
    failures: u32,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 100_000;

/// The failure counters.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    counts: Mutex<HashMap<String, Count>>,
}

fn keys(source: Option<IpAddr>, username: &str) -> (String, String) {
    let src = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    (
        format!("s\0{src}"),
        format!("u\0{src}\0{}", username.to_lowercase()),
    )
}

impl Throttle {
    /// `Err(seconds to wait)` when either limit is reached.
    pub(crate) fn check(
        &self,
        policy: &ThrottlePolicy,
        source: Option<IpAddr>,
        username: &str,
        now: Instant,
    ) -> Result<(), u64> {
        let (src, usr) = keys(source, username);
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut wait = None::<Duration>;
        for (key, limit) in [(src, policy.per_source), (usr, policy.per_user_source)] {
            if let Some(c) = counts.get(&key) {
                let end = c.since + policy.window;
                if c.failures >= limit && end > now {
                    wait = Some(wait.unwrap_or_default().max(end - now));
                }
            }
        }
        match wait {
            // Round up: a client that waits exactly this long is let through.
            Some(w) => Err(w.as_secs() + u64::from(w.subsec_nanos() > 0)),
            None => Ok(()),
        }
    }

    /// Counts a failure against both keys.
    pub(crate) fn fail(
        &self,
        policy: &ThrottlePolicy,
        source: Option<IpAddr>,
        username: &str,
        now: Instant,
    ) {
        let (src, usr) = keys(source, username);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.len() >= SWEEP_AT {
            counts.retain(|_, c| c.since + policy.window > now);
        }
        for key in [src, usr] {
            let c = counts.entry(key).or_insert(Count {
                since: now,
                failures: 0,
            });
            if c.since + policy.window <= now {
                *c = Count {
                    since: now,
                    failures: 0,
                };
            }
            c.failures += 1;
        }
    }

    /// A success clears the username-and-source count (not the source's).
    pub(crate) fn succeed(&self, source: Option<IpAddr>, username: &str) {
        let (_, usr) = keys(source, username);
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&usr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ThrottlePolicy = ThrottlePolicy {
        per_source: 5,
        per_user_source: 2,
        window: Duration::from_secs(60),
    };

    #[test]
    fn per_user_and_source_then_per_source() {
        let t = Throttle::default();
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let now = Instant::now();
        t.fail(&P, a, "Alice", now);
        assert!(t.check(&P, a, "alice", now).is_ok());
        t.fail(&P, a, "alice", now);
        // Two failures for alice from a: she is throttled there, and only there.
        assert_eq!(t.check(&P, a, "alice", now), Err(60));
        assert!(t.check(&P, b, "alice", now).is_ok(), "never per user alone");
        assert!(t.check(&P, a, "bob", now).is_ok());
        // Five failures from a, whoever: a is throttled for everyone.
        for u in ["bob", "carol", "dave"] {
            t.fail(&P, a, u, now);
        }
        assert!(t.check(&P, a, "erin", now + Duration::from_secs(10)) == Err(50));
        // The window ends.
        assert!(
            t.check(&P, a, "alice", now + Duration::from_secs(60))
                .is_ok()
        );
    }

    #[test]
    fn success_clears_only_the_user_count() {
        let t = Throttle::default();
        let a: Option<IpAddr> = Some("::1".parse().unwrap());
        let now = Instant::now();
        t.fail(&P, a, "alice", now);
        t.fail(&P, a, "alice", now);
        t.succeed(a, "alice");
        assert!(t.check(&P, a, "alice", now).is_ok());
    }
}
