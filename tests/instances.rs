//! Instance actors end to end: the real runtime on a real database (SQLite) against the
//! mock WhatsApp network, with simulated contacts on the other side.

use actors::events::{IncomingMessage, IncomingSink, LifecycleNotice};
use actors::instance::{InstanceMsg, InstanceTiming, WaOptions};
use actors::{InstanceStatus, RestartPolicy};
use async_trait::async_trait;
use mock_whatsapp::MockNetwork;
use ractor::call_t;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sudevwa::config::{Config, Sources};
use sudevwa::runtime::{InstanceRuntime, RuntimeConfig};
use sudevwa::store::instances::Instances;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(60);

/// Records what the actors hand to the durable sink.
#[derive(Default)]
struct RecordingSink(Mutex<Vec<IncomingMessage>>);

#[async_trait]
impl IncomingSink for RecordingSink {
    async fn record(&self, msg: &IncomingMessage) -> Result<(), String> {
        self.0.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

async fn database(name: &str) -> Instances {
    let dir = std::env::temp_dir().join(format!("sudevwa-inst-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = std::collections::BTreeMap::new();
    env.insert("DATABASE_URL".to_string(), format!("sqlite://{}/db.sqlite", dir.display()));
    let cfg = Config::load(&Sources { env, ..Default::default() }).unwrap();
    Instances::new(sudevwa::store::db::open(&cfg.database).await.unwrap())
}

async fn runtime(net: &MockNetwork, instances: Instances, sink: Arc<RecordingSink>) -> InstanceRuntime {
    InstanceRuntime::start(
        instances,
        RuntimeConfig {
            options: WaOptions {
                socket_url: Some(net.ws_url()),
                version: Some((2, 3000, 0)),
                push_name: "sudevwa".into(),
                http: Some(Arc::new(net.http_client())),
                force_active_receipts: true,
            },
            timing: InstanceTiming {
                qr_timeout: Duration::from_secs(90),
                presence_interval: Duration::from_secs(300),
                request_timeout: Duration::from_secs(30),
            },
            restart: RestartPolicy::default(),
            sink,
            listener_capacity: 64,
            lifecycle_capacity: 1024,
        },
    )
    .await
    .expect("runtime starts")
}

async fn notice(rx: &mut broadcast::Receiver<LifecycleNotice>, what: &str, mut pick: impl FnMut(&LifecycleNotice) -> bool) -> LifecycleNotice {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n = tokio::time::timeout_at(until, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("lifecycle channel open");
        if pick(&n) {
            return n;
        }
    }
}

/// Creates an instance, runs its QR flow, has the mock phone `phone` scan, waits online.
async fn pair(rt: &InstanceRuntime, net: &MockNetwork, id: &str, phone: &str) {
    let mut life = rt.lifecycle();
    rt.instances().create(id, "SUDEVWA Beta").await.unwrap();
    let actor = rt.ensure_started(id).await.unwrap();
    call_t!(actor, InstanceMsg::StartQr, 10_000).unwrap().expect("QR flow starts");
    let qr = match notice(&mut life, "QR_GENERATED", |n| matches!(n, LifecycleNotice::QrGenerated { instance_id, .. } if instance_id == id)).await {
        LifecycleNotice::QrGenerated { qr_data, .. } => qr_data,
        _ => unreachable!("filtered above"),
    };
    net.scan_qr(&qr, Some(phone)).expect("scan");
    notice(&mut life, "QR_SUCCESS", |n| matches!(n, LifecycleNotice::QrSuccess { instance_id, .. } if instance_id == id)).await;
    notice(&mut life, "online", |n| {
        matches!(n, LifecycleNotice::InstanceStatusChanged { instance_id, status, is_connected: true, .. } if instance_id == id && status == "online")
    })
    .await;
}

#[tokio::test]
async fn instance_pairs_by_qr_sends_and_receives_and_reports_events() {
    let net = MockNetwork::start().await.unwrap();
    let instances = database("pair").await;
    let sink = Arc::new(RecordingSink::default());
    let rt = runtime(&net, instances.clone(), sink.clone()).await;

    pair(&rt, &net, "inst-a", "6281100000001").await;
    let mut carol = net.add_contact("6281200000002", "Carol").await.unwrap();

    let actor = rt.actor("inst-a").expect("registered as instance:inst-a");
    let snap = call_t!(actor, InstanceMsg::Status, 5000).unwrap();
    assert_eq!(snap.status, InstanceStatus::Online);
    assert!(snap.is_connected);
    assert_eq!(snap.phone.as_deref(), Some("6281100000001"));
    let row = instances.get("inst-a").await.unwrap().unwrap();
    assert_eq!(row.status, "online");
    assert_eq!(row.phone.as_deref(), Some("6281100000001"));

    // Instance → contact.
    let sent = call_t!(actor, |reply| InstanceMsg::SendText { to: "6281200000002".into(), text: "hello carol".into(), reply }, 30_000)
        .unwrap()
        .expect("sent");
    let got = carol.next_text().await.unwrap();
    assert_eq!((got.text.as_str(), got.message_id.as_str()), ("hello carol", sent.message_id.as_str()));

    // Send-check order: invalid and unregistered numbers are domain errors, not crashes.
    let e = call_t!(actor, |reply| InstanceMsg::SendText { to: "123".into(), text: "x".into(), reply }, 30_000).unwrap();
    assert_eq!(e.unwrap_err().code(), "INVALID_PHONE");
    let e = call_t!(actor, |reply| InstanceMsg::SendText { to: "6289999999999".into(), text: "x".into(), reply }, 30_000).unwrap();
    assert_eq!(e.unwrap_err().code(), "PHONE_NOT_REGISTERED");
    let checks = call_t!(actor, |reply| InstanceMsg::CheckNumbers { phones: vec!["6281200000002".into(), "6289999999999".into()], reply }, 30_000)
        .unwrap()
        .unwrap();
    assert!(checks[0].is_registered && !checks[1].is_registered);

    // Contact → instance: listeners and the durable sink get the same payload.
    let mut listener = call_t!(actor, InstanceMsg::Subscribe, 5000).unwrap();
    carol.send_text("6281100000001", "hi instance").await.unwrap();
    let msg = tokio::time::timeout(DEADLINE, listener.recv()).await.expect("incoming before deadline").unwrap();
    assert_eq!(msg.instance_id, "inst-a");
    assert_eq!(msg.message, "hi instance");
    assert_eq!(msg.kind, "text");
    assert_eq!(msg.from_phone.as_deref(), Some("6281200000002"));
    assert!(!msg.from_me && !msg.is_group);
    assert_eq!(sink.0.lock().unwrap().last(), Some(&msg));
    let env = msg.to_envelope();
    assert_eq!(env["event"], "incoming_message");
    assert_eq!(env["data"]["message"], "hi instance");

    rt.shutdown().await;
}
