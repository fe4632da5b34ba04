//! `GET /metrics`: Prometheus text for responses, evaluations and commit latency.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the commit latency buckets, in seconds.
const COMMIT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Default)]
pub(super) struct Metrics {
    responses: Mutex<BTreeMap<u16, u64>>,
    evaluations: AtomicU64,
    csp_violations: AtomicU64,
    commits: Mutex<Commits>,
    /// Tree heads, when `serve` publishes them.
    heads: Mutex<Option<Heads>>,
}

#[derive(Default)]
struct Heads {
    /// The newest head this server published: its size and when.
    newest: Option<(u64, Instant)>,
    failures: u64,
}

#[derive(Default)]
struct Commits {
    /// Commits at or under each bound of [`COMMIT_BUCKETS`] (not cumulative here).
    in_bucket: [u64; COMMIT_BUCKETS.len()],
    count: u64,
    seconds: f64,
    requests: u64,
}

impl Metrics {
    pub(super) fn count_response(&self, status: u16) {
        if let Ok(mut responses) = self.responses.lock() {
            *responses.entry(status).or_default() += 1;
        }
    }

    pub(super) fn count_evaluations(&self, decisions: usize) {
        self.evaluations
            .fetch_add(decisions as u64, Ordering::Relaxed);
    }

    pub(super) fn count_csp_violation(&self) {
        self.csp_violations.fetch_add(1, Ordering::Relaxed);
    }

    /// One group commit of `requests` requests that took `elapsed`.
    pub(super) fn record_commit(&self, elapsed: Duration, requests: usize) {
        let seconds = elapsed.as_secs_f64();
        if let Ok(mut commits) = self.commits.lock() {
            if let Some(bucket) = COMMIT_BUCKETS.iter().position(|&bound| seconds <= bound) {
                commits.in_bucket[bucket] += 1;
            }
            commits.count += 1;
            commits.seconds += seconds;
            commits.requests += requests as u64;
        }
    }

    /// From now on, the tree heads this server publishes are reported.
    pub(super) fn publishing_heads(&self) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.get_or_insert_with(Heads::default);
        }
    }

    pub(super) fn head_published(&self, size: u64) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.get_or_insert_with(Heads::default).newest = Some((size, Instant::now()));
        }
    }

    pub(super) fn head_failed(&self) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.get_or_insert_with(Heads::default).failures += 1;
        }
    }

    /// The tree heads this server published, in words for its pages.
    pub(super) fn heads_said(&self) -> String {
        let heads = self.heads.lock().ok();
        match heads.as_deref().and_then(Option::as_ref) {
            None => "This server publishes no signed tree heads (start it with --signing-key \
                     and --heads): nothing outside the store vouches for these rows."
                .to_string(),
            Some(heads) => {
                let newest = match heads.newest {
                    None => "It has published no signed tree head yet.".to_string(),
                    Some((size, published)) => format!(
                        "The newest signed tree head this server published covers rows 1..={size}, \
                         {} s ago.",
                        published.elapsed().as_secs()
                    ),
                };
                match heads.failures {
                    0 => newest,
                    n => format!(
                        "{newest} {n} head{} could not be published (the server's log says why).",
                        if n == 1 { "" } else { "s" }
                    ),
                }
            }
        }
    }

    /// The Prometheus text exposition of everything counted so far.
    pub(super) fn render(&self) -> String {
        let mut text = String::new();
        text.push_str(
            "# HELP flagstore_http_responses_total HTTP responses sent, by status code.\n\
             # TYPE flagstore_http_responses_total counter\n",
        );
        if let Ok(responses) = self.responses.lock() {
            for (code, count) in responses.iter() {
                let _ = writeln!(
                    text,
                    "flagstore_http_responses_total{{code=\"{code}\"}} {count}"
                );
            }
        }
        let _ = write!(
            text,
            "# HELP flagstore_evaluations_total Flag decisions returned and recorded.\n\
             # TYPE flagstore_evaluations_total counter\n\
             flagstore_evaluations_total {}\n",
            self.evaluations.load(Ordering::Relaxed)
        );
        let _ = write!(
            text,
            "# HELP flagstore_csp_violations_total Content-Security-Policy violations browsers \
             reported from the web UI's pages.\n\
             # TYPE flagstore_csp_violations_total counter\n\
             flagstore_csp_violations_total {}\n",
            self.csp_violations.load(Ordering::Relaxed)
        );
        if let Ok(commits) = self.commits.lock() {
            text.push_str(
                "# HELP flagstore_commit_seconds Time of one group commit: the write \
                 transaction answering every request queued when it began.\n\
                 # TYPE flagstore_commit_seconds histogram\n",
            );
            let mut cumulative = 0;
            for (bound, count) in COMMIT_BUCKETS.iter().zip(commits.in_bucket) {
                cumulative += count;
                let _ = writeln!(
                    text,
                    "flagstore_commit_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = write!(
                text,
                "flagstore_commit_seconds_bucket{{le=\"+Inf\"}} {count}\n\
                 flagstore_commit_seconds_sum {seconds}\n\
                 flagstore_commit_seconds_count {count}\n\
                 # HELP flagstore_commit_requests_total Requests answered by group commits.\n\
                 # TYPE flagstore_commit_requests_total counter\n\
                 flagstore_commit_requests_total {requests}\n",
                count = commits.count,
                seconds = commits.seconds,
                requests = commits.requests,
            );
        }
        if let Ok(heads) = self.heads.lock()
            && let Some(heads) = heads.as_ref()
        {
            let _ = write!(
                text,
                "# HELP flagstore_tree_head_failures_total Signed tree heads this server could \
                 not publish (the log has the reason).\n\
                 # TYPE flagstore_tree_head_failures_total counter\n\
                 flagstore_tree_head_failures_total {}\n",
                heads.failures
            );
            if let Some((size, published)) = heads.newest {
                let _ = write!(
                    text,
                    "# HELP flagstore_tree_head_age_seconds Seconds since this server published \
                     its newest signed tree head.\n\
                     # TYPE flagstore_tree_head_age_seconds gauge\n\
                     flagstore_tree_head_age_seconds {}\n\
                     # HELP flagstore_tree_head_rows Audit rows its newest signed tree head covers.\n\
                     # TYPE flagstore_tree_head_rows gauge\n\
                     flagstore_tree_head_rows {size}\n",
                    published.elapsed().as_secs_f64()
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counts_add_up() {
        let metrics = Metrics::default();
        metrics.record_commit(Duration::from_micros(300), 4);
        metrics.record_commit(Duration::from_millis(3), 1);
        metrics.record_commit(Duration::from_secs(2), 2);
        metrics.count_response(200);
        metrics.count_response(200);
        metrics.count_response(401);
        metrics.count_evaluations(5);
        metrics.count_csp_violation();
        assert!(!metrics.render().contains("tree_head"));
        assert!(
            metrics
                .heads_said()
                .contains("publishes no signed tree heads")
        );
        metrics.publishing_heads();
        assert!(!metrics.render().contains("tree_head_rows"));
        assert!(
            metrics
                .heads_said()
                .contains("published no signed tree head yet")
        );
        metrics.head_failed();
        metrics.head_published(42);
        assert!(metrics.heads_said().starts_with(
            "The newest signed tree head this server published covers rows 1..=42, 0 s ago. \
             1 head could not be published"
        ));
        let text = metrics.render();
        for line in [
            "flagstore_http_responses_total{code=\"200\"} 2",
            "flagstore_http_responses_total{code=\"401\"} 1",
            "flagstore_evaluations_total 5",
            "flagstore_csp_violations_total 1",
            "flagstore_commit_seconds_bucket{le=\"0.0005\"} 1",
            "flagstore_commit_seconds_bucket{le=\"0.002\"} 1",
            "flagstore_commit_seconds_bucket{le=\"0.005\"} 2",
            "flagstore_commit_seconds_bucket{le=\"1\"} 2",
            "flagstore_commit_seconds_bucket{le=\"+Inf\"} 3",
            "flagstore_commit_seconds_count 3",
            "flagstore_commit_requests_total 7",
            "flagstore_tree_head_failures_total 1",
            "flagstore_tree_head_rows 42",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
