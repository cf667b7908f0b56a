//! Acknowledged only when stored: the instance's whatsapp-rust inbound durability hook.
//!
//! whatsapp-rust calls [`CommitHook::on_messages`] for every decrypted batch of user
//! messages *before* it acknowledges them to WhatsApp. The hook commits them through
//! the [`EventSink`] (message log, event log and webhook outbox in one transaction) and
//! only then returns `Ok`, which releases the acks. On failure it returns `Err`: the
//! acks are withheld, WhatsApp keeps the messages queued, and the actor is told
//! ([`InstanceMsg::CommitFailed`]) so it can probe the storage and reconnect once it
//! takes writes again — WhatsApp then redelivers, and whatsapp-rust replays each
//! message from its pending-inbound buffer into this hook.
//!
//! Idempotent: the sink stores each (chat, sender, message id) once and returns events
//! only for what it newly stored, so a replay after a lost ack reports nothing twice.
//!
//! Not covered (whatsapp-rust acks these on their own path, the hook never sees them):
//! newsletter/channel messages and placeholder (PDO) recoveries; the actor still
//! stores them when their `Messages` event arrives, after the ack.

use crate::events::{EventSink, LiveEvent};
use crate::instance::{incoming, is_signalling, InstanceMsg};
use ractor::ActorRef;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use whatsapp_rust::types::durability_hook::{InboundDurabilityHook, InboundMessage};
use whatsapp_rust::Client;

/// The hook of one client generation of one instance.
pub struct CommitHook {
    pub instance_id: String,
    pub sink: Arc<dyn EventSink>,
    /// The instance's live listeners: newly stored events are broadcast after commit.
    pub listeners: broadcast::Sender<LiveEvent>,
    pub actor: ActorRef<InstanceMsg>,
    /// The client generation this hook belongs to.
    pub generation: u64,
    /// Test-only fault: park forever before committing.
    pub park: bool,
}

/// The line the parking fault prints on stdout once it holds a batch.
pub const PARKED_LINE: &str = "fault: inbound commit parked";

#[async_trait::async_trait]
impl InboundDurabilityHook for CommitHook {
    async fn on_messages(
        &self,
        client: Arc<Client>,
        batch: &[InboundMessage],
    ) -> anyhow::Result<()> {
        let mut msgs: Vec<_> = batch
            .iter()
            .filter(|m| !is_signalling(&m.message))
            .map(|m| incoming(&self.instance_id, &m.message, &m.info))
            .collect();
        if msgs.is_empty() {
            return Ok(());
        }
        crate::instance::fill_ids(&client, &mut msgs).await;
        crate::instance::open_votes(&client, self.sink.as_ref(), &self.instance_id, &mut msgs)
            .await;
        if self.park {
            println!("{PARKED_LINE}");
            std::future::pending::<()>().await;
        }
        match self.sink.commit_incoming(&self.instance_id, &msgs).await {
            Ok(events) => {
                for e in events {
                    // No listener is fine.
                    let _ = self.listeners.send(e);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(instance_id = %self.instance_id, messages = msgs.len(), error = %e, "commit of incoming messages failed; ack withheld");
                let _ = self.actor.cast(InstanceMsg::CommitFailed(self.generation));
                Err(anyhow::anyhow!(e))
            }
        }
    }
}

/// Probes the storage until it takes writes again (1 s, growing to 5 s between
/// tries), then tells the actor. Ends by itself when the actor is gone.
pub fn spawn_storage_probe(sink: Arc<dyn EventSink>, actor: ActorRef<InstanceMsg>) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            match sink.probe_writable().await {
                Ok(()) => {
                    let _ = actor.cast(InstanceMsg::StorageRecovered);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "storage still refuses writes"),
            }
            if actor.get_status() == ractor::ActorStatus::Stopped {
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    });
}
