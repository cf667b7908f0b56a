//! The `instances` table: create, find, list, delete, and the actors' [`InstanceStore`]
//! (whatsapp-rust storage per instance, session wipe, status persistence).
//!
//! Invariant: deleting an instance removes its whatsapp-rust rows first and the
//! instance row last, so a crash midway leaves an instance that can be deleted again.

use super::wa::spool::Spool;
use super::wa::WaStore;
use actors::instance::{InstanceRecord, InstanceStore};
use actors::InstanceStatus;
use async_trait::async_trait;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DatabaseConnection, QueryOrder};
use std::sync::Arc;

/// The `instances` row.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// One WhatsApp number managed by this server.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "instances")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub phone: Option<String>,
        pub jid: Option<String>,
        pub lid: Option<String>,
        pub push_name: Option<String>,
        pub status: String,
        pub reason: Option<String>,
        pub device_name: String,
        pub webhook_url: Option<String>,
        pub webhook_secret: Option<String>,
        /// Webhook event filter: a JSON array of event names (`incoming_message`,
        /// `message_status`, lifecycle names such as `INSTANCE_STATUS_CHANGED`, or
        /// `*` for everything). `None`: the message events (`incoming_message`,
        /// `message_status`).
        pub webhook_events: Option<String>,
        /// Unix milliseconds.
        pub created_at: i64,
        pub updated_at: i64,
        pub connected_at: Option<i64>,
        pub disconnected_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as Instance;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Instance rows over the shared pool.
#[derive(Clone, Debug)]
pub struct Instances {
    db: DatabaseConnection,
    /// Local spool of pending-inbound rows (see [`super::wa::spool`]).
    spool: Option<Arc<Spool>>,
}

impl Instances {
    /// Over an already migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, spool: None }
    }

    /// With the spool whatsapp-rust's pending-inbound rows fall back to.
    pub fn with_spool(mut self, spool: Option<Arc<Spool>>) -> Self {
        self.spool = spool;
        self
    }

    /// The whatsapp-rust store of one instance.
    pub fn wa_store(&self, id: &str) -> WaStore {
        WaStore::new(self.db.clone(), id).with_spool(self.spool.clone())
    }

    /// The pool (for stores that share it).
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Creates an instance with status `qr_required`.
    pub async fn create(&self, id: &str, device_name: &str) -> Result<Instance, DbErr> {
        let now = now_ms();
        entity::ActiveModel {
            id: Set(id.to_string()),
            phone: Set(None),
            jid: Set(None),
            lid: Set(None),
            push_name: Set(None),
            // API.md: a new instance is waiting for its first QR scan.
            status: Set(InstanceStatus::QrRequired.as_str().to_string()),
            reason: Set(None),
            device_name: Set(device_name.to_string()),
            webhook_url: Set(None),
            webhook_secret: Set(None),
            webhook_events: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            connected_at: Set(None),
            disconnected_at: Set(None),
        }
        .insert(&self.db)
        .await
    }

    /// One instance.
    pub async fn get(&self, id: &str) -> Result<Option<Instance>, DbErr> {
        entity::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
    }

    /// At start, before any actor runs: no instance has a socket yet, so rows left
    /// `online` by the previous process say `reconnecting` (what their actors say once
    /// the restore reaches them), and a QR flow that cannot survive the restart says
    /// `qr_required`. Without this, the API would show `online` for instances that are
    /// not connected until the restore reaches them.
    pub async fn mark_restoring(&self) -> Result<u64, DbErr> {
        let mut n = 0;
        for (from, to) in [
            (InstanceStatus::Online, InstanceStatus::Reconnecting),
            (InstanceStatus::QrPending, InstanceStatus::QrRequired),
        ] {
            n += entity::Entity::update_many()
                .col_expr(entity::Column::Status, Expr::value(to.as_str()))
                .filter(entity::Column::Status.eq(from.as_str()))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        Ok(n)
    }

    /// Parks an instance as `crashed` with why and when (the supervisor gave up on it).
    pub async fn mark_crashed(&self, id: &str, reason: &str) -> Result<(), DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        entity::Entity::update_many()
            .col_expr(
                entity::Column::Status,
                Expr::value(InstanceStatus::Crashed.as_str()),
            )
            .col_expr(
                entity::Column::Reason,
                Expr::value(reason.chars().take(300).collect::<String>()),
            )
            .col_expr(entity::Column::DisconnectedAt, Expr::value(now_ms()))
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Takes a crashed instance out of the park (`disconnected`, reason cleared), so its
    /// next actor restores it like any other; `false` when it was not crashed.
    pub async fn clear_crashed(&self, id: &str) -> Result<bool, DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        let r = entity::Entity::update_many()
            .col_expr(
                entity::Column::Status,
                Expr::value(InstanceStatus::Disconnected.as_str()),
            )
            .col_expr(entity::Column::Reason, Expr::value(Option::<String>::None))
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .filter(entity::Column::Status.eq(InstanceStatus::Crashed.as_str()))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// The online instances whose own number is `phone` (by the phone index, not a scan).
    pub async fn online_with_phone(&self, phone: &str) -> Result<Vec<Instance>, DbErr> {
        entity::Entity::find()
            .filter(entity::Column::Phone.eq(phone))
            .filter(entity::Column::Status.eq(InstanceStatus::Online.as_str()))
            .order_by_asc(entity::Column::CreatedAt)
            .all(&self.db)
            .await
    }

    /// Every instance, oldest first.
    pub async fn list(&self) -> Result<Vec<Instance>, DbErr> {
        entity::Entity::find()
            .order_by_asc(entity::Column::CreatedAt)
            .order_by_asc(entity::Column::Id)
            .all(&self.db)
            .await
    }

    /// Deletes the instance and every row that belongs to it.
    pub async fn delete(&self, id: &str) -> Result<bool, DbErr> {
        self.wa_store(id)
            .wipe()
            .await
            .map_err(|e| DbErr::Custom(e.to_string()))?;
        // The message log, timeline, event log, idempotency keys and outbox rows hold
        // message bodies; the tokens would outlive their instance: all go with the
        // instance row, in one transaction.
        let _turn = crate::store::db::write_turn(&self.db).await;
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        for table in [
            "messages",
            "message_status",
            "events",
            "idempotency_keys",
            "webhook_outbox",
            "api_tokens",
        ] {
            use sea_orm::sea_query::{Alias, Query};
            let stmt = Query::delete()
                .from_table(Alias::new(table))
                .and_where(sea_orm::sea_query::ExprTrait::eq(
                    Expr::col(Alias::new("instance_id")),
                    id,
                ))
                .to_owned();
            sea_orm::ConnectionTrait::execute(&txn, &stmt).await?;
        }
        let r = entity::Entity::delete_by_id(id.to_string())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        bump_webhook_settings();
        Ok(r.rows_affected > 0)
    }

    /// Sets (or with `None`, clears) the instance's webhook URL and secret.
    pub async fn set_webhook(
        &self,
        id: &str,
        url: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(), DbErr> {
        entity::Entity::update_many()
            .col_expr(
                entity::Column::WebhookUrl,
                Expr::value(url.map(str::to_string)),
            )
            .col_expr(
                entity::Column::WebhookSecret,
                Expr::value(secret.map(str::to_string)),
            )
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        bump_webhook_settings();
        Ok(())
    }

    /// Sets (or with `None`, resets to the default) the webhook event filter.
    pub async fn set_webhook_events(
        &self,
        id: &str,
        events: Option<&[String]>,
    ) -> Result<(), DbErr> {
        let v = events.map(|e| serde_json::Value::from(e.to_vec()).to_string());
        entity::Entity::update_many()
            .col_expr(entity::Column::WebhookEvents, Expr::value(v))
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        bump_webhook_settings();
        Ok(())
    }

    /// Writes what an actor reports about itself.
    pub async fn save_record(&self, id: &str, rec: &InstanceRecord) -> Result<(), DbErr> {
        let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
        entity::Entity::update_many()
            .col_expr(entity::Column::Status, Expr::value(rec.status.as_str()))
            .col_expr(entity::Column::Reason, Expr::value(rec.reason.clone()))
            .col_expr(
                entity::Column::Phone,
                Expr::value(rec.identity.phone.clone()),
            )
            .col_expr(entity::Column::Jid, Expr::value(rec.identity.jid.clone()))
            .col_expr(entity::Column::Lid, Expr::value(rec.identity.lid.clone()))
            .col_expr(
                entity::Column::PushName,
                Expr::value(rec.identity.push_name.clone()),
            )
            .col_expr(
                entity::Column::ConnectedAt,
                Expr::value(ms(rec.connected_at)),
            )
            .col_expr(
                entity::Column::DisconnectedAt,
                Expr::value(ms(rec.disconnected_at)),
            )
            .col_expr(entity::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(entity::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// The actors' view of storage, on this database.
#[derive(Clone, Debug)]
pub struct DbInstanceStore {
    instances: Instances,
}

impl DbInstanceStore {
    pub fn new(instances: Instances) -> Self {
        Self { instances }
    }
}

#[async_trait]
impl InstanceStore for DbInstanceStore {
    fn backend(&self, instance_id: &str) -> Arc<dyn whatsapp_rust::wacore::store::traits::Backend> {
        let store = self.instances.wa_store(instance_id);
        store.forget_cached();
        Arc::new(store)
    }

    async fn wipe_session(&self, instance_id: &str) -> Result<(), String> {
        self.instances
            .wa_store(instance_id)
            .wipe()
            .await
            .map_err(|e| e.to_string())
    }

    async fn save(&self, instance_id: &str, record: &InstanceRecord) -> Result<(), String> {
        self.instances
            .save_record(instance_id, record)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Counts changes of any instance's webhook settings (URL, secret, event filter,
/// deletion), so readers that cache them (the journal, per event) know when to read
/// again. Process-wide: a change in one server of a test process merely makes the
/// others read once more.
static WEBHOOK_SETTINGS_GEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Announces a change of instances' webhook columns made outside this module (by SQL,
/// as tests do): cached copies (the journal's filters, the worker's targets) are read
/// again. The API's own changes announce themselves.
pub fn webhook_settings_changed() {
    bump_webhook_settings();
}

fn bump_webhook_settings() {
    WEBHOOK_SETTINGS_GEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Per-instance values derived from webhook settings, each kept with the settings
/// generation it was read at and read again after any change (see
/// [`webhook_settings_generation`]). Bounded: emptied at 100,000 entries.
pub struct WebhookSettingsCache<V>(std::sync::Mutex<std::collections::HashMap<String, (u64, V)>>);

impl<V> Default for WebhookSettingsCache<V> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<V: Clone> WebhookSettingsCache<V> {
    /// The cached value of `instance_id`, or `load`'s (then cached) when there is none
    /// or the settings changed since it was read.
    pub async fn get_or_load<F>(&self, instance_id: &str, load: F) -> Result<V, DbErr>
    where
        F: std::future::Future<Output = Result<V, DbErr>>,
    {
        const MAX: usize = 100_000;
        let generation = webhook_settings_generation();
        let lock = || self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, v)) = lock().get(instance_id) {
            if *g == generation {
                return Ok(v.clone());
            }
        }
        let v = load.await?;
        let mut cache = lock();
        if cache.len() >= MAX {
            cache.clear();
        }
        cache.insert(instance_id.to_string(), (generation, v.clone()));
        Ok(v)
    }
}

/// The current webhook-settings generation (read it before reading the settings).
pub fn webhook_settings_generation() -> u64 {
    WEBHOOK_SETTINGS_GEN.load(std::sync::atomic::Ordering::SeqCst)
}
