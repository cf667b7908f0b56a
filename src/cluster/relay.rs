//! Events of instances held by other nodes, for this node's sockets: `/ws` sees every
//! node's lifecycle events and `/api/listen/:id` works on any node.
//!
//! Every event is in the durable event log (`events`, cursor = `seq`) before anyone
//! sees it, so this node tails the log instead of a second channel: one query every
//! [`POLL`] for rows after the last it has: lifecycle events of instances this node
//! does not hold go to `/ws` (its own come from its actors), message events to the
//! listen sockets that follow an instance through the log. Cursors are
//! taken at insert and committed in any order, so a row can appear behind a higher
//! one: the tail keeps the cursors it has seen above the point where the log is known
//! complete, and passes a hole only after [`HOLE_WAIT`] (a rolled-back insert leaves
//! one for good).

use crate::store::journal::MESSAGE_EVENTS;
use actors::events::LiveEvent;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How often the log is read.
const POLL: Duration = Duration::from_millis(200);
/// How long a hole in the cursors is waited for before it is taken as permanent.
const HOLE_WAIT: Duration = Duration::from_secs(5);
/// Rows read per query.
const PAGE: i64 = 1000;

/// A lifecycle event of another node's instance, as `/ws` sends it.
#[derive(Clone, Debug)]
pub struct RemoteNotice {
    pub instance_id: String,
    pub json: String,
}

/// The tail of the event log.
pub struct Relay {
    lifecycle: broadcast::Sender<RemoteNotice>,
    /// Listen sockets of instances held elsewhere, per instance.
    listeners: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
    capacity: usize,
}

impl Relay {
    /// Starts tailing from the log's current end.
    pub async fn start(
        db: DatabaseConnection,
        cluster: Arc<super::Cluster>,
        capacity: usize,
    ) -> Result<Arc<Self>, sea_orm::DbErr> {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COALESCE(MAX(seq), 0) FROM events",
            ))
            .await?;
        let start: i64 = row.and_then(|r| r.try_get_by_index(0).ok()).unwrap_or(0);
        let relay = Arc::new(Self {
            lifecycle: broadcast::channel(1024).0,
            listeners: Mutex::default(),
            capacity: capacity.max(1),
        });
        let r = relay.clone();
        tokio::spawn(async move { r.tail(db, cluster, start).await });
        Ok(relay)
    }

    /// Lifecycle events of instances held by other nodes.
    pub fn lifecycle(&self) -> broadcast::Receiver<RemoteNotice> {
        self.lifecycle.subscribe()
    }

    /// The live message events of `instance_id` (held elsewhere).
    pub fn listen(&self, instance_id: &str) -> broadcast::Receiver<LiveEvent> {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.retain(|_, tx| tx.receiver_count() > 0);
        l.entry(instance_id.to_string())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    async fn tail(
        self: Arc<Self>,
        db: DatabaseConnection,
        cluster: Arc<super::Cluster>,
        start: i64,
    ) {
        // Everything at or below `low` was read; `seen` holds what was read above it.
        let mut low = start;
        let mut seen = BTreeSet::new();
        let mut hole_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(POLL).await;
            let rows = match db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT seq, instance_id, event, payload FROM events \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    vec![low.into(), PAGE.into()],
                ))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event log for other nodes' events failed");
                    continue;
                }
            };
            for r in rows {
                let (Ok(seq), Ok(id), Ok(event), Ok(payload)) = (
                    r.try_get_by_index::<i64>(0),
                    r.try_get_by_index::<String>(1),
                    r.try_get_by_index::<String>(2),
                    r.try_get_by_index::<String>(3),
                ) else {
                    continue;
                };
                if !seen.insert(seq) {
                    continue;
                }
                let held = cluster.holds(&id);
                self.publish(seq, id, event, &payload, held);
            }
            // Move `low` over what is contiguous, and over a hole that stayed open.
            loop {
                match seen.first().copied() {
                    Some(s) if s == low + 1 => {
                        seen.pop_first();
                        low = s;
                        hole_since = None;
                    }
                    Some(s) => {
                        let since = *hole_since.get_or_insert_with(Instant::now);
                        if since.elapsed() < HOLE_WAIT {
                            break;
                        }
                        low = s - 1;
                        hole_since = None;
                    }
                    None => break,
                }
            }
        }
    }

    /// `held`: the instance is held here, so `/ws` has its lifecycle events from the
    /// actor already. Listen sockets that follow it through the log (it was elsewhere
    /// when they opened) keep getting its message events from here.
    fn publish(&self, seq: i64, instance_id: String, event: String, payload: &str, held: bool) {
        if MESSAGE_EVENTS.contains(&event.as_str()) {
            let tx = {
                let l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
                l.get(&instance_id).cloned()
            };
            if let Some(tx) = tx {
                let _ = tx.send(LiveEvent {
                    json: crate::store::journal::event_json(payload, seq),
                    cursor: seq,
                    event,
                });
            }
        } else if !held && event.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            let _ = self.lifecycle.send(RemoteNotice {
                instance_id,
                json: payload.to_string(),
            });
        }
    }
}
