//! `InstanceSupervisor`: starts, stops and restarts one actor per instance.
//!
//! ractor's default supervision stops the supervisor when any child exits and never
//! restarts anything. This supervisor overrides `handle_supervisor_evt` with a
//! one_for_one policy: a failed child (panic, or `Err` from its handler) is restarted
//! alone, after a jittered exponential backoff; more than `max_restarts` failures inside
//! `window` park the instance as crashed with its reason, and every other instance keeps
//! running. A child that stops normally is not restarted.
//!
//! Invariants:
//! - children are found by registry name (`instance:<id>`, [`actor_name`]), never through
//!   a cached reference held elsewhere;
//! - the supervisor itself never fails because of a child: every child problem becomes
//!   a [`SupervisorEvent`] on a bounded broadcast and a state in [`ChildState`];
//! - spawning goes through an [`InstanceFactory`], so the supervisor knows nothing of
//!   WhatsApp and its policy is tested with plain actors.

use crate::backoff::{Backoff, RestartIntensity};
use async_trait::async_trait;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Registry name of an instance's actor.
pub fn actor_name(instance_id: &str) -> String {
    format!("instance:{instance_id}")
}

/// Spawns the actor of one instance, linked to the supervisor.
#[async_trait]
pub trait InstanceFactory: Send + Sync + 'static {
    /// Spawns the actor for `instance_id`, named [`actor_name`]`(instance_id)` and linked
    /// to `supervisor`. Must not block on network I/O: connecting happens inside the actor.
    async fn spawn(&self, instance_id: &str, supervisor: ActorCell) -> Result<ActorCell, SpawnErr>;
}

/// Restart policy.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Delay between a failure and the restart.
    pub backoff: Backoff,
    /// Failures allowed inside `window` before the instance is parked as crashed.
    pub max_restarts: usize,
    /// Length of the restart-intensity window.
    pub window: Duration,
}

impl Default for RestartPolicy {
    /// 5 restarts in 60 s, backoff 0.5 s doubling up to 30 s (DESIGN.md).
    fn default() -> Self {
        Self {
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(30),
                factor: 2.0,
            },
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// What the supervisor knows about one instance's actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChildState {
    /// The actor is alive.
    Running {
        /// How many times it was restarted since it was started or resumed.
        restarts: u32,
    },
    /// The actor failed and will be started again after a backoff.
    Restarting {
        /// Which restart this will be (1-based).
        attempt: u32,
        /// Why it failed.
        reason: String,
    },
    /// The actor failed too often; it stays down until resumed.
    Crashed {
        /// The last failure.
        reason: String,
    },
}

/// Observable supervision events (bounded broadcast; lagging receivers lose old ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// An instance actor failed and a restart is scheduled.
    Restarting {
        instance_id: String,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// An instance actor was restarted.
    Restarted { instance_id: String, attempt: u32 },
    /// An instance was parked after exceeding the restart intensity.
    Crashed { instance_id: String, reason: String },
}

/// Errors the supervisor answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    /// The factory could not start the actor.
    #[error("instance actor failed to start: {0}")]
    SpawnFailed(String),
    /// No such supervised instance.
    #[error("instance is not running under this supervisor")]
    NotFound,
}

/// Messages of [`InstanceSupervisor`].
pub enum SupervisorMsg {
    /// Start the instance's actor (no-op if it is already running or restarting).
    Start {
        instance_id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// Stop the instance's actor for good (no restart) and wait for it to exit.
    Stop {
        instance_id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// Start a crashed instance again with a fresh restart budget.
    Resume {
        instance_id: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// The supervisor's view of one instance.
    State {
        instance_id: String,
        reply: RpcReplyPort<Option<ChildState>>,
    },
    /// Internal: a backoff elapsed; restart if still wanted.
    Restart { instance_id: String, attempt: u32 },
}

/// The supervisor's behaviour (zero state; see [`SupervisorState`]).
pub struct InstanceSupervisor;

/// Start-up arguments.
pub struct SupervisorArgs {
    /// Spawns instance actors.
    pub factory: Arc<dyn InstanceFactory>,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// Where supervision events go.
    pub events: broadcast::Sender<SupervisorEvent>,
}

struct Child {
    /// The live actor, if any.
    cell: Option<ActorCell>,
    /// Failures inside the intensity window.
    intensity: RestartIntensity,
    /// Restarts since start/resume.
    restarts: u32,
    /// Set while a restart is scheduled.
    pending: Option<(u32, String)>,
    /// Set once parked.
    crashed: Option<String>,
}

/// The supervisor's state.
pub struct SupervisorState {
    factory: Arc<dyn InstanceFactory>,
    policy: RestartPolicy,
    events: broadcast::Sender<SupervisorEvent>,
    /// Every instance this supervisor is responsible for, by id.
    children: HashMap<String, Child>,
    /// Which instance a live actor belongs to, for supervision events.
    by_actor: HashMap<ActorId, String>,
}

impl InstanceSupervisor {
    /// Spawns a supervisor (unnamed, so tests and several nodes can run more than one).
    pub async fn spawn(args: SupervisorArgs) -> Result<ActorRef<SupervisorMsg>, SpawnErr> {
        let (r, _handle) = Actor::spawn(None, InstanceSupervisor, args).await?;
        Ok(r)
    }
}

impl Actor for InstanceSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            factory: args.factory,
            policy: args.policy,
            events: args.events,
            children: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start { instance_id, reply } => {
                let res = match state.children.get(&instance_id) {
                    Some(c) if c.cell.is_some() || c.pending.is_some() => Ok(()),
                    Some(c) if c.crashed.is_some() => Ok(()),
                    _ => {
                        let child = Child {
                            cell: None,
                            intensity: RestartIntensity::new(
                                state.policy.max_restarts,
                                state.policy.window,
                            ),
                            restarts: 0,
                            pending: None,
                            crashed: None,
                        };
                        state.children.insert(instance_id.clone(), child);
                        state.start_child(&myself, &instance_id).await
                    }
                };
                if res.is_err() {
                    state.children.remove(&instance_id);
                }
                let _ = reply.send(res);
            }
            SupervisorMsg::Stop { instance_id, reply } => {
                let res = match state.children.remove(&instance_id) {
                    Some(child) => {
                        if let Some(cell) = child.cell {
                            state.by_actor.remove(&cell.get_id());
                            // Unlink first so its exit is not seen as a failure to handle.
                            cell.unlink(myself.get_cell());
                            let _ = cell
                                .stop_and_wait(
                                    Some("stopped".into()),
                                    Some(Duration::from_secs(30)),
                                )
                                .await;
                        }
                        Ok(())
                    }
                    None => Err(SupervisorError::NotFound),
                };
                let _ = reply.send(res);
            }
            SupervisorMsg::Resume { instance_id, reply } => {
                let res = match state.children.get_mut(&instance_id) {
                    Some(c) if c.crashed.is_some() => {
                        c.crashed = None;
                        c.restarts = 0;
                        c.intensity.reset();
                        state.start_child(&myself, &instance_id).await
                    }
                    Some(_) => Ok(()),
                    None => Err(SupervisorError::NotFound),
                };
                let _ = reply.send(res);
            }
            SupervisorMsg::State { instance_id, reply } => {
                let st = state.children.get(&instance_id).map(|c| {
                    if let Some(reason) = &c.crashed {
                        ChildState::Crashed {
                            reason: reason.clone(),
                        }
                    } else if let Some((attempt, reason)) = &c.pending {
                        ChildState::Restarting {
                            attempt: *attempt,
                            reason: reason.clone(),
                        }
                    } else {
                        ChildState::Running {
                            restarts: c.restarts,
                        }
                    }
                });
                let _ = reply.send(st);
            }
            SupervisorMsg::Restart {
                instance_id,
                attempt,
            } => {
                let still_wanted = matches!(
                    state.children.get(&instance_id),
                    Some(c) if c.pending.as_ref().map(|p| p.0) == Some(attempt) && c.cell.is_none()
                );
                if still_wanted {
                    if let Some(c) = state.children.get_mut(&instance_id) {
                        c.pending = None;
                        c.restarts = attempt;
                    }
                    match state.start_child(&myself, &instance_id).await {
                        Ok(()) => {
                            let _ = state.events.send(SupervisorEvent::Restarted {
                                instance_id: instance_id.clone(),
                                attempt,
                            });
                        }
                        Err(e) => state.on_failure(&myself, &instance_id, e.to_string()),
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    if let Some(c) = state.children.get_mut(&id) {
                        c.cell = None;
                    }
                    tracing::warn!(instance_id = %id, error = %err, "instance actor failed");
                    state.on_failure(&myself, &id, err.to_string());
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A normal exit the supervisor did not ask for: the actor chose to stop
                // (e.g. after being deleted). Forget it; nothing to restart.
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    tracing::info!(instance_id = %id, reason = ?reason, "instance actor stopped");
                    state.children.remove(&id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn start_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        instance_id: &str,
    ) -> Result<(), SupervisorError> {
        let cell = self
            .factory
            .spawn(instance_id, myself.get_cell())
            .await
            .map_err(|e| SupervisorError::SpawnFailed(e.to_string()))?;
        self.by_actor.insert(cell.get_id(), instance_id.to_string());
        if let Some(c) = self.children.get_mut(instance_id) {
            c.cell = Some(cell);
        }
        Ok(())
    }

    /// Records a failure and either schedules a restart or parks the instance.
    fn on_failure(&mut self, myself: &ActorRef<SupervisorMsg>, instance_id: &str, reason: String) {
        let Some(c) = self.children.get_mut(instance_id) else {
            return;
        };
        c.cell = None;
        match c.intensity.record(Instant::now()) {
            Some(retry) => {
                let attempt = c.restarts + 1;
                let delay = self.policy.backoff.delay(retry);
                c.pending = Some((attempt, reason.clone()));
                let _ = self.events.send(SupervisorEvent::Restarting {
                    instance_id: instance_id.to_string(),
                    attempt,
                    delay,
                    reason,
                });
                let id = instance_id.to_string();
                myself.send_after(delay, move || SupervisorMsg::Restart {
                    instance_id: id,
                    attempt,
                });
            }
            None => {
                tracing::error!(instance_id, reason = %reason, "instance parked as crashed");
                c.pending = None;
                c.crashed = Some(reason.clone());
                let _ = self.events.send(SupervisorEvent::Crashed {
                    instance_id: instance_id.to_string(),
                    reason,
                });
            }
        }
    }
}
