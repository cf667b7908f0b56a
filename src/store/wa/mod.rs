//! whatsapp-rust's storage [`Backend`](wacore::store::traits::Backend) on sea-orm:
//! [`WaStore`], one cheap handle per instance over the shared connection pool.
//!
//! Layout: [`entities`] (one sea-orm entity per `wa_*` table), then one file per
//! trait — `signal` (identities, sessions, pre-keys, sender keys), `appsync`
//! (app-state keys, versions, MACs), `protocol` (SKDM tracking, LID↔PN, base keys,
//! device lists, group metadata, tc-tokens, sent messages, pending inbound),
//! `msg_secret`, `device`.
//!
//! Invariants:
//! - Every row carries `instance_id` as the first primary-key column, and every query
//!   goes through the `scoped_*` helpers or builds its rows with [`WaStore::instance_id`],
//!   so one instance never reads or writes another's rows.
//! - Behaviour matches wacore's `InMemoryBackend` (the reference semantics): "absent"
//!   is `Ok(None)`, upserts overwrite, expiry sweeps use the same cutoff comparisons
//!   and return the number of rows removed.
//! - Writes whatsapp-rust relies on being atomic (tc-token touch/store, msg-secret
//!   merge, sent-message take) are single statements (`ON CONFLICT … DO UPDATE` with
//!   expressions, `DELETE … RETURNING`), atomic on SQLite and PostgreSQL alike.
//!   A batch write is one statement, or one transaction when it needs several; write
//!   transactions start `IMMEDIATE` on SQLite so two writers queue on the busy
//!   timeout instead of failing a lock upgrade.
//! - Batches are de-duplicated (the last occurrence wins, as in a sequential loop)
//!   and sorted by key before writing: PostgreSQL rejects a multi-row upsert that
//!   touches one row twice. Multi-row UPDATEs/DELETEs lock their rows in key order
//!   first (`in_key_order`), so they and concurrent batches take row locks in the
//!   same order and do not deadlock on PostgreSQL.

mod appsync;
mod device;
pub mod entities;
mod msg_secret;
mod protocol;
mod signal;
pub mod spool;
mod tc_cache;

use std::sync::Arc;

use entities::InstanceScoped;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr,
    DeleteMany, EntityName, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select,
    UpdateMany,
};
use wacore::store::error::StoreError;

pub use device::DEVICE_ID;

/// Rows per INSERT statement in a batch: keeps the bound-parameter count far below
/// SQLite's and PostgreSQL's limits (32766 / 65535) for the widest table.
const ROWS_PER_STATEMENT: usize = 256;

/// whatsapp-rust storage for one instance.
///
/// Cloning is cheap (a pool handle and a shared string); thousands of instances
/// share one [`DatabaseConnection`].
#[derive(Clone, Debug)]
pub struct WaStore {
    /// The shared pool; every instance's store points at the same one.
    db: DatabaseConnection,
    /// The owning instance: the first primary-key column of every row written.
    instance_id: Arc<str>,
    /// Where pending-inbound rows go while the database refuses them ([`spool`]).
    spool: Option<Arc<spool::Spool>>,
}

impl WaStore {
    /// A store for `instance_id` over the (already migrated) database `db`.
    pub fn new(db: DatabaseConnection, instance_id: impl Into<Arc<str>>) -> Self {
        Self {
            db,
            instance_id: instance_id.into(),
            spool: None,
        }
    }

    /// The same store, with a local spool for pending-inbound rows the database
    /// refuses (see [`spool`]).
    pub fn with_spool(mut self, spool: Option<Arc<spool::Spool>>) -> Self {
        self.spool = spool;
        self
    }

    /// The spool, if any.
    pub(crate) fn spool(&self) -> Option<&spool::Spool> {
        self.spool.as_deref()
    }

    /// The instance whose rows this store reads and writes.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Drops whatever this process cached of the instance's rows: at the start of its
    /// client, so nothing read during an earlier run (before another node of a
    /// cluster ran it, or from another database at the same address) is trusted.
    pub fn forget_cached(&self) {
        tc_cache::cache()
            .forget_instance(crate::store::db::database_key(&self.db), self.instance_id());
    }

    /// This instance's key of `jid` in the tc-token cache ([`tc_cache`]).
    fn tc_key(&self, jid: &str) -> tc_cache::Key {
        (
            crate::store::db::database_key(&self.db),
            self.owner(),
            jid.to_owned(),
        )
    }

    /// The owned instance id, for building rows.
    fn owner(&self) -> String {
        self.instance_id.to_string()
    }

    /// Deletes every row of this instance from every whatsapp table, in one
    /// transaction (logout, instance deletion). Other instances are untouched.
    pub async fn wipe(&self) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let txn = self.begin_write().await?;
        macro_rules! wipe {
            ($($m:ident),* $(,)?) => {
                $(
                    self.scoped_delete::<entities::$m::Entity>()
                        .filter(self.in_key_order::<entities::$m::Entity>(Condition::all()))
                        .exec(&txn)
                        .await
                        .map_err(db_err)?;
                )*
            };
        }
        entities::with_wa_tables!(wipe);
        let committed = txn.commit().await.map_err(db_err);
        self.forget_cached();
        committed?;
        if let Some(s) = self.spool() {
            s.wipe(self.instance_id())
                .map_err(|e| StoreError::Database(Box::new(e)))?;
        }
        Ok(())
    }

    /// `SELECT … WHERE instance_id = <this instance>`.
    fn scoped_find<E: InstanceScoped>(&self) -> Select<E> {
        E::find().filter(E::instance_column().eq(self.instance_id()))
    }

    /// `DELETE … WHERE instance_id = <this instance>`.
    fn scoped_delete<E: InstanceScoped>(&self) -> DeleteMany<E> {
        E::delete_many().filter(E::instance_column().eq(self.instance_id()))
    }

    /// `UPDATE … WHERE instance_id = <this instance>`.
    fn scoped_update<E: InstanceScoped>(&self) -> UpdateMany<E> {
        E::update_many().filter(E::instance_column().eq(self.instance_id()))
    }

    /// The rows of this instance matching `cond`, as a condition that locks them in
    /// primary-key order first (`(pk…) IN (SELECT pk… WHERE … ORDER BY pk… FOR UPDATE)`).
    ///
    /// Multi-row UPDATEs and DELETEs otherwise lock in heap order on PostgreSQL,
    /// which can cross a concurrent batch upsert (which locks in key order) and
    /// deadlock. SQLite has no row locks; there the lock clause is not rendered.
    fn in_key_order<E: InstanceScoped>(&self, cond: Condition) -> Condition {
        let key = pk_columns::<E>();
        let mut sub = self.scoped_find::<E>().select_only().filter(cond);
        for &k in &key {
            sub = sub.column(k).order_by_asc(k);
        }
        let sub = sub.lock_exclusive().into_query();
        Condition::all().add(Expr::tuple(key.into_iter().map(Expr::col)).in_subquery(sub))
    }

    /// This store's turn to write (see [`crate::store::db::write_turn`]), for the rare
    /// writes that go through the pool: taken before `BEGIN` or the single statement.
    async fn write_turn(&self) -> Option<crate::store::db::WriteTurn> {
        crate::store::db::write_turn(&self.db).await
    }

    /// This store's place in the process's group write (see
    /// [`crate::store::db::group_write`]): the frequent writes go through it, and
    /// return only once committed.
    async fn writer(&self) -> Result<crate::store::db::Writer<'_>, StoreError> {
        crate::store::db::group_write(&self.db)
            .await
            .map_err(db_err)
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite (takes the write lock up
    /// front, waiting on the busy timeout), a plain `BEGIN` on PostgreSQL.
    async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        crate::store::db::begin_immediate(&self.db)
            .await
            .map_err(db_err)
    }

    /// Upserts `rows` (already de-duplicated): one statement when they fit in one,
    /// otherwise one transaction of several statements.
    async fn upsert_batch<A>(&self, rows: Vec<A>, on_conflict: OnConflict) -> Result<(), StoreError>
    where
        A: ActiveModelTrait + Send + Sync,
    {
        if rows.is_empty() {
            return Ok(());
        }
        // Several statements: all or nothing.
        let atomic = rows.len() > ROWS_PER_STATEMENT;
        let backend = self.db.get_database_backend();
        let mut rows = rows.into_iter().peekable();
        let mut statements = Vec::new();
        while rows.peek().is_some() {
            let chunk: Vec<A> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
            statements.push(
                A::Entity::insert_many(chunk)
                    .on_conflict(on_conflict.clone())
                    .build(backend),
            );
        }
        crate::store::queue::write_statements(&self.db, atomic, statements)
            .await
            .map(|_| ())
            .map_err(db_err)
    }
}

/// Names of every table [`WaStore`] uses (all prefixed `wa_`), in migration order.
pub fn wa_tables() -> Vec<&'static str> {
    macro_rules! names {
        ($($m:ident),* $(,)?) => { vec![$( entities::$m::Entity.table_name() ),*] };
    }
    entities::with_wa_tables!(names)
}

/// Inserts `rows` with `on_conflict`, [`ROWS_PER_STATEMENT`] rows per statement.
async fn upsert_rows<A>(
    conn: &crate::store::db::WriteConn<'_>,
    rows: Vec<A>,
    on_conflict: &OnConflict,
) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send + Sync,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        conn.run(&A::Entity::insert_many(chunk).on_conflict(on_conflict.clone()))
            .await?;
    }
    Ok(())
}

/// `ON CONFLICT (keys) DO UPDATE SET col = excluded.col` for every `values` column:
/// the plain overwrite of an upsert.
fn overwrite<C, K, V>(keys: K, values: V) -> OnConflict
where
    C: sea_orm::sea_query::IntoIden,
    K: IntoIterator<Item = C>,
    V: IntoIterator<Item = C>,
{
    OnConflict::columns(keys).update_columns(values).to_owned()
}

/// The primary-key columns of `E`, in key order.
fn pk_columns<E: EntityTrait>() -> Vec<E::Column> {
    use sea_orm::{Iterable, PrimaryKeyToColumn};
    E::PrimaryKey::iter().map(|k| k.into_column()).collect()
}

/// Maps a database error onto wacore's error type, keeping the cause as source.
fn db_err(e: DbErr) -> StoreError {
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => StoreError::Connection(Box::new(e)),
        other => {
            crate::store::db::note_fenced(&other);
            StoreError::Database(Box::new(other))
        }
    }
}

/// Maps a (de)serialization error of a stored blob onto wacore's error type.
fn ser_err(e: serde_json::Error) -> StoreError {
    StoreError::Serialization(Box::new(e))
}

/// A `rows_affected` count as the `u32` the traits return (saturating).
fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Keeps the last occurrence of every key, sorted by key — what a sequential
/// loop of single upserts would leave behind, in a deadlock-safe order.
fn last_wins<K: Ord, V>(items: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)> {
    items
        .into_iter()
        .collect::<std::collections::BTreeMap<K, V>>()
        .into_iter()
        .collect()
}
