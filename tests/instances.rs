//! Instance actors end to end: the real runtime on a real database (SQLite) against the
//! mock WhatsApp network, with simulated contacts on the other side.

use actors::events::{
    EventSink, IncomingMessage, LifecycleNotice, LiveEvent, MessageStatus, NoSink, SentRecord,
};
use actors::instance::{InstanceMsg, InstanceTiming, WaOptions};
use actors::{InstanceStatus, RestartPolicy};
use async_trait::async_trait;
use mock_whatsapp::MockNetwork;
use ractor::call_t;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sudevwa::config::{Config, Sources};
use sudevwa::runtime::{Admission, InstanceRuntime, RuntimeConfig};
use sudevwa::store::instances::Instances;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(60);

/// Records what the actors hand to the durable sink.
#[derive(Default)]
struct RecordingSink(Mutex<Vec<IncomingMessage>>);

#[async_trait]
impl EventSink for RecordingSink {
    async fn commit_incoming(
        &self,
        instance_id: &str,
        msgs: &[IncomingMessage],
    ) -> Result<Vec<LiveEvent>, String> {
        self.0.lock().unwrap().extend(msgs.iter().cloned());
        NoSink.commit_incoming(instance_id, msgs).await
    }
    async fn record_sent(&self, _sent: &SentRecord) -> Result<(), String> {
        Ok(())
    }
    async fn record_status(&self, status: &MessageStatus) -> Result<Vec<LiveEvent>, String> {
        NoSink.record_status(status).await
    }
    async fn record_lifecycle(&self, _notice: &LifecycleNotice) -> Result<(), String> {
        Ok(())
    }
    async fn probe_writable(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The next `incoming_message` a listener sees, as its JSON envelope.
async fn next_incoming(listener: &mut broadcast::Receiver<LiveEvent>) -> serde_json::Value {
    loop {
        let e = tokio::time::timeout(DEADLINE, listener.recv())
            .await
            .expect("incoming before deadline")
            .unwrap();
        if e.event == "incoming_message" {
            return serde_json::from_str(&e.json).unwrap();
        }
    }
}

async fn database(name: &str) -> Instances {
    let dir = std::env::temp_dir().join(format!("sudevwa-inst-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "DATABASE_URL".to_string(),
        format!("sqlite://{}/db.sqlite", dir.display()),
    );
    let cfg = Config::load(&Sources {
        env,
        ..Default::default()
    })
    .unwrap();
    Instances::new(sudevwa::store::db::open(&cfg.database).await.unwrap())
}

async fn runtime(
    net: &MockNetwork,
    instances: Instances,
    sink: Arc<RecordingSink>,
) -> InstanceRuntime {
    runtime_with(
        net,
        instances,
        sink,
        RestartPolicy::default(),
        Duration::from_secs(90),
    )
    .await
}

async fn runtime_with(
    net: &MockNetwork,
    instances: Instances,
    sink: Arc<RecordingSink>,
    restart: RestartPolicy,
    qr_timeout: Duration,
) -> InstanceRuntime {
    runtime_admitted(
        net,
        instances,
        sink,
        restart,
        qr_timeout,
        Admission::default(),
    )
    .await
}

async fn runtime_admitted(
    net: &MockNetwork,
    instances: Instances,
    sink: Arc<RecordingSink>,
    restart: RestartPolicy,
    qr_timeout: Duration,
    admission: Admission,
) -> InstanceRuntime {
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
                qr_timeout,
                presence_interval: Duration::from_secs(300),
                request_timeout: Duration::from_secs(30),
                ..Default::default()
            },
            restart,
            sink,
            durability: Default::default(),
            listener_capacity: 64,
            lifecycle_capacity: 1024,
            admission,
            media_dir: None,
            cluster: None,
        },
    )
    .await
    .expect("runtime starts")
}

async fn notice(
    rx: &mut broadcast::Receiver<LifecycleNotice>,
    what: &str,
    mut pick: impl FnMut(&LifecycleNotice) -> bool,
) -> LifecycleNotice {
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
    call_t!(actor, InstanceMsg::StartQr, 10_000)
        .unwrap()
        .expect("QR flow starts");
    let qr = match notice(
        &mut life,
        "QR_GENERATED",
        |n| matches!(n, LifecycleNotice::QrGenerated { instance_id, .. } if instance_id == id),
    )
    .await
    {
        LifecycleNotice::QrGenerated { qr_data, .. } => qr_data,
        _ => unreachable!("filtered above"),
    };
    net.scan_qr(&qr, Some(phone)).expect("scan");
    notice(
        &mut life,
        "QR_SUCCESS",
        |n| matches!(n, LifecycleNotice::QrSuccess { instance_id, .. } if instance_id == id),
    )
    .await;
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
    assert_eq!(snap.identity.phone.as_deref(), Some("6281100000001"));
    let row = instances.get("inst-a").await.unwrap().unwrap();
    assert_eq!(row.status, "online");
    assert_eq!(row.phone.as_deref(), Some("6281100000001"));

    // Instance → contact.
    let sent = call_t!(
        actor,
        |reply| InstanceMsg::SendText {
            to: "6281200000002".into(),
            text: "hello carol".into(),
            message_id: None,
            reply
        },
        30_000
    )
    .unwrap()
    .expect("sent");
    let got = carol.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str()),
        ("hello carol", sent.message_id.as_str())
    );

    // Send-check order: invalid and unregistered numbers are domain errors, not crashes.
    let e = call_t!(
        actor,
        |reply| InstanceMsg::SendText {
            to: "123".into(),
            text: "x".into(),
            message_id: None,
            reply
        },
        30_000
    )
    .unwrap();
    assert_eq!(e.unwrap_err().code(), "INVALID_PHONE");
    let e = call_t!(
        actor,
        |reply| InstanceMsg::SendText {
            to: "6289999999999".into(),
            text: "x".into(),
            message_id: None,
            reply
        },
        30_000
    )
    .unwrap();
    assert_eq!(e.unwrap_err().code(), "PHONE_NOT_REGISTERED");
    let checks = call_t!(
        actor,
        |reply| InstanceMsg::CheckNumbers {
            phones: vec!["6281200000002".into(), "6289999999999".into()],
            reply
        },
        30_000
    )
    .unwrap()
    .unwrap();
    assert!(checks[0].is_registered && !checks[1].is_registered);

    // Contact → instance: listeners and the durable sink get the same payload.
    let mut listener = call_t!(actor, InstanceMsg::Subscribe, 5000).unwrap();
    carol
        .send_text("6281100000001", "hi instance")
        .await
        .unwrap();
    let env = next_incoming(&mut listener).await;
    let data = &env["data"];
    assert_eq!(data["instance_id"], "inst-a");
    assert_eq!(data["message"], "hi instance");
    assert_eq!(data["type"], "text");
    assert_eq!(data["from_phone"], "6281200000002");
    assert!(data["from_me"] == false && data["is_group"] == false);
    let stored = sink
        .0
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("stored before broadcast");
    assert_eq!(stored.to_envelope()["data"], env["data"]);
    assert_eq!(env["event"], "incoming_message");
    assert_eq!(env["data"]["message"], "hi instance");

    // Media through the actor: the contact downloads exactly what was sent.
    let png: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let media = actors::instance::OutgoingMedia {
        kind: actors::instance::MediaKind::Image,
        bytes: png.clone(),
        mimetype: "image/png".into(),
        file_name: Some("pic.png".into()),
        caption: Some("a picture".into()),
    };
    call_t!(
        actor,
        |reply| InstanceMsg::SendMedia {
            to: "6281200000002".into(),
            media,
            message_id: None,
            reply
        },
        60_000
    )
    .unwrap()
    .expect("media sent");
    let img = carol
        .wait("an image", |e| match e {
            whatsapp_rust::wacore::types::events::Event::Messages(b) => b
                .messages
                .iter()
                .find_map(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(img.caption.as_deref(), Some("a picture"));
    assert_eq!(carol.client.download(&img).await.expect("download"), png);

    // Another client takes the session over: the instance does not fight back.
    let mut life = rt.lifecycle();
    assert!(net.replace_stream("6281100000001", 1));
    notice(&mut life, "stream_replaced", |n| {
        matches!(n, LifecycleNotice::InstanceStatusChanged { instance_id, status, is_connected: false, .. } if instance_id == "inst-a" && status == "stream_replaced")
    })
    .await;
    let snap = call_t!(actor, InstanceMsg::Status, 5000).unwrap();
    assert_eq!(snap.status, InstanceStatus::StreamReplaced);
    assert!(!snap.is_connected);
    assert_eq!(
        instances.get("inst-a").await.unwrap().unwrap().status,
        "stream_replaced"
    );

    rt.shutdown().await;
}

#[tokio::test]
async fn qr_flow_can_be_cancelled_and_times_out() {
    let net = MockNetwork::start().await.unwrap();
    let instances = database("qr").await;
    let sink = Arc::new(RecordingSink::default());
    let rt = runtime_with(
        &net,
        instances,
        sink,
        RestartPolicy::default(),
        Duration::from_secs(3),
    )
    .await;
    let mut life = rt.lifecycle();
    rt.instances().create("q-a", "SUDEVWA Beta").await.unwrap();
    let actor = rt.ensure_started("q-a").await.unwrap();
    call_t!(actor, InstanceMsg::StartQr, 10_000)
        .unwrap()
        .unwrap();
    notice(&mut life, "QR_GENERATED", |n| {
        matches!(n, LifecycleNotice::QrGenerated { .. })
    })
    .await;
    // Only one QR flow at a time: asking again joins it and gets the current code.
    let again = call_t!(actor, InstanceMsg::StartQr, 10_000)
        .unwrap()
        .unwrap();
    assert!(again.is_some_and(|q| q.code.starts_with("2@")));
    call_t!(actor, InstanceMsg::CancelQr, 10_000)
        .unwrap()
        .unwrap();
    notice(&mut life, "QR_CANCELLED", |n| {
        matches!(n, LifecycleNotice::QrCancelled { .. })
    })
    .await;
    let snap = call_t!(actor, InstanceMsg::Status, 5000).unwrap();
    assert_eq!((snap.status, snap.qr), (InstanceStatus::QrRequired, None));
    let e = call_t!(actor, InstanceMsg::CancelQr, 10_000)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), "NO_QR_SESSION");

    // A new flow that nobody scans times out (3 s configured here).
    call_t!(actor, InstanceMsg::StartQr, 10_000)
        .unwrap()
        .unwrap();
    notice(&mut life, "QR_TIMEOUT", |n| {
        matches!(n, LifecycleNotice::QrTimeout { .. })
    })
    .await;
    assert_eq!(
        call_t!(actor, InstanceMsg::Status, 5000).unwrap().status,
        InstanceStatus::QrRequired
    );
    rt.shutdown().await;
}

fn policy(max_restarts: usize) -> RestartPolicy {
    RestartPolicy {
        backoff: actors::backoff::Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            factor: 2.0,
        },
        max_restarts,
        window: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn panicking_instance_is_parked_while_the_others_keep_messaging() {
    let net = MockNetwork::start().await.unwrap();
    let instances = database("crash").await;
    let sink = Arc::new(RecordingSink::default());
    // A small restart budget: two restarts, then parked.
    let rt = runtime_with(
        &net,
        instances.clone(),
        sink.clone(),
        policy(2),
        Duration::from_secs(90),
    )
    .await;
    tokio::join!(
        pair(&rt, &net, "c-a", "6281300000001"),
        pair(&rt, &net, "c-b", "6281300000002"),
        pair(&rt, &net, "c-c", "6281300000003"),
    );
    let mut dave = net.add_contact("6281300000009", "Dave").await.unwrap();
    let b_id = rt.actor("c-b").unwrap().get_id();
    let c_id = rt.actor("c-c").unwrap().get_id();
    let mut sup = rt.supervisor_events();

    // A panics three times: restarted twice with backoff, then parked.
    for round in 1..=3 {
        let a = loop {
            if let Some(a) = rt.actor("c-a") {
                break a;
            }
            tokio::task::yield_now().await;
        };
        a.cast(InstanceMsg::Fault(actors::instance::Fault::Panic))
            .unwrap();
        let ev = tokio::time::timeout(DEADLINE, sup.recv())
            .await
            .expect("supervision event")
            .unwrap();
        if round < 3 {
            assert!(
                matches!(ev, actors::SupervisorEvent::Restarting { ref instance_id, .. } if instance_id == "c-a"),
                "{ev:?}"
            );
            let ev = tokio::time::timeout(DEADLINE, sup.recv())
                .await
                .expect("restarted")
                .unwrap();
            assert!(
                matches!(ev, actors::SupervisorEvent::Restarted { .. }),
                "{ev:?}"
            );
        } else {
            assert!(
                matches!(ev, actors::SupervisorEvent::Crashed { ref instance_id, .. } if instance_id == "c-a"),
                "{ev:?}"
            );
        }
        // Meanwhile B sends and receives, nothing lost.
        let b = rt.actor("c-b").unwrap();
        let text = format!("from b, round {round}");
        call_t!(
            b,
            |reply| InstanceMsg::SendText {
                to: "6281300000009".into(),
                text: text.clone(),
                message_id: None,
                reply
            },
            30_000
        )
        .unwrap()
        .expect("b sends");
        assert_eq!(dave.next_text().await.unwrap().text, text);
        let mut listener = call_t!(b, InstanceMsg::Subscribe, 5000).unwrap();
        let back = format!("to b, round {round}");
        dave.send_text("6281300000002", &back).await.unwrap();
        let got = next_incoming(&mut listener).await;
        assert_eq!(got["data"]["message"], back.as_str());
    }
    assert!(rt.actor("c-a").is_none(), "parked instance has no actor");
    // B and C were never restarted.
    assert_eq!(rt.actor("c-b").unwrap().get_id(), b_id);
    assert_eq!(rt.actor("c-c").unwrap().get_id(), c_id);
    rt.shutdown().await;
}

#[tokio::test]
async fn logout_rescan_unlink_and_process_restart() {
    let net = MockNetwork::start().await.unwrap();
    let instances = database("logout").await;
    let sink = Arc::new(RecordingSink::default());
    let rt = runtime(&net, instances.clone(), sink.clone()).await;
    tokio::join!(
        pair(&rt, &net, "l-a", "6281400000001"),
        pair(&rt, &net, "l-b", "6281400000002"),
    );
    let mut life = rt.lifecycle();

    // API logout: unlinked on WhatsApp, keys wiped, instance kept and reusable.
    let a = rt.actor("l-a").unwrap();
    call_t!(a, InstanceMsg::Logout, 30_000).unwrap().unwrap();
    assert_eq!(
        call_t!(a, InstanceMsg::Status, 5000).unwrap().status,
        InstanceStatus::LoggedOut
    );
    assert!(net
        .accounts()
        .iter()
        .find(|x| x.phone == "6281400000001")
        .unwrap()
        .devices
        .is_empty());
    assert_eq!(
        instances.get("l-a").await.unwrap().unwrap().status,
        "logged_out"
    );
    // Scan again without re-creating it.
    call_t!(a, InstanceMsg::StartQr, 10_000)
        .unwrap()
        .expect("new QR flow");
    let qr = match notice(
        &mut life,
        "QR_GENERATED",
        |n| matches!(n, LifecycleNotice::QrGenerated { instance_id, .. } if instance_id == "l-a"),
    )
    .await
    {
        LifecycleNotice::QrGenerated { qr_data, .. } => qr_data,
        _ => unreachable!(),
    };
    net.scan_qr(&qr, Some("6281400000001")).unwrap();
    notice(&mut life, "l-a online again", |n| {
        matches!(n, LifecycleNotice::InstanceStatusChanged { instance_id, status, .. } if instance_id == "l-a" && status == "online")
    })
    .await;

    // Phone-side unlink ends in logged_out.
    assert!(net.unlink("6281400000002", 1));
    notice(&mut life, "l-b logged out", |n| {
        matches!(n, LifecycleNotice::InstanceStatusChanged { instance_id, status, .. } if instance_id == "l-b" && status == "logged_out")
    })
    .await;

    // Process restart on the same database: the paired instance comes back without a QR.
    rt.shutdown().await;
    let rt2 = runtime(&net, instances.clone(), sink).await;
    let mut life2 = rt2.lifecycle();
    assert_eq!(
        rt2.restore(sudevwa::runtime::Admission::default())
            .await
            .unwrap(),
        2
    );
    notice(&mut life2, "l-a online after restart", |n| {
        matches!(n, LifecycleNotice::InstanceStatusChanged { instance_id, status, .. } if instance_id == "l-a" && status == "online")
    })
    .await;
    let b = rt2.actor("l-b").unwrap();
    assert_eq!(
        call_t!(b, InstanceMsg::Status, 5000).unwrap().status,
        InstanceStatus::LoggedOut
    );
    rt2.shutdown().await;
}

/// Every socket drops at once: the instances reconnect by themselves, without a new QR,
/// and their connects pass the admission gate (one at a time, two per second here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_drop_reconnects_within_the_admission_cap() {
    let net = MockNetwork::start().await.unwrap();
    let instances = database("massdrop").await;
    let sink = Arc::new(RecordingSink::default());
    let admission = Admission {
        max_concurrent: 1,
        per_second: 2,
        slot_timeout: Duration::from_secs(30),
    };
    let rt = runtime_admitted(
        &net,
        instances,
        sink,
        RestartPolicy::default(),
        Duration::from_secs(90),
        admission,
    )
    .await;
    let ids = ["m-a", "m-b", "m-c", "m-d"];
    for (i, id) in ids.iter().enumerate() {
        pair(&rt, &net, id, &format!("628150000000{i}")).await;
    }
    let gate = rt.admission_gate();
    let before = gate.stats().attempts;
    let mut life = rt.lifecycle();
    assert!(net.drop_connections(None) >= ids.len());
    let mut back = std::collections::HashSet::new();
    while back.len() < ids.len() {
        if let LifecycleNotice::InstanceStatusChanged {
            instance_id,
            status,
            ..
        } = notice(&mut life, "all back online", |n| {
            matches!(n, LifecycleNotice::InstanceStatusChanged { status, .. } if status == "online")
                || matches!(n, LifecycleNotice::QrGenerated { .. })
        })
        .await
        {
            assert_eq!(status, "online");
            back.insert(instance_id);
        } else {
            panic!("a QR code after a drop");
        }
    }
    let s = gate.stats();
    assert!(s.attempts >= before + ids.len() as u64, "{s:?}");
    assert_eq!(s.max_in_flight, 1, "never more than one connect at a time");
    let at = gate.admitted_at();
    let reconnects = &at[before as usize..];
    for w in reconnects.windows(2) {
        assert!(
            w[1] - w[0] >= gate.gap().mul_f64(0.5),
            "reconnects spaced by the rate: {:?}",
            w[1] - w[0]
        );
    }
    rt.shutdown().await;
}
