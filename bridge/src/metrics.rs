//! Prometheus text metrics: requests by route and status with latency histograms, reviews by
//! outcome, and review-cache hits.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

/// Counters and histograms for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<String, BTreeMap<u16, Histogram>>>,
    reviews_allowed: AtomicU64,
    reviews_denied: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Look up by &str first so the common case allocates nothing.
        let by_status = match map.get_mut(route) {
            Some(m) => m,
            None => map.entry(route.to_owned()).or_default(),
        };
        let h = by_status.entry(status).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.total += 1;
        h.sum += secs;
    }

    /// Records a review outcome and whether it was served from the cache.
    pub fn review(&self, allowed: bool, cached: bool) {
        let c = if allowed {
            &self.reviews_allowed
        } else {
            &self.reviews_denied
        };
        c.fetch_add(1, Ordering::Relaxed);
        let c = if cached {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP idbridge_http_request_duration_seconds HTTP requests by route and status.\n",
        );
        out.push_str("# TYPE idbridge_http_request_duration_seconds histogram\n");
        let map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (route, status, h) in map
            .iter()
            .flat_map(|(r, m)| m.iter().map(move |(s, h)| (r, s, h)))
        {
            let labels = format!("route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "idbridge_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "idbridge_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.total
            );
            let _ = writeln!(
                out,
                "idbridge_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "idbridge_http_request_duration_seconds_count{{{labels}}} {}",
                h.total
            );
        }
        drop(map);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP idbridge_token_reviews_total TokenReviews by outcome.\n\
             # TYPE idbridge_token_reviews_total counter\n\
             idbridge_token_reviews_total{{outcome=\"allowed\"}} {}\n\
             idbridge_token_reviews_total{{outcome=\"denied\"}} {}\n\
             # HELP idbridge_review_cache_total Credential checks answered from the cache or not.\n\
             # TYPE idbridge_review_cache_total counter\n\
             idbridge_review_cache_total{{result=\"hit\"}} {}\n\
             idbridge_review_cache_total{{result=\"miss\"}} {}\n",
            load(&self.reviews_allowed),
            load(&self.reviews_denied),
            load(&self.cache_hits),
            load(&self.cache_misses),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::default();
        m.observe("/healthz", 200, Duration::from_millis(2));
        m.review(true, true);
        let text = m.render();
        assert!(text.contains(
            "idbridge_http_request_duration_seconds_bucket{route=\"/healthz\",status=\"200\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "idbridge_http_request_duration_seconds_bucket{route=\"/healthz\",status=\"200\",le=\"0.001\"} 0"
        ));
        assert!(text.contains("idbridge_token_reviews_total{outcome=\"allowed\"} 1"));
        assert!(text.contains("idbridge_review_cache_total{result=\"hit\"} 1"));
    }
}
