//! The instance actor's timers under paused tokio time (no sleeps, no network): the QR
//! window closes exactly at `qr_timeout` with a `QR_TIMEOUT` notice, and not a moment
//! earlier; cancelling first means no timeout notice at all.
//!
//! The client points at a closed loopback port, so it never gets a code; the timers are
//! what is under test. Storage is whatsapp-rust's in-memory backend.

use actors::events::{LifecycleNotice, NoSink};
use actors::instance::{
    InstanceActor, InstanceArgs, InstanceEnv, InstanceMsg, InstanceRecord, InstanceStore,
    InstanceTiming, WaOptions,
};
use actors::InstanceStatus;
use async_trait::async_trait;
use ractor::{call_t, Actor};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use whatsapp_rust::wacore::store::traits::Backend;
use whatsapp_rust::wacore::store::InMemoryBackend;

#[derive(Default)]
struct MemStore {
    saved: Mutex<Vec<InstanceStatus>>,
}

#[async_trait]
impl InstanceStore for MemStore {
    fn backend(&self, _id: &str) -> Arc<dyn Backend> {
        Arc::new(InMemoryBackend::new())
    }
    async fn wipe_session(&self, _id: &str) -> Result<(), String> {
        Ok(())
    }
    async fn save(&self, _id: &str, r: &InstanceRecord) -> Result<(), String> {
        self.saved.lock().unwrap().push(r.status);
        Ok(())
    }
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn actor(
    name: &str,
    qr_timeout: Duration,
) -> (
    ractor::ActorRef<InstanceMsg>,
    broadcast::Receiver<LifecycleNotice>,
) {
    let (lifecycle, rx) = broadcast::channel(256);
    let env = Arc::new(InstanceEnv {
        options: WaOptions {
            socket_url: Some(format!("ws://127.0.0.1:{}/ws/chat", closed_port())),
            version: Some((2, 3000, 0)),
            push_name: "t".into(),
            http: None,
            force_active_receipts: false,
        },
        timing: InstanceTiming {
            qr_timeout,
            // StartQr answers within this (no code comes here: there is no network).
            first_qr_wait: Duration::from_secs(1),
            presence_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        store: Arc::new(MemStore::default()),
        lifecycle,
        sink: Arc::new(NoSink),
        durability: Default::default(),
        listener_capacity: 8,
        connect_permit: None,
        media_dir: None,
        admission: actors::admission::AdmissionGate::new(4, 100),
    });
    let (a, _) = Actor::spawn(
        Some(format!("timers-{name}")),
        InstanceActor,
        InstanceArgs {
            instance_id: name.into(),
            device_name: "t".into(),
            stored_status: InstanceStatus::QrRequired,
            env,
        },
    )
    .await
    .unwrap();
    (a, rx)
}

/// The next QR_TIMEOUT or QR_CANCELLED notice, or `None` once `until` passes.
async fn next_qr_end(
    rx: &mut broadcast::Receiver<LifecycleNotice>,
    until: Instant,
) -> Option<(LifecycleNotice, Instant)> {
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Ok(
                n @ (LifecycleNotice::QrTimeout { .. } | LifecycleNotice::QrCancelled { .. }),
            )) => return Some((n, Instant::now())),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn qr_window_closes_exactly_at_the_timeout() {
    let qr_timeout = Duration::from_secs(180);
    let (a, mut rx) = actor("qr-timeout", qr_timeout).await;
    let started = Instant::now();
    call_t!(a, InstanceMsg::StartQr, 5_000)
        .unwrap()
        .expect("the flow starts");
    assert_eq!(
        call_t!(a, InstanceMsg::Status, 5_000).unwrap().status,
        InstanceStatus::QrPending
    );
    // Nothing ends the flow before the window is over...
    assert!(
        next_qr_end(&mut rx, started + qr_timeout - Duration::from_millis(1))
            .await
            .is_none()
    );
    assert_eq!(
        call_t!(a, InstanceMsg::Status, 5_000).unwrap().status,
        InstanceStatus::QrPending
    );
    // ...and it ends right at it.
    let (n, at) = next_qr_end(&mut rx, started + qr_timeout + Duration::from_secs(1))
        .await
        .expect("QR_TIMEOUT");
    assert!(
        matches!(n, LifecycleNotice::QrTimeout { ref status, .. } if *status == "timeout"),
        "{n:?}"
    );
    assert!(at - started >= qr_timeout && at - started < qr_timeout + Duration::from_secs(1));
    let s = call_t!(a, InstanceMsg::Status, 5_000).unwrap();
    assert_eq!(s.status, InstanceStatus::QrRequired);
    assert!(s.qr.is_none());
    // A new flow gets a whole new window.
    let again = Instant::now();
    call_t!(a, InstanceMsg::StartQr, 5_000)
        .unwrap()
        .expect("a new flow");
    let (_, at) = next_qr_end(&mut rx, again + qr_timeout + Duration::from_secs(1))
        .await
        .expect("second QR_TIMEOUT");
    assert!(at - again >= qr_timeout);
    a.stop(None);
}

#[tokio::test(start_paused = true)]
async fn cancelled_flow_never_times_out() {
    let qr_timeout = Duration::from_secs(60);
    let (a, mut rx) = actor("qr-cancel", qr_timeout).await;
    let started = Instant::now();
    call_t!(a, InstanceMsg::StartQr, 5_000).unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await; // virtual time: instant
    call_t!(a, InstanceMsg::CancelQr, 5_000)
        .unwrap()
        .expect("cancel");
    let (n, _) = next_qr_end(&mut rx, started + Duration::from_secs(11))
        .await
        .expect("QR_CANCELLED");
    assert!(matches!(n, LifecycleNotice::QrCancelled { .. }));
    // The old deadline passes without a timeout notice.
    assert!(next_qr_end(&mut rx, started + qr_timeout * 3)
        .await
        .is_none());
    assert_eq!(
        call_t!(a, InstanceMsg::Status, 5_000).unwrap().status,
        InstanceStatus::QrRequired
    );
    a.stop(None);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_ticks_at_once_then_every_interval() {
    let period = Duration::from_secs(300);
    let ticks: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    let t = ticks.clone();
    let h = actors::instance::spawn_ticker(period, move || {
        t.lock().unwrap().push(started.elapsed());
        true
    });
    tokio::time::sleep(Duration::from_secs(3600) + Duration::from_millis(1)).await;
    let seen = ticks.lock().unwrap().clone();
    let expected: Vec<Duration> = (0..=12).map(|i| period * i).collect();
    assert_eq!(
        seen, expected,
        "available at once, then every 5 minutes for an hour"
    );
    h.abort();
    // A ticker whose target is gone stops by itself.
    let n = Arc::new(Mutex::new(0));
    let n2 = n.clone();
    let h = actors::instance::spawn_ticker(period, move || {
        *n2.lock().unwrap() += 1;
        *n2.lock().unwrap() < 3
    });
    tokio::time::sleep(period * 10).await;
    assert!(h.is_finished());
    assert_eq!(*n.lock().unwrap(), 3);
}
