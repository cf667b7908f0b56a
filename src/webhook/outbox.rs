//! The `webhook_outbox` table: rows written with the events they carry, read by the
//! worker, listed and queued again through the API.

use crate::store::instances::entity as instance;
use actors::events::IncomingMessage;
use async_trait::async_trait;
use sea_orm::entity::prelude::*;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, QueryOrder, QuerySelect, QueryTrait,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The `webhook_outbox` row.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// One event to deliver.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub instance_id: String,
        pub event: String,
        pub payload: String,
        /// `pending`, `delivered` or `dead`.
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: i64,
        pub last_status_code: Option<i32>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub delivered_at: Option<i64>,
        /// The webhook URL the row was queued for (`None`: queued before this was kept).
        pub target: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A due row as a worker's pass reads it.
#[derive(Clone, Debug, sea_orm::FromQueryResult)]
pub(super) struct DueRow {
    pub id: String,
    pub instance_id: String,
}

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD: &str = "dead";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The outbox table.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub(super) db: DatabaseConnection,
    /// A cluster node's id: an instance's rows are delivered by one node at a time,
    /// the one holding its claim (see [`Outbox::claim`]). `None`: a single node.
    node: Option<Arc<str>>,
}

impl Outbox {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, node: None }
    }

    /// The outbox of cluster node `node` (PostgreSQL; `webhook_claims`).
    pub fn for_node(db: DatabaseConnection, node: &str) -> Self {
        Self {
            db,
            node: Some(node.into()),
        }
    }

    /// Whether rows are delivered under per-instance claims (a cluster node).
    pub(super) fn is_clustered(&self) -> bool {
        self.node.is_some()
    }

    /// Whether this node may deliver `instance_id`'s rows now: on a single node
    /// always; in a cluster only while it holds the instance's delivery claim, taken
    /// here for `hold` (free, expired, or already ours). Two nodes racing for the same
    /// rows: one gets the claim, the other skips them; a node dying mid-delivery
    /// leaves the rows pending and its claim expires.
    pub(super) async fn claim(&self, instance_id: &str, hold: Duration) -> Result<bool, DbErr> {
        let Some(node) = &self.node else {
            return Ok(true);
        };
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "INSERT INTO webhook_claims (instance_id, node_id, until) \
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (instance_id) DO UPDATE SET node_id = EXCLUDED.node_id, \
                 until = EXCLUDED.until \
                 WHERE webhook_claims.until < now() OR webhook_claims.node_id = EXCLUDED.node_id \
                 RETURNING 1",
                vec![
                    instance_id.into(),
                    node.to_string().into(),
                    (hold.as_millis() as i64).into(),
                ],
            ))
            .await?;
        Ok(row.is_some())
    }

    /// Gives `instance_id`'s delivery claim back (a cluster node, after its turn).
    pub(super) async fn release(&self, instance_id: &str) -> Result<(), DbErr> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        self.db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "DELETE FROM webhook_claims WHERE instance_id = $1 AND node_id = $2",
                vec![instance_id.into(), node.to_string().into()],
            ))
            .await?;
        Ok(())
    }

    /// Writes `msg` for delivery if its instance has a webhook; returns the event id.
    pub async fn enqueue(&self, msg: &IncomingMessage) -> Result<Option<String>, DbErr> {
        let Some(row) = instance::Entity::find_by_id(msg.instance_id.clone())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        if row.webhook_url.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        let id = event_id(now);
        entity::Entity::insert(entity::ActiveModel {
            id: Set(id.clone()),
            instance_id: Set(msg.instance_id.clone()),
            event: Set(msg.event().into()),
            payload: Set(msg.to_envelope().to_string()),
            status: Set(PENDING.into()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_status_code: Set(None),
            last_error: Set(None),
            created_at: Set(now),
            delivered_at: Set(None),
            target: Set(row.webhook_url.clone()),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(Some(id))
    }

    /// The oldest due rows of instances not in `busy`, at most `limit`, in due order
    /// (one statement for a whole pass of the worker, however many instances it feeds).
    /// Only their ids and instances: a pass may read rows of instances it then cannot
    /// start (no free slot, more than a batch), so payloads are read per started batch
    /// ([`Outbox::pending_rows`]).
    pub(super) async fn due_rows(&self, limit: u64, busy: &[String]) -> Result<Vec<DueRow>, DbErr> {
        let mut q = entity::Entity::find()
            .select_only()
            .column(entity::Column::Id)
            .column(entity::Column::InstanceId)
            .filter(entity::Column::Status.eq(PENDING))
            .filter(entity::Column::NextAttemptAt.lte(now_ms()));
        if !busy.is_empty() {
            q = q.filter(entity::Column::InstanceId.is_not_in(busy.iter().cloned()));
        }
        in_due_order(q)
            .limit(limit)
            .into_model::<DueRow>()
            .all(&self.db)
            .await
    }

    /// The rows among `ids` still pending, in the order of `ids`.
    pub(super) async fn pending_rows(&self, ids: &[String]) -> Result<Vec<entity::Model>, DbErr> {
        // The status is checked here, not in the query: with it there SQLite would
        // walk the due index's pending entries instead of looking the ids up.
        let mut rows = entity::Entity::find()
            .filter(entity::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.db)
            .await?;
        rows.retain(|r| r.status == PENDING);
        let at: std::collections::HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        rows.sort_by_key(|r| at.get(r.id.as_str()).copied().unwrap_or(usize::MAX));
        Ok(rows)
    }

    /// The oldest due rows of one instance, at most `limit`; with `from`, only those
    /// due at or after it. The due index orders every instance's rows together, so
    /// without a bound the lookup walks all rows due before this instance's first,
    /// such as a hung endpoint's backlog; a turn passes the due time of the last row
    /// it delivered (no pending row of the instance can be due before it: new and
    /// retried rows are due from their writing on).
    pub(super) async fn due_of(
        &self,
        instance_id: &str,
        limit: u64,
        from: Option<i64>,
    ) -> Result<Vec<entity::Model>, DbErr> {
        let mut q = entity::Entity::find()
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Status.eq(PENDING))
            .filter(entity::Column::NextAttemptAt.lte(now_ms()));
        if let Some(from) = from {
            q = q.filter(entity::Column::NextAttemptAt.gte(from));
        }
        in_due_order(q).limit(limit).all(&self.db).await
    }

    /// The earliest time a pending row of an instance not in `busy` becomes due, if
    /// any (a busy instance's batch wakes the worker when it ends).
    pub(super) async fn next_due(&self, busy: &[String]) -> Result<Option<i64>, DbErr> {
        let mut q = entity::Entity::find().filter(entity::Column::Status.eq(PENDING));
        if !busy.is_empty() {
            q = q.filter(entity::Column::InstanceId.is_not_in(busy.iter().cloned()));
        }
        Ok(q.order_by_asc(entity::Column::NextAttemptAt)
            .one(&self.db)
            .await?
            .map(|r| r.next_attempt_at))
    }

    pub(super) async fn record(&self, id: &str, update: entity::ActiveModel) -> Result<(), DbErr> {
        let st = entity::Entity::update_many()
            .set(update)
            .filter(entity::Column::Id.eq(id))
            .build(self.db.get_database_backend());
        crate::store::queue::write_statements(&self.db, false, vec![st])
            .await
            .map(|_| ())
    }

    /// One row.
    pub async fn get(&self, id: &str) -> Result<Option<entity::Model>, DbErr> {
        entity::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    /// Recent rows of an instance, newest first.
    pub async fn list(&self, instance_id: &str, limit: u64) -> Result<Vec<entity::Model>, DbErr> {
        entity::Entity::find()
            .filter(entity::Column::InstanceId.eq(instance_id))
            .order_by_desc(entity::Column::CreatedAt)
            .order_by_desc(entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
    }

    /// Queues a row again (attempts reset), if `rule` allows it.
    pub async fn redeliver_checked(
        &self,
        instance_id: &str,
        id: &str,
        rule: &super::RedeliverRule,
    ) -> Result<super::Redelivery, DbErr> {
        use super::Redelivery;
        let Some(row) = self.get(id).await?.filter(|r| r.instance_id == instance_id) else {
            return Ok(Redelivery::NotFound);
        };
        if row.payload.is_empty() {
            return Ok(Redelivery::PayloadExpired);
        }
        // An instance token may send an event again only to the URL it was queued for:
        // never old message bodies to a URL set since.
        if !rule.admin && (row.target.is_none() || row.target != rule.current_url) {
            return Ok(Redelivery::UrlChanged);
        }
        Ok(if self.redeliver(instance_id, id).await? {
            Redelivery::Queued
        } else {
            Redelivery::NotFound
        })
    }

    /// Queues a row again (attempts reset); `false` when the instance has no such row.
    pub async fn redeliver(&self, instance_id: &str, id: &str) -> Result<bool, DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        let r = entity::Entity::update_many()
            .col_expr(entity::Column::Status, Expr::value(PENDING))
            .col_expr(entity::Column::Attempts, Expr::value(0))
            .col_expr(entity::Column::NextAttemptAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Payload.ne(""))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }
}

/// Rows in the order the worker delivers them: due time, then creation time, then id
/// (rows written in one transaction share their times; see [`event_id`]).
fn in_due_order(q: sea_orm::Select<entity::Entity>) -> sea_orm::Select<entity::Entity> {
    q.order_by_asc(entity::Column::NextAttemptAt)
        .order_by_asc(entity::Column::CreatedAt)
        .order_by_asc(entity::Column::Id)
}

/// A new outbox row's id: `evt_` and 32 hex digits, the first 12 the time in
/// milliseconds and the other 20 random (80 bits). Time first, so new rows go to the end
/// of the table's primary-key index, not to a random page of it: under load a group
/// commit touches one or two of its pages instead of one per row.
///
/// Ids from one process only grow: within a millisecond (or if the clock steps back)
/// the next id is the previous one plus one. Rows written in one transaction share
/// their times, so the id is what orders them for delivery (see
/// [`in_due_order`]): an instance's events reach its webhook in the order they were
/// written.
pub fn event_id(now_ms: i64) -> String {
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let ms = u128::from(u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff);
    let fresh = ms << 80 | rand::random::<u128>() >> 48;
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    // 48 bits of time and 80 of randomness fill the u128; the time stays below 2^48
    // for millennia, so the sum cannot saturate in practice.
    *last = if fresh > *last {
        fresh
    } else {
        last.saturating_add(1)
    };
    format!("evt_{:032x}", *last)
}

fn ms_to_rfc3339(ms: Option<i64>) -> Value {
    json!(ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(actors::events::rfc3339))
}

/// A row as the delivery log shows it (no payload: it holds message bodies).
pub fn delivery_json(r: &entity::Model) -> Value {
    json!({
        "id": r.id,
        "event": r.event,
        "status": r.status,
        "attempts": r.attempts,
        "last_status_code": r.last_status_code,
        "last_error": r.last_error,
        "created_at": ms_to_rfc3339(Some(r.created_at)),
        "next_attempt_at": if r.status == PENDING { ms_to_rfc3339(Some(r.next_attempt_at)) } else { Value::Null },
        "delivered_at": ms_to_rfc3339(r.delivered_at),
    })
}

#[async_trait]
impl super::DeliveryLog for Outbox {
    async fn recent(&self, instance_id: &str, limit: u64) -> Result<Vec<Value>, DbErr> {
        Ok(self
            .list(instance_id, limit)
            .await?
            .iter()
            .map(delivery_json)
            .collect())
    }

    async fn redeliver(
        &self,
        instance_id: &str,
        id: &str,
        rule: &super::RedeliverRule,
    ) -> Result<super::Redelivery, DbErr> {
        self.redeliver_checked(instance_id, id, rule).await
    }
}

#[cfg(test)]
mod tests {
    use super::event_id;

    #[test]
    fn event_ids_sort_by_time_and_differ() {
        let a = event_id(1_733_450_000_000);
        let b = event_id(1_733_450_000_001);
        let c = event_id(1_733_450_000_001);
        for id in [&a, &b, &c] {
            let hex = id.strip_prefix("evt_").expect("evt_ prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
        assert!(a < b, "a later row sorts after an earlier one: {a} {b}");
        assert!(b < c, "same millisecond: the later id sorts after: {b} {c}");
        assert!(b[4..16] == c[4..16] && a[4..16] != b[4..16]);
    }
}
