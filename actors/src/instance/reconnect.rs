//! Connection events and the **reconnect policy**.
//!
//! whatsapp-rust's client reconnects by itself after a dropped connection (Fibonacci
//! 1 s, 1 s, 2 s, 3 s, … with ±10 % jitter, capped at 15 min), and stops after
//! terminal events (logged out, stream replaced). This actor does not schedule
//! reconnects (the lifecycle's `ScheduleReconnect` action is a no-op here); it maps
//! what happens to the status words ([`crate::lifecycle`]): `Connected` → online,
//! `Disconnected` → reconnecting, and the ends below with their reason kept for the
//! status; after temporary bans and outdated-client failures the lifecycle stops the
//! client. Every connect, first or again, passes the process-wide admission gate
//! ([`crate::admission`]), so a thousand reconnecting numbers do not stampede.

use super::{InstanceMsg, InstanceState};
use crate::lifecycle::LifecycleEvent;
use ractor::ActorRef;

impl InstanceState {
    /// `Connected`: learn who we are from the device store, then go online.
    pub(super) async fn connected(&mut self, myself: &ActorRef<InstanceMsg>) {
        if let Some(client) = &self.client {
            let device = client.persistence_manager().get_device_snapshot();
            if let Some(pn) = &device.pn {
                self.identity.phone = Some(pn.user.to_string());
                self.identity.jid = Some(pn.to_non_ad().to_string());
            }
            if let Some(lid) = &device.lid {
                self.identity.lid = Some(lid.to_non_ad().to_string());
            }
            if !device.push_name.is_empty() {
                self.identity.push_name = Some(device.push_name.clone());
            }
        }
        self.qr = None;
        self.apply(myself, LifecycleEvent::Connected).await;
    }

    /// A connection ended for a reason worth keeping (logged out, replaced, banned,
    /// outdated): the reason is shown in the status, the lifecycle decides the rest.
    pub(super) async fn lost(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        reason: String,
        event: LifecycleEvent,
    ) {
        metrics::counter!("sudevwa_connection_losses_total", "cause" => cause_of(&event))
            .increment(1);
        self.reason = Some(reason);
        self.apply(myself, event).await;
    }
}

/// The `cause` label of a lost connection.
fn cause_of(event: &LifecycleEvent) -> &'static str {
    match event {
        LifecycleEvent::Disconnected => "disconnected",
        LifecycleEvent::LoggedOutByPhone => "logged_out",
        LifecycleEvent::StreamReplaced => "stream_replaced",
        LifecycleEvent::TempBanned => "temp_banned",
        LifecycleEvent::ClientOutdated => "client_outdated",
        _ => "other",
    }
}
