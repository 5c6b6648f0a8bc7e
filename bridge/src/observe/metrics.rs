//! Prometheus text metrics: requests by route and status with latency histograms, reviews by
//! outcome, and review-cache hits.
//!
//! Every request updates a few atomics in a cell fixed at start (route × status); nothing on the
//! request path takes a lock or allocates.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Status codes with a cell of their own; the rest share the last cell, labelled `other`.
const STATUSES: [u16; 13] = [
    200, 201, 204, 400, 401, 403, 404, 409, 413, 415, 429, 500, 503,
];

const OTHER_ROUTE: &str = "other";

#[derive(Debug, Default)]
struct Cell {
    /// Per bucket, not cumulative; the last counts what exceeds every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

#[derive(Debug, Default)]
struct RouteStats {
    cells: [Cell; STATUSES.len() + 1],
}

/// Counters and histograms for `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    // Set once, when the router is built from every area's routes (`Metrics::register`).
    routes: std::sync::OnceLock<BTreeMap<&'static str, RouteStats>>,
    other: RouteStats,
    reviews_allowed: AtomicU64,
    reviews_denied: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    connections: std::sync::Arc<crate::http::server::ConnectionStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Metrics for these routes (as axum's `MatchedPath` names them); others count as `other`.
    #[must_use]
    pub fn new(routes: &[&'static str]) -> Self {
        let m = Self {
            routes: std::sync::OnceLock::new(),
            other: RouteStats::default(),
            reviews_allowed: AtomicU64::new(0),
            reviews_denied: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            connections: std::sync::Arc::default(),
        };
        if !routes.is_empty() {
            m.register(routes);
        }
        m
    }

    /// Keeps a cell for each of these routes; the first registration holds, later ones are
    /// ignored (a router built twice over one state serves the same routes).
    pub fn register(&self, routes: &[&'static str]) {
        let _ = self
            .routes
            .set(routes.iter().map(|r| (*r, RouteStats::default())).collect());
    }

    fn stats(&self) -> impl Iterator<Item = (&'static str, &RouteStats)> {
        self.routes
            .get()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (*k, v)))
            .chain(std::iter::once((OTHER_ROUTE, &self.other)))
    }

    /// The connection counters the server updates (see [`crate::serve_with`]).
    #[must_use]
    pub fn connections(&self) -> std::sync::Arc<crate::http::server::ConnectionStats> {
        self.connections.clone()
    }

    /// Records one request.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let stats = self
            .routes
            .get()
            .and_then(|m| m.get(route))
            .unwrap_or(&self.other);
        let idx = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        let cell = &stats.cells[idx];
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        cell.buckets[b].fetch_add(1, Ordering::Relaxed);
        cell.count.fetch_add(1, Ordering::Relaxed);
        cell.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let c = &self.connections;
        let _ = writeln!(
            out,
            "# HELP idbridge_connections_open Client connections open now.\n\
             # TYPE idbridge_connections_open gauge\n\
             idbridge_connections_open {}\n\
             # HELP idbridge_connections_total Client connections accepted.\n\
             # TYPE idbridge_connections_total counter\n\
             idbridge_connections_total {}\n\
             # HELP idbridge_connections_closed_total Connections closed by a limit, by reason.\n\
             # TYPE idbridge_connections_closed_total counter\n\
             idbridge_connections_closed_total{{reason=\"idle\"}} {}\n\
             idbridge_connections_closed_total{{reason=\"handshake_timeout\"}} {}\n\
             idbridge_connections_closed_total{{reason=\"header_timeout\"}} {}\n\
             idbridge_connections_closed_total{{reason=\"per_source_limit\"}} {}\n\
             # HELP idbridge_connection_limit_reached_total Times accepting paused at limits.max_connections.\n\
             # TYPE idbridge_connection_limit_reached_total counter\n\
             idbridge_connection_limit_reached_total {}",
            load(&c.open),
            load(&c.accepted),
            load(&c.idle_closed),
            load(&c.handshake_timeouts),
            load(&c.header_timeouts),
            load(&c.per_source_refused),
            load(&c.limit_reached),
        );
        out.push_str(
            "# HELP idbridge_http_request_duration_seconds HTTP requests by route and status.\n\
             # TYPE idbridge_http_request_duration_seconds histogram\n",
        );
        for (route, stats) in self.stats() {
            for (i, cell) in stats.cells.iter().enumerate() {
                let count = load(&cell.count);
                if count == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(i)
                    .map_or_else(|| "other".to_owned(), ToString::to_string);
                let labels = format!("route=\"{route}\",status=\"{status}\"");
                let mut cumulative = 0;
                for (j, b) in BUCKETS.iter().enumerate() {
                    cumulative += load(&cell.buckets[j]);
                    let _ = writeln!(
                        out,
                        "idbridge_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "idbridge_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                     idbridge_http_request_duration_seconds_sum{{{labels}}} {}\n\
                     idbridge_http_request_duration_seconds_count{{{labels}}} {count}",
                    micros_to_secs(load(&cell.sum_micros)),
                );
            }
        }
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

// Exact up to 2^53 µs (285 years of summed latency).
#[allow(clippy::cast_precision_loss)]
fn micros_to_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_histograms_and_counters() {
        let m = Metrics::new(&["/healthz"]);
        m.observe("/healthz", 200, Duration::from_millis(2));
        m.observe("/healthz", 200, Duration::from_micros(300));
        m.observe("/nowhere", 418, Duration::from_secs(9));
        m.review(true, true);
        let text = m.render();
        let has = |s: &str| assert!(text.contains(s), "{s} missing from\n{text}");
        has(
            "idbridge_http_request_duration_seconds_bucket{route=\"/healthz\",status=\"200\",le=\"0.0005\"} 1\n",
        );
        has(
            "idbridge_http_request_duration_seconds_bucket{route=\"/healthz\",status=\"200\",le=\"0.0025\"} 2\n",
        );
        has("idbridge_http_request_duration_seconds_count{route=\"/healthz\",status=\"200\"} 2\n");
        has(
            "idbridge_http_request_duration_seconds_sum{route=\"/healthz\",status=\"200\"} 0.0023\n",
        );
        has(
            "idbridge_http_request_duration_seconds_bucket{route=\"other\",status=\"other\",le=\"2.5\"} 0\n",
        );
        has(
            "idbridge_http_request_duration_seconds_bucket{route=\"other\",status=\"other\",le=\"+Inf\"} 1\n",
        );
        has("idbridge_token_reviews_total{outcome=\"allowed\"} 1");
        has("idbridge_review_cache_total{result=\"hit\"} 1");
    }
}
