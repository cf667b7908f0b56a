//! The presence heartbeat: while online, the instance says "available" at once and
//! then every `presence_interval`, so WhatsApp keeps delivering to it as an active
//! device. The round trip runs beside the actor, never inside it.

use super::{InstanceMsg, InstanceState};
use crate::status::InstanceStatus;
use ractor::ActorRef;
use std::time::Duration;
use tokio::task::JoinHandle;

impl InstanceState {
    /// Action `StartHeartbeat` (replaces a running one).
    pub(super) fn start_heartbeat(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.stop_heartbeat();
        let me = myself.clone();
        let period = self.env.timing.presence_interval;
        self.heartbeat = Some(spawn_ticker(period, move || {
            me.cast(InstanceMsg::Heartbeat).is_ok()
        }));
    }

    /// Action `StopHeartbeat`.
    pub(super) fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// One tick: send "available" if online.
    pub(super) fn heartbeat(&mut self) {
        if self.appear_offline {
            return;
        }
        if let (Some(client), InstanceStatus::Online) = (&self.client, self.status) {
            let (client, id) = (client.clone(), self.id.clone());
            self.ops.track(async move {
                if let Err(e) = client.presence().set_available().await {
                    tracing::debug!(instance_id = %id, error = %e, "presence heartbeat failed");
                }
            });
        }
    }
}

/// Calls `tick` at once and then every `period` until it returns `false` (or the task
/// is aborted). Drives the presence heartbeat.
pub fn spawn_ticker(period: Duration, tick: impl Fn() -> bool + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await; // the first tick is immediate: "available" at once
            if !tick() {
                break;
            }
        }
    })
}
