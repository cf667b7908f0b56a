//! `Idempotency-Key` of sends: the `idempotency_keys` table.
//!
//! The first request with a key (per instance) inserts a `pending` row carrying the
//! request's hash and a WhatsApp message id derived from (instance, key); the send uses
//! that id, so a retry after a crash cannot produce a second message with another id.
//! When the send succeeds the row becomes `done` with the answer; a repeat with the
//! same hash gets that answer and sends nothing, a repeat with another hash is a
//! conflict, and repeats that arrive while the first is still pending wait for it.
//! A failed send deletes the row, so the caller may retry (with the same id). A
//! pending row older than the send deadline (its process died) is taken over by the
//! next request. Rows older than the window are treated as absent.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection};
use sha2::{Digest, Sha256};

/// The `idempotency_keys` row.
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub request_hash: String,
        pub message_id: String,
        /// `pending` or `done`.
        pub state: String,
        pub status_code: Option<i32>,
        /// The answer's `data`, as JSON text.
        pub response: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What a request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Send, with this message id.
    Send(String),
    /// Answer with this stored `data` (JSON text); send nothing.
    Replay(String),
    /// Another request with this key is sending; ask again shortly.
    Pending,
    /// The key was used for a different request.
    Conflict,
}

/// The WhatsApp message id a key sends with (`3EB0` + 16 bytes of hash, upper hex).
pub fn message_id_for(instance_id: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(instance_id.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("3EB0{}", hex::encode_upper(&h.finalize()[..16]))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The table.
#[derive(Clone, Debug)]
pub struct IdempotencyKeys {
    db: DatabaseConnection,
    /// How long a key is remembered.
    window_ms: i64,
    /// A pending row older than this belongs to a send that died.
    stale_ms: i64,
}

impl IdempotencyKeys {
    pub fn new(
        db: DatabaseConnection,
        window: std::time::Duration,
        stale: std::time::Duration,
    ) -> Self {
        Self {
            db,
            window_ms: window.as_millis() as i64,
            stale_ms: stale.as_millis() as i64,
        }
    }

    /// Claims `key` for a request hashing to `hash`, or says what to do instead.
    pub async fn begin(&self, instance_id: &str, key: &str, hash: &str) -> Result<Begin, DbErr> {
        let now = now_ms();
        let message_id = message_id_for(instance_id, key);
        let inserted = entity::Entity::insert(entity::ActiveModel {
            instance_id: Set(instance_id.to_string()),
            key: Set(key.to_string()),
            request_hash: Set(hash.to_string()),
            message_id: Set(message_id.clone()),
            state: Set("pending".into()),
            status_code: Set(None),
            response: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([entity::Column::InstanceId, entity::Column::Key])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if inserted == 1 {
            return Ok(Begin::Send(message_id));
        }
        let Some(row) = entity::Entity::find_by_id((instance_id.to_string(), key.to_string()))
            .one(&self.db)
            .await?
        else {
            // Deleted in between (a failed send): the caller asks again.
            return Ok(Begin::Pending);
        };
        let expired = row.created_at < now - self.window_ms;
        let stale = row.state == "pending" && row.updated_at < now - self.stale_ms;
        if expired || stale {
            if !expired && row.request_hash != hash {
                return Ok(Begin::Conflict);
            }
            // Take it over, guarded by the row's old time so one taker wins.
            let r = entity::Entity::update_many()
                .col_expr(entity::Column::RequestHash, Expr::value(hash))
                .col_expr(entity::Column::State, Expr::value("pending"))
                .col_expr(
                    entity::Column::Response,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    entity::Column::CreatedAt,
                    Expr::value(if expired { now } else { row.created_at }),
                )
                .col_expr(entity::Column::UpdatedAt, Expr::value(now))
                .filter(entity::Column::InstanceId.eq(instance_id))
                .filter(entity::Column::Key.eq(key))
                .filter(entity::Column::UpdatedAt.eq(row.updated_at))
                .exec(&self.db)
                .await?;
            return Ok(if r.rows_affected == 1 {
                Begin::Send(message_id)
            } else {
                Begin::Pending
            });
        }
        if row.request_hash != hash {
            return Ok(Begin::Conflict);
        }
        Ok(match (row.state.as_str(), row.response) {
            ("done", Some(body)) => Begin::Replay(body),
            _ => Begin::Pending,
        })
    }

    /// Records the answer of a successful send.
    pub async fn finish(&self, instance_id: &str, key: &str, data: &str) -> Result<(), DbErr> {
        entity::Entity::update_many()
            .col_expr(entity::Column::State, Expr::value("done"))
            .col_expr(entity::Column::StatusCode, Expr::value(200))
            .col_expr(entity::Column::Response, Expr::value(data))
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Key.eq(key))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets a key whose send failed, so the caller may try again.
    pub async fn forget(&self, instance_id: &str, key: &str) -> Result<(), DbErr> {
        entity::Entity::delete_many()
            .filter(entity::Column::InstanceId.eq(instance_id))
            .filter(entity::Column::Key.eq(key))
            .filter(entity::Column::State.eq("pending"))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Removes keys older than the window; returns how many.
    pub async fn prune(&self) -> Result<u64, DbErr> {
        Ok(entity::Entity::delete_many()
            .filter(entity::Column::CreatedAt.lt(now_ms() - self.window_ms))
            .filter(entity::Column::State.eq("done"))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
