//! Database migrations for sudevwa (sea-orm-migration).
//!
//! Two groups of tables, every row of both keyed by instance so thousands of
//! instances share one database and one pool:
//! - application tables (`m20261123_000001_app_tables`): instances, API tokens,
//!   webhook outbox and deliveries, message log;
//! - whatsapp-rust session storage (`m20261123_000002_whatsapp_store`): the
//!   tables behind our implementation of whatsapp-rust's `Backend` traits;
//! - the durable message path (`m20261203_000003_message_log`): message log,
//!   status timeline, event log (cursors), idempotency keys, webhook event filter;
//! - the URL each webhook outbox row was queued for (`m20261204_000004_outbox_target`);
//! - the message protobuf beside each message-log row (`m20261205_000005_message_raw`);
//! - cluster nodes, instance leases and webhook delivery claims, PostgreSQL only
//!   (`m20261205_000006_cluster`).
//!
//! Migrations run at server start and through `sudevwa migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_app_tables;
mod m20261123_000002_whatsapp_store;
mod m20261203_000003_message_log;
mod m20261204_000004_outbox_target;
mod m20261205_000005_message_raw;
mod m20261205_000006_cluster;

/// The ordered list of every migration.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_app_tables::Migration),
            Box::new(m20261123_000002_whatsapp_store::Migration),
            Box::new(m20261203_000003_message_log::Migration),
            Box::new(m20261204_000004_outbox_target::Migration),
            Box::new(m20261205_000005_message_raw::Migration),
            Box::new(m20261205_000006_cluster::Migration),
        ]
    }
}
