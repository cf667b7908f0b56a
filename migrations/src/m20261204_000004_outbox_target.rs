//! The webhook URL each outbox row was queued for (`target`), so a redelivery can be
//! held to the URL the event was first meant for after the webhook URL changes.
//! Rows queued before this migration have none (treated as "unknown": only an admin
//! may redeliver them).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookOutbox {
    Table,
    Target,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookOutbox::Table)
                    .add_column(text_null(WebhookOutbox::Target))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookOutbox::Table)
                    .drop_column(WebhookOutbox::Target)
                    .to_owned(),
            )
            .await
    }
}
