//! The supervisor's failure matrix with plain actors standing in for instance actors:
//! restart with backoff, parking as crashed, isolation of the other instances, stop
//! without restart, resume, and start-up failures.

use actors::backoff::Backoff;
use actors::{
    actor_name, ChildState, InstanceFactory, InstanceSupervisor, RestartPolicy, SupervisorArgs,
    SupervisorEvent, SupervisorMsg,
};
use async_trait::async_trait;
use ractor::{call_t, Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(10);

/// A stand-in instance actor: answers pings, panics or errors on request.
struct Worker;

enum WorkerMsg {
    Ping(RpcReplyPort<u64>),
    Panic,
    Fail,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = u64;
    type Arguments = (bool, u64);

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        (fail, gen): (bool, u64),
    ) -> Result<u64, ActorProcessingErr> {
        if fail {
            return Err("pre_start refused".into());
        }
        Ok(gen)
    }

    async fn handle(
        &self,
        _me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        gen: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Ping(reply) => {
                let _ = reply.send(*gen);
            }
            WorkerMsg::Panic => panic!("test-only fault hook"),
            WorkerMsg::Fail => return Err("handler returned an error".into()),
        }
        Ok(())
    }
}

/// Counts spawns per instance; can be told to make start-up fail.
#[derive(Default)]
struct Factory {
    spawns: Mutex<HashMap<String, u64>>,
    fail_start: AtomicUsize,
}

impl Factory {
    fn spawns(&self, id: &str) -> u64 {
        self.spawns.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl InstanceFactory for Factory {
    async fn spawn(&self, id: &str, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let gen = {
            let mut m = self.spawns.lock().unwrap();
            let n = m.entry(id.to_string()).or_default();
            *n += 1;
            *n
        };
        let fail = self
            .fail_start
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let (r, _) =
            Actor::spawn_linked(Some(actor_name(id)), Worker, (fail, gen), supervisor).await?;
        Ok(r.get_cell())
    }
}

fn policy(max_restarts: usize) -> RestartPolicy {
    RestartPolicy {
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            factor: 2.0,
        },
        max_restarts,
        window: Duration::from_secs(60),
    }
}

async fn setup(
    max_restarts: usize,
) -> (
    ActorRef<SupervisorMsg>,
    Arc<Factory>,
    broadcast::Receiver<SupervisorEvent>,
) {
    let factory = Arc::new(Factory::default());
    let (tx, rx) = broadcast::channel(256);
    let sup = InstanceSupervisor::spawn(SupervisorArgs {
        factory: factory.clone(),
        policy: policy(max_restarts),
        events: tx,
    })
    .await
    .expect("supervisor starts");
    (sup, factory, rx)
}

async fn start(sup: &ActorRef<SupervisorMsg>, id: &str) {
    let id = id.to_string();
    call_t!(
        sup,
        |reply| SupervisorMsg::Start {
            instance_id: id,
            reply
        },
        5000
    )
    .expect("call")
    .expect("started");
}

async fn state(sup: &ActorRef<SupervisorMsg>, id: &str) -> Option<ChildState> {
    let id = id.to_string();
    call_t!(
        sup,
        |reply| SupervisorMsg::State {
            instance_id: id,
            reply
        },
        5000
    )
    .expect("call")
}

fn worker(id: &str) -> Option<ActorRef<WorkerMsg>> {
    ractor::registry::where_is(actor_name(id)).map(ActorRef::from)
}

async fn ping(id: &str) -> u64 {
    let w = worker(id).expect("worker registered");
    call_t!(w, WorkerMsg::Ping, 5000).expect("ping answered")
}

async fn next_event(rx: &mut broadcast::Receiver<SupervisorEvent>) -> SupervisorEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("event before deadline")
        .expect("event")
}

/// Waits until the named worker is registered and answers with generation `gen`.
async fn wait_generation(id: &str, gen: u64) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(w) = worker(id) {
            if let Ok(g) = call_t!(w, WorkerMsg::Ping, 1000) {
                if g == gen {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{id} never reached generation {gen}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn panicking_instance_is_restarted_then_parked_while_others_run_untouched() {
    let (sup, factory, mut events) = setup(3).await;
    for id in ["a", "b", "c"] {
        start(&sup, id).await;
    }
    let b_before = worker("b").unwrap().get_id();
    let c_before = worker("c").unwrap().get_id();

    // Three failures are restarted with growing backoff ...
    let mut delays = Vec::new();
    for attempt in 1..=3u32 {
        worker("a")
            .expect("a running")
            .cast(WorkerMsg::Panic)
            .unwrap();
        match next_event(&mut events).await {
            SupervisorEvent::Restarting {
                instance_id,
                attempt: n,
                delay,
                reason,
            } => {
                assert_eq!((instance_id.as_str(), n), ("a", attempt));
                assert!(reason.contains("test-only fault hook"), "{reason}");
                delays.push(delay);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            next_event(&mut events).await,
            SupervisorEvent::Restarted {
                instance_id: "a".into(),
                attempt
            }
        );
        wait_generation("a", u64::from(attempt) + 1).await;
        // ... and meanwhile the others answer, with the very same actors.
        assert_eq!(ping("b").await, 1);
        assert_eq!(ping("c").await, 1);
    }
    // Equal jitter keeps each delay in [nominal/2, nominal]: 20ms, 40ms, 80ms.
    for (i, d) in delays.iter().enumerate() {
        let nominal = Duration::from_millis(20 << i);
        assert!(*d >= nominal / 2 && *d <= nominal, "delay {i} = {d:?}");
    }

    // The fourth failure inside the window parks it.
    worker("a").unwrap().cast(WorkerMsg::Fail).unwrap();
    match next_event(&mut events).await {
        SupervisorEvent::Crashed {
            instance_id,
            reason,
        } => {
            assert_eq!(instance_id, "a");
            assert!(reason.contains("handler returned an error"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        state(&sup, "a").await,
        Some(ChildState::Crashed { .. })
    ));
    assert!(worker("a").is_none(), "a crashed actor is not left running");
    assert_eq!(factory.spawns("a"), 4);

    // The others were never restarted.
    assert_eq!(factory.spawns("b"), 1);
    assert_eq!(factory.spawns("c"), 1);
    assert_eq!(worker("b").unwrap().get_id(), b_before);
    assert_eq!(worker("c").unwrap().get_id(), c_before);
    assert_eq!(
        state(&sup, "b").await,
        Some(ChildState::Running { restarts: 0 })
    );
    sup.stop(None);
}

#[tokio::test]
async fn stopped_instance_is_not_restarted() {
    let (sup, factory, mut events) = setup(3).await;
    start(&sup, "s1").await;
    let r = call_t!(
        sup,
        |reply| SupervisorMsg::Stop {
            instance_id: "s1".into(),
            reply
        },
        5000
    )
    .unwrap();
    assert_eq!(r, Ok(()));
    assert!(worker("s1").is_none());
    assert_eq!(state(&sup, "s1").await, None);
    // Starting it again spawns a new actor; no restart events were produced in between.
    start(&sup, "s1").await;
    assert_eq!(factory.spawns("s1"), 2);
    assert!(
        events.try_recv().is_err(),
        "a requested stop is not a failure"
    );
    let r = call_t!(
        sup,
        |reply| SupervisorMsg::Stop {
            instance_id: "nope".into(),
            reply
        },
        5000
    )
    .unwrap();
    assert!(r.is_err());
    sup.stop(None);
}

#[tokio::test]
async fn crashed_instance_can_be_resumed_with_a_fresh_budget() {
    let (sup, _factory, mut events) = setup(0).await;
    start(&sup, "r1").await;
    worker("r1").unwrap().cast(WorkerMsg::Panic).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        SupervisorEvent::Crashed { .. }
    ));
    let r = call_t!(
        sup,
        |reply| SupervisorMsg::Resume {
            instance_id: "r1".into(),
            reply
        },
        5000
    )
    .unwrap();
    assert_eq!(r, Ok(()));
    wait_generation("r1", 2).await;
    assert_eq!(
        state(&sup, "r1").await,
        Some(ChildState::Running { restarts: 0 })
    );
    sup.stop(None);
}

#[tokio::test]
async fn failing_restart_counts_against_the_budget() {
    let (sup, factory, mut events) = setup(2).await;
    start(&sup, "f1").await;
    // The next two start-ups fail in pre_start.
    factory.fail_start.store(2, Ordering::SeqCst);
    worker("f1").unwrap().cast(WorkerMsg::Panic).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        SupervisorEvent::Restarting { attempt: 1, .. }
    ));
    // The restart itself failed: that is the next failure, and the next attempt.
    assert!(matches!(
        next_event(&mut events).await,
        SupervisorEvent::Restarting { attempt: 2, .. }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        SupervisorEvent::Crashed { .. }
    ));
    assert_eq!(factory.spawns("f1"), 3);
    sup.stop(None);
}
