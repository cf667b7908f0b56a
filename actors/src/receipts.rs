//! Message statuses (server acks, delivery and read receipts) are stored off the
//! instance actor's mailbox: one task per instance takes them in arrival order and
//! stores each burst with one [`EventSink::record_statuses`] call (one transaction in
//! the journal), then broadcasts the stored events. The actor only queues them, so a
//! busy database never delays its answers to status requests, sends or lifecycle.

use crate::events::{EventSink, LiveEvent, MessageStatus};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Statuses stored together at most.
const MAX_BATCH: usize = 256;
/// Statuses queued before the actor waits for the writer (bounded memory).
const QUEUE: usize = 4096;

/// The instance's status writer; its task starts with the first status (an idle
/// instance has none). Dropping it lets the task store what is queued and end.
pub(crate) struct StatusWriter {
    instance_id: String,
    sink: Arc<dyn EventSink>,
    listeners: broadcast::Sender<LiveEvent>,
    tx: Option<mpsc::Sender<MessageStatus>>,
}

impl StatusWriter {
    pub(crate) fn new(
        instance_id: String,
        sink: Arc<dyn EventSink>,
        listeners: broadcast::Sender<LiveEvent>,
    ) -> Self {
        Self {
            instance_id,
            sink,
            listeners,
            tx: None,
        }
    }

    /// Queues `st`; waits only while the queue is full.
    pub(crate) async fn push(&mut self, st: MessageStatus) {
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(
                self.instance_id.clone(),
                self.sink.clone(),
                self.listeners.clone(),
                rx,
            ));
            tx
        });
        // The task ends only after every sender is gone, so this cannot fail while
        // `self` lives; if it ever did, the status is lost, which is logged.
        if tx.send(st).await.is_err() {
            tracing::warn!("the status writer has stopped; a message status was not stored");
        }
    }
}

async fn run(
    instance_id: String,
    sink: Arc<dyn EventSink>,
    listeners: broadcast::Sender<LiveEvent>,
    mut rx: mpsc::Receiver<MessageStatus>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match sink.record_statuses(&batch).await {
            Ok(events) => {
                for e in events {
                    let _ = listeners.send(e);
                }
            }
            Err(e) => {
                tracing::warn!(instance_id = %instance_id, error = %e, count = batch.len(), "recording message statuses failed")
            }
        }
        batch.clear();
    }
}
