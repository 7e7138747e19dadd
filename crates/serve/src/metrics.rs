//! `GET /metrics`: the server's counters, gauges and histograms in Prometheus' text format
//! (version 0.0.4): requests by route and status, prompt and completion tokens, queue depth,
//! active sequences, KV-cache memory, decode batch sizes, time to first token and inter-token
//! latency (both measured in the model thread, from the request's arrival).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counts of observations at most each bound, their sum and their number.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum, as f64 bits.
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, x: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| x <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + x).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Everything `/metrics` shows; the handlers and the model thread update it.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests the model thread holds back because their KV cache does not fit yet.
    pub waiting: AtomicU64,
    pub active: AtomicU64,
    pub kv_bytes: AtomicU64,
    pub kv_budget: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            active: AtomicU64::new(0),
            kv_bytes: AtomicU64::new(0),
            kv_budget: AtomicU64::new(0),
            ttft: Histogram::new(SECONDS),
            itl: Histogram::new(SECONDS),
            batch: Histogram::new(BATCH),
        }
    }
}

/// The routes counted by name; any other path counts as "other" (so that clients cannot grow
/// the label set).
const ROUTES: &[&str] = &[
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/classify",
];

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, path: &str, status: u16) {
        let route = ROUTES
            .iter()
            .find(|&&r| r == path)
            .copied()
            .unwrap_or("other");
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route, status)).or_insert(0) += 1;
    }

    /// The text of `/metrics`; `queued` is the number of requests in the queue.
    pub fn render(&self, queued: usize) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out += "# HELP scratchllm_requests_total Requests answered, by route and status.\n";
        out += "# TYPE scratchllm_requests_total counter\n";
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "scratchllm_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        scalar(
            &mut out,
            "scratchllm_prompt_tokens_total",
            "counter",
            "Prompt tokens of the generations admitted.",
            get(&self.prompt_tokens),
        );
        scalar(
            &mut out,
            "scratchllm_completion_tokens_total",
            "counter",
            "Tokens generated.",
            get(&self.completion_tokens),
        );
        scalar(
            &mut out,
            "scratchllm_queue_depth",
            "gauge",
            "Requests waiting for the model (in the queue, or for KV-cache memory).",
            queued as u64 + get(&self.waiting),
        );
        scalar(
            &mut out,
            "scratchllm_active_sequences",
            "gauge",
            "Sequences being generated.",
            get(&self.active),
        );
        scalar(
            &mut out,
            "scratchllm_kv_cache_bytes",
            "gauge",
            "Memory of the active sequences' KV caches.",
            get(&self.kv_bytes),
        );
        scalar(
            &mut out,
            "scratchllm_kv_cache_budget_bytes",
            "gauge",
            "The KV caches' memory budget (--kv-cache-mb).",
            get(&self.kv_budget),
        );
        self.ttft.render(
            &mut out,
            "scratchllm_time_to_first_token_seconds",
            "From a generation's arrival to its first token.",
        );
        self.itl.render(
            &mut out,
            "scratchllm_inter_token_latency_seconds",
            "Between consecutive tokens of a generation.",
        );
        self.batch.render(
            &mut out,
            "scratchllm_decode_batch_size",
            "Sequences advanced together in one forward pass.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_their_sum_and_count() {
        let m = Metrics::default();
        for x in [0.004, 0.02, 0.02, 7.0, 100.0] {
            m.ttft.observe(x);
        }
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("/nope/../etc", 404);
        let text = m.render(3);
        for line in [
            "scratchllm_time_to_first_token_seconds_bucket{le=\"0.005\"} 1",
            "scratchllm_time_to_first_token_seconds_bucket{le=\"0.025\"} 3",
            "scratchllm_time_to_first_token_seconds_bucket{le=\"10\"} 4",
            "scratchllm_time_to_first_token_seconds_bucket{le=\"+Inf\"} 5",
            "scratchllm_time_to_first_token_seconds_sum 107.044",
            "scratchllm_time_to_first_token_seconds_count 5",
            "scratchllm_requests_total{route=\"/v1/completions\",status=\"200\"} 2",
            "scratchllm_requests_total{route=\"other\",status=\"404\"} 1",
            "scratchllm_queue_depth 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
