//! Several nodes on one PostgreSQL database (`[cluster]`): the live nodes, one lease
//! per instance (owner, expiry, fencing token), and one delivery claim per instance's
//! webhook outbox. PostgreSQL only: a cluster needs it, and SQLite databases get
//! nothing. The write fence (a trigger refusing writes of a node without the lease)
//! is installed by the first cluster node to start, not here, so single-node
//! PostgreSQL databases pay nothing for it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = "
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id TEXT PRIMARY KEY,
    internal_url TEXT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS instance_leases (
    instance_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    token BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_leases_node ON instance_leases (node_id);
CREATE TABLE IF NOT EXISTS webhook_claims (
    instance_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    until TIMESTAMPTZ NOT NULL
);
";

const DOWN: &str = "
DROP TABLE IF EXISTS webhook_claims;
DROP TABLE IF EXISTS instance_leases;
DROP TABLE IF EXISTS cluster_nodes;
DROP FUNCTION IF EXISTS sudevwa_fence() CASCADE;
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
