//! Prometheus metrics (`GET /metrics`, admin auth), through the `metrics` facade and
//! its Prometheus exporter: counters and histograms are recorded where things happen;
//! what the database knows (instances by status, outbox depth and age, dead letters)
//! is read when the metrics are asked for.
//!
//! Series (all prefixed `sudevwa_`):
//! - `messages_total{direction="in"|"out", instance?}` — messages stored in the log;
//! - `send_errors_total{code}` — sends (every send and compose route) refused or failed;
//! - `send_duration_seconds` — histogram of sends answered successfully;
//! - `webhook_attempts_total{result="delivered"|"failed"|"dead_lettered"}` and
//!   `webhook_delivery_seconds` — histogram from an event's creation to its delivery;
//! - `websocket_clients{kind="ws"|"listen"}` — sockets open now;
//! - `instance_restarts_total` — supervisor restarts of crashed instance actors;
//! - `connection_losses_total{cause}` and `connect_gate_wait_seconds` — recorded by the
//!   instance actors (`actors` crate) through the same facade;
//! - `instances{status}`, `outbox_pending`, `outbox_oldest_pending_seconds`,
//!   `outbox_dead_lettered`, `db_pool_connections{state}`, `db_errors_total` — read at
//!   scrape time.
//!
//! The recorder is global (one per process); every server of a process shares it.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static PER_INSTANCE: OnceLock<bool> = OnceLock::new();

/// Latency buckets in seconds (sends and webhook deliveries).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the recorder (once per process); `per_instance` chooses whether
/// per-instance series carry the instance id.
pub fn install(per_instance: bool) {
    let _ = PER_INSTANCE.set(per_instance);
    HANDLE.get_or_init(|| {
        match PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| Ok(b.install_recorder()?))
        {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

/// The recorded series in Prometheus text format (empty when not installed).
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

/// One message stored, `in` or `out`.
pub fn message(direction: &'static str, instance_id: &str) {
    if *PER_INSTANCE.get().unwrap_or(&true) {
        metrics::counter!("sudevwa_messages_total", "direction" => direction, "instance" => instance_id.to_string())
            .increment(1);
    } else {
        metrics::counter!("sudevwa_messages_total", "direction" => direction).increment(1);
    }
}

/// A send's outcome: its latency, or its error code.
pub fn send<T, E>(
    started: std::time::Instant,
    r: &Result<T, E>,
    code: impl Fn(&E) -> &'static str,
) {
    match r {
        Ok(_) => metrics::histogram!("sudevwa_send_duration_seconds")
            .record(started.elapsed().as_secs_f64()),
        Err(e) => metrics::counter!("sudevwa_send_errors_total", "code" => code(e)).increment(1),
    }
}

/// A webhook attempt's result (`delivered`, `failed`, `dead_lettered`); for a delivery,
/// how long after the event's creation (ms since the epoch).
pub fn webhook_attempt(result: &'static str, created_ms: Option<i64>) {
    metrics::counter!("sudevwa_webhook_attempts_total", "result" => result).increment(1);
    if let Some(created) = created_ms {
        let age = (chrono::Utc::now().timestamp_millis() - created).max(0) as f64 / 1000.0;
        metrics::histogram!("sudevwa_webhook_delivery_seconds").record(age);
    }
}

/// A WebSocket opened (`delta` 1) or closed (-1); `kind` `ws` or `listen`.
pub fn websocket(kind: &'static str, delta: f64) {
    metrics::gauge!("sudevwa_websocket_clients", "kind" => kind).increment(delta);
}

/// A crashed instance actor restarted by the supervisor.
pub fn instance_restart() {
    metrics::counter!("sudevwa_instance_restarts_total").increment(1);
}

/// A write refused by the cluster's fence (this node lost the instance's lease).
pub fn fenced_write() {
    metrics::counter!("sudevwa_cluster_fenced_writes_total").increment(1);
}

/// A request forwarded to the node owning its instance.
pub fn forwarded_request() {
    metrics::counter!("sudevwa_cluster_forwarded_requests_total").increment(1);
}

/// A database call failed.
pub fn db_error() {
    metrics::counter!("sudevwa_db_errors_total").increment(1);
}
