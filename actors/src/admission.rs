//! Admission control for connects: at most `max_concurrent` WebSocket connects at a
//! time and at most `per_second` started per second (spaced with jitter), for every
//! instance of the process. It sits in the transport factory, so it covers first
//! connects, restores after a restart and whatsapp-rust's own reconnects after a
//! drop alike: a thousand instances losing their sockets at once do not stampede.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use whatsapp_rust::wacore::net::{Transport, TransportEvent, TransportFactory};

/// The shared gate.
pub struct AdmissionGate {
    slots: Semaphore,
    gap: Duration,
    next: Mutex<Instant>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    attempts: AtomicU64,
    /// When each of the last connects was let through (bounded; for tests and stats).
    admitted_at: Mutex<Vec<Instant>>,
}

/// Counters of a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionStats {
    pub attempts: u64,
    /// Most connects seen in flight at once.
    pub max_in_flight: usize,
}

impl AdmissionGate {
    /// A gate letting `max_concurrent` connects run at once, `per_second` start per second.
    pub fn new(max_concurrent: usize, per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            slots: Semaphore::new(max_concurrent.max(1)),
            gap: Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))),
            next: Mutex::new(Instant::now()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            attempts: AtomicU64::new(0),
            admitted_at: Mutex::new(Vec::new()),
        })
    }

    /// Runs `connect` once admitted.
    pub async fn admit<T>(&self, connect: impl std::future::Future<Output = T>) -> T {
        let waiting_since = Instant::now();
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self.slots.acquire().await;
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let at = (*next).max(Instant::now());
            // Jitter spreads the starts inside each gap (0.5x to 1.5x).
            *next = at + self.gap.mul_f64(0.5 + crate::backoff::random_unit());
            at
        };
        tokio::time::sleep_until(at).await;
        metrics::histogram!("sudevwa_connect_gate_wait_seconds")
            .record(waiting_since.elapsed().as_secs_f64());
        self.attempts.fetch_add(1, Ordering::Relaxed);
        {
            // The scheduled start: the spacing the gate keeps. (The wake-up can come a
            // little after it on a busy machine, so two wake-ups may sit closer than
            // the schedule; the start is never earlier than this.)
            let mut log = self.admitted_at.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() < 10_000 {
                log.push(at);
            }
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let out = connect.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        out
    }

    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
        }
    }

    /// When connects were let through (their scheduled starts, oldest first).
    pub fn admitted_at(&self) -> Vec<Instant> {
        let mut at = self
            .admitted_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        at.sort();
        at
    }

    /// The planned spacing between connect starts (before jitter).
    pub fn gap(&self) -> Duration {
        self.gap
    }
}

/// A transport factory whose connects pass the gate.
pub struct AdmittedTransport<F> {
    pub inner: F,
    pub gate: Arc<AdmissionGate>,
    /// Asked first, with the instance's id: a refusal fails the connect.
    pub permit: Option<(Arc<dyn ConnectPermit>, String)>,
}

/// Whether an instance may open a socket now (a cluster node: whether it holds the
/// instance's lease). Asked before every connect, first or again.
#[async_trait]
pub trait ConnectPermit: Send + Sync + 'static {
    /// `Err(why)` refuses the connect.
    async fn may_connect(&self, instance_id: &str) -> Result<(), String>;
}

#[async_trait]
impl<F: TransportFactory + Send + Sync> TransportFactory for AdmittedTransport<F> {
    async fn create_transport(
        &self,
    ) -> Result<(Arc<dyn Transport>, async_channel::Receiver<TransportEvent>), anyhow::Error> {
        if let Some((permit, id)) = &self.permit {
            permit
                .may_connect(id)
                .await
                .map_err(|why| anyhow::anyhow!("connect refused: {why}"))?;
        }
        self.gate.admit(self.inner.create_transport()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_concurrency_and_spaces_starts() {
        let gate = AdmissionGate::new(2, 4);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move {
                g.admit(tokio::time::sleep(Duration::from_secs(1))).await
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let s = gate.stats();
        assert_eq!(s.attempts, 10);
        assert!(s.max_in_flight <= 2, "{s:?}");
        let at = gate.admitted_at();
        for w in at.windows(2) {
            assert!(
                w[1] - w[0] >= gate.gap().mul_f64(0.5),
                "starts spaced by the rate"
            );
        }
    }
}
