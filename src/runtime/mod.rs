//! The instance runtime: the supervisor, the factory that builds instance actors on
//! this database, start-up recovery with admission control, and shutdown.
//!
//! Handlers reach instances only through [`InstanceHandle`]s ([`InstanceRuntime::handle`],
//! a registry lookup by `instance:<id>`, whose methods own their deadlines); nothing
//! here caches an actor ref. Creating, deleting and finding an instance by its number
//! live here too, so the HTTP layer only parses and maps.

mod handle;

pub use handle::{Content, InstanceHandle, QrStart, Recipient};

use crate::store::instances::{DbInstanceStore, Instance, Instances};
use actors::events::{EventSink, LifecycleNotice};
use actors::instance::InstanceError;
use actors::instance::{
    Durability, InstanceActor, InstanceArgs, InstanceEnv, InstanceMsg, InstanceTiming, WaOptions,
};
use actors::{
    actor_name, InstanceFactory, InstanceStatus, InstanceSupervisor, RestartPolicy, SupervisorArgs,
    SupervisorEvent, SupervisorMsg,
};
use async_trait::async_trait;
use ractor::{call_t, Actor, ActorCell, ActorRef, SpawnErr};
use sea_orm::DbErr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Limits on how fast stored instances reconnect at start-up, so a thousand instances
/// do not stampede WhatsApp (or the database) at once.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Instances connecting at the same time.
    pub max_concurrent: usize,
    /// New connects started per second.
    pub per_second: u32,
    /// How long one connect may hold its slot before the next one is let in anyway.
    pub slot_timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_concurrent: 8,
            per_second: 4,
            slot_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds instance actors on the database.
struct Factory {
    env: Arc<InstanceEnv>,
    instances: Instances,
}

#[async_trait]
impl InstanceFactory for Factory {
    async fn spawn(&self, instance_id: &str, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let row = self
            .instances
            .get(instance_id)
            .await
            .map_err(|e| SpawnErr::StartupFailed(format!("loading instance: {e}").into()))?
            .ok_or_else(|| SpawnErr::StartupFailed("no such instance".into()))?;
        let stored_status = row.status.parse().unwrap_or(InstanceStatus::Disconnected);
        let args = InstanceArgs {
            instance_id: instance_id.to_string(),
            device_name: row.device_name,
            stored_status,
            env: self.env.clone(),
        };
        let (r, _) = Actor::spawn_linked(
            Some(actor_name(instance_id)),
            InstanceActor,
            args,
            supervisor,
        )
        .await?;
        Ok(r.get_cell())
    }
}

/// The running instances of this process.
#[derive(Clone)]
pub struct InstanceRuntime {
    supervisor: ActorRef<SupervisorMsg>,
    instances: Instances,
    env: Arc<InstanceEnv>,
    supervisor_events: broadcast::Sender<SupervisorEvent>,
    /// Restarts by the supervisor since this process started, per instance.
    restarts: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// The stored instances were restored (see [`InstanceRuntime::restore`]).
    restored: Arc<std::sync::atomic::AtomicBool>,
    /// This node's part in a cluster, if any.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Why a resume did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("the instance is not crashed")]
    NotCrashed,
    #[error("{0}")]
    Failed(String),
}

/// Why creating, deleting or finding an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("the instance is still connected; log it out first")]
    StillConnected,
}

/// A new instance id (a random UUID-shaped hex string).
fn new_instance_id() -> String {
    let h = hex::encode(rand::random::<[u8; 16]>());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// How to build the runtime.
pub struct RuntimeConfig {
    pub options: WaOptions,
    pub timing: InstanceTiming,
    pub restart: RestartPolicy,
    pub sink: Arc<dyn EventSink>,
    /// How incoming messages are made durable.
    pub durability: Durability,
    pub listener_capacity: usize,
    pub lifecycle_capacity: usize,
    /// Limits on connects (first connects, restores and reconnects alike).
    pub admission: Admission,
    /// Where incoming media is saved, if anywhere.
    pub media_dir: Option<Arc<actors::instance::MediaDir>>,
    /// This node's part in a cluster: instances run here only under its lease.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl InstanceRuntime {
    /// Starts the supervisor (no instances yet; see [`InstanceRuntime::restore`]).
    pub async fn start(instances: Instances, cfg: RuntimeConfig) -> Result<Self, SpawnErr> {
        let (lifecycle, _) = broadcast::channel(cfg.lifecycle_capacity.max(1));
        let env = Arc::new(InstanceEnv {
            options: cfg.options,
            timing: cfg.timing,
            store: Arc::new(DbInstanceStore::new(instances.clone())),
            lifecycle,
            sink: cfg.sink,
            durability: cfg.durability,
            listener_capacity: cfg.listener_capacity,
            admission: actors::admission::AdmissionGate::new(
                cfg.admission.max_concurrent,
                cfg.admission.per_second,
            ),
            media_dir: cfg.media_dir,
            connect_permit: cfg
                .cluster
                .clone()
                .map(|c| c as Arc<dyn actors::admission::ConnectPermit>),
        });
        let (supervisor_events, _) = broadcast::channel(256);
        let supervisor = InstanceSupervisor::spawn(SupervisorArgs {
            factory: Arc::new(Factory {
                env: env.clone(),
                instances: instances.clone(),
            }),
            policy: cfg.restart,
            events: supervisor_events.clone(),
        })
        .await?;
        let rt = Self {
            supervisor,
            instances,
            env,
            supervisor_events,
            restarts: Arc::default(),
            restored: Arc::default(),
            cluster: cfg.cluster,
        };
        rt.watch_supervision();
        Ok(rt)
    }

    /// Makes supervision visible: a parked instance is stored as `crashed` (reason and
    /// time), announced on `/ws` (`INSTANCE_STATUS_CHANGED` and `INSTANCE_ERROR`
    /// `INSTANCE_CRASHED`) and in the event log (webhooks that take those events);
    /// restarts are counted.
    fn watch_supervision(&self) {
        let mut rx = self.supervisor_events.subscribe();
        let (instances, env, restarts) = (
            self.instances.clone(),
            self.env.clone(),
            self.restarts.clone(),
        );
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(SupervisorEvent::Restarted { instance_id, .. }) => {
                        crate::metrics::instance_restart();
                        let mut r = restarts.lock().unwrap_or_else(|p| p.into_inner());
                        *r.entry(instance_id).or_default() += 1;
                    }
                    Ok(SupervisorEvent::Crashed {
                        instance_id,
                        reason,
                    }) => {
                        if let Err(e) = instances.mark_crashed(&instance_id, &reason).await {
                            tracing::error!(instance_id, error = %e, "storing the crashed status failed");
                        }
                        let phone = instances
                            .get(&instance_id)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|r| r.phone);
                        let notices = [
                            LifecycleNotice::InstanceStatusChanged {
                                instance_id: instance_id.clone(),
                                phone_number: phone,
                                status: InstanceStatus::Crashed.as_str().to_string(),
                                is_connected: false,
                                connected_at: None,
                                disconnected_at: Some(actors::events::rfc3339(chrono::Utc::now())),
                            },
                            LifecycleNotice::InstanceError {
                                instance_id: instance_id.clone(),
                                code: "INSTANCE_CRASHED".into(),
                                message: "The instance failed repeatedly and is parked; POST /api/instances/:id/resume starts it again".into(),
                            },
                        ];
                        for n in notices {
                            if let Err(e) = env.sink.record_lifecycle(&n).await {
                                tracing::warn!(instance_id, error = %e, "logging the crash event failed");
                            }
                            let _ = env.lifecycle.send(n);
                        }
                    }
                    Ok(SupervisorEvent::Restarting { .. }) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "supervision events were missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Restarts by the supervisor since this process started.
    pub fn restarts(&self, instance_id: &str) -> u32 {
        let r = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        r.get(instance_id).copied().unwrap_or(0)
    }

    /// Starts a crashed (parked) instance again with a fresh restart budget; it comes
    /// back as after a restart (a paired one reconnects).
    pub async fn resume(&self, instance_id: &str) -> Result<(), ResumeError> {
        if !self
            .instances
            .clear_crashed(instance_id)
            .await
            .map_err(|e| ResumeError::Failed(e.to_string()))?
        {
            return Err(ResumeError::NotCrashed);
        }
        let id = instance_id.to_string();
        let r = call_t!(
            self.supervisor,
            |reply| SupervisorMsg::Resume {
                instance_id: id,
                reply
            },
            30_000
        )
        .map_err(|e| ResumeError::Failed(e.to_string()))?;
        match r {
            Ok(()) => Ok(()),
            // Parked by an earlier process: this supervisor never ran it; a plain start.
            Err(actors::SupervisorError::NotFound) => self
                .ensure_started(instance_id)
                .await
                .map(|_| ())
                .map_err(ResumeError::Failed),
            Err(e) => Err(ResumeError::Failed(e.to_string())),
        }
    }

    /// Lifecycle notices of every instance (for `/ws`).
    pub fn lifecycle(&self) -> broadcast::Receiver<LifecycleNotice> {
        self.env.lifecycle.subscribe()
    }

    /// Counters of the connect gate.
    pub fn admission_stats(&self) -> actors::admission::AdmissionStats {
        self.env.admission.stats()
    }

    /// The connect gate (tests read when connects were let through).
    pub fn admission_gate(&self) -> Arc<actors::admission::AdmissionGate> {
        self.env.admission.clone()
    }

    /// Supervision events (restarts, crashes).
    pub fn supervisor_events(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.supervisor_events.subscribe()
    }

    /// The instance rows.
    pub fn instances(&self) -> &Instances {
        &self.instances
    }

    /// Marks the start-up restore as finished (`GET /ready` answers 200 from then on).
    pub fn mark_restored(&self) {
        self.restored
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the start-up restore finished.
    pub fn is_restored(&self) -> bool {
        self.restored.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The live actor of an instance, found by registry name.
    pub fn actor(&self, instance_id: &str) -> Option<ActorRef<InstanceMsg>> {
        ractor::registry::where_is(actor_name(instance_id)).map(ActorRef::from)
    }

    /// The handle of a running instance.
    pub fn handle(&self, instance_id: &str) -> Option<InstanceHandle> {
        self.actor(instance_id).map(InstanceHandle::new)
    }

    /// The handle of an existing instance, started if it is not running.
    pub async fn ensure_handle(&self, instance_id: &str) -> Result<InstanceHandle, InstanceError> {
        self.ensure_started(instance_id)
            .await
            .map(InstanceHandle::new)
            .map_err(|e| {
                tracing::warn!(instance_id = %instance_id, error = %e, "instance actor could not start");
                InstanceError::Unavailable
            })
    }

    /// Creates an instance (row, then its actor, waiting for a QR); returns its id.
    pub async fn create(&self, device_name: &str) -> Result<String, RuntimeError> {
        let id = new_instance_id();
        if let Some(c) = &self.cluster {
            // A new instance belongs to the node that creates it: leased before its
            // row exists, so no other node takes it as a free one meanwhile.
            c.claim_new(&id).await?;
        }
        self.instances.create(&id, device_name).await?;
        self.ensure_handle(&id).await?;
        Ok(id)
    }

    /// Deletes an instance that is not connected: its actor stops, then the row, its
    /// tokens, logs and outbox go in one transaction.
    pub async fn delete(&self, instance_id: &str) -> Result<(), RuntimeError> {
        if let Some(h) = self.handle(instance_id) {
            let s = h.status().await?;
            if s.is_connected || s.status == InstanceStatus::Online {
                return Err(RuntimeError::StillConnected);
            }
        }
        self.stop(instance_id).await.map_err(|e| {
            tracing::warn!(instance_id = %instance_id, error = %e, "stopping an instance failed");
            InstanceError::Unavailable
        })?;
        self.instances.delete(instance_id).await?;
        if let Some(c) = &self.cluster {
            c.forget(instance_id).await?;
        }
        Ok(())
    }

    /// The ready (online, logged-in) instance whose own number is `phone` among those
    /// `visible` lets the caller see; looked up by the phone index.
    pub async fn ready_by_phone(
        &self,
        phone: &str,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Option<(Instance, InstanceHandle)>, DbErr> {
        for row in self.instances.online_with_phone(phone).await? {
            if !visible(&row.id) {
                continue;
            }
            if let Some(h) = self.handle(&row.id) {
                if h.ready().await.is_ok() {
                    return Ok(Some((row, h)));
                }
            }
        }
        Ok(None)
    }

    /// Starts (or finds) the actor of an existing instance.
    pub async fn ensure_started(&self, instance_id: &str) -> Result<ActorRef<InstanceMsg>, String> {
        if let Some(a) = self.actor(instance_id) {
            return Ok(a);
        }
        if let Some(c) = &self.cluster {
            if !c.holds(instance_id) {
                return Err("the instance is held by another node of the cluster".into());
            }
        }
        let id = instance_id.to_string();
        call_t!(
            self.supervisor,
            |reply| SupervisorMsg::Start {
                instance_id: id,
                reply
            },
            30_000
        )
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.actor(instance_id)
            .ok_or_else(|| "instance actor is not running".to_string())
    }

    /// Stops an instance's actor for good (before deletion).
    pub async fn stop(&self, instance_id: &str) -> Result<(), String> {
        let id = instance_id.to_string();
        call_t!(
            self.supervisor,
            |reply| SupervisorMsg::Stop {
                instance_id: id,
                reply
            },
            60_000
        )
        .map_err(|e| e.to_string())?
        .or(Ok(()))
    }

    /// Brings every stored instance back: paired ones reconnect, QR-waiting ones become
    /// ready for a new QR. Connects are admitted at most `max_concurrent` at a time and
    /// `per_second` per second, with jitter; a slot frees when the instance reaches a
    /// settled state or after `slot_timeout`.
    pub async fn restore(&self, admission: Admission) -> Result<usize, String> {
        let rows = self.instances.list().await.map_err(|e| e.to_string())?;
        let slots = Arc::new(tokio::sync::Semaphore::new(admission.max_concurrent.max(1)));
        let gap = Duration::from_secs_f64(1.0 / f64::from(admission.per_second.max(1)));
        let mut started = 0;
        for row in rows {
            let status: InstanceStatus = row.status.parse().unwrap_or(InstanceStatus::Disconnected);
            if status == InstanceStatus::Crashed {
                continue; // parked until an operator resumes it
            }
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            // Jitter spreads the connects inside each second.
            tokio::time::sleep(gap.mul_f64(0.5 + actors::backoff::random_unit())).await;
            match self.ensure_started(&row.id).await {
                Ok(actor) => {
                    started += 1;
                    let timeout = admission.slot_timeout;
                    tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + timeout;
                        while tokio::time::Instant::now() < deadline {
                            match call_t!(actor, InstanceMsg::Status, 5_000) {
                                Ok(s) if s.status != InstanceStatus::Reconnecting => break,
                                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                                Err(_) => break,
                            }
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::error!(instance_id = %row.id, error = %e, "restoring instance failed")
                }
            }
        }
        Ok(started)
    }

    /// Stops every actor cleanly (clients disconnect and flush), then the supervisor.
    pub async fn shutdown(&self) {
        let rows = self.instances.list().await.unwrap_or_default();
        for row in rows {
            if let Some(actor) = self.actor(&row.id) {
                let _ = call_t!(actor, InstanceMsg::Shutdown, 15_000);
            }
        }
        self.supervisor.stop(Some("shutdown".into()));
    }
}
