//! Application tables: instances, API tokens, settings, webhook outbox, message log.
//!
//! Times are unix milliseconds in BIGINT columns (identical on SQLite and PostgreSQL).
//! Every per-instance table leads with `instance_id` in its key or an index, so queries
//! stay scoped and a later multi-node design can add an owner/lease column to
//! `instances` without touching the rest.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Instances {
    Table,
    Id,
    Phone,
    Jid,
    Lid,
    PushName,
    Status,
    Reason,
    DeviceName,
    WebhookUrl,
    WebhookSecret,
    CreatedAt,
    UpdatedAt,
    ConnectedAt,
    DisconnectedAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    InstanceId,
    TokenHash,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Key,
    Value,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookOutbox {
    Table,
    Id,
    InstanceId,
    Event,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LastStatusCode,
    LastError,
    CreatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    InstanceId,
    MessageId,
    Direction,
    Chat,
    Sender,
    Kind,
    Status,
    Timestamp,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Instances::Table)
                    .if_not_exists()
                    .col(string(Instances::Id).primary_key())
                    .col(string_null(Instances::Phone))
                    .col(string_null(Instances::Jid))
                    .col(string_null(Instances::Lid))
                    .col(string_null(Instances::PushName))
                    .col(string(Instances::Status))
                    .col(text_null(Instances::Reason))
                    .col(string(Instances::DeviceName))
                    .col(text_null(Instances::WebhookUrl))
                    .col(string_null(Instances::WebhookSecret))
                    .col(big_integer(Instances::CreatedAt))
                    .col(big_integer(Instances::UpdatedAt))
                    .col(big_integer_null(Instances::ConnectedAt))
                    .col(big_integer_null(Instances::DisconnectedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_instances_phone")
                    .table(Instances::Table)
                    .col(Instances::Phone)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    .if_not_exists()
                    .col(string(ApiTokens::Id).primary_key())
                    .col(string(ApiTokens::InstanceId))
                    .col(string_uniq(ApiTokens::TokenHash))
                    .col(big_integer(ApiTokens::CreatedAt))
                    .col(big_integer_null(ApiTokens::LastUsedAt))
                    .col(big_integer_null(ApiTokens::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_api_tokens_instance")
                    .table(ApiTokens::Table)
                    .col(ApiTokens::InstanceId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .if_not_exists()
                    .col(string(Settings::Key).primary_key())
                    .col(text(Settings::Value))
                    .col(big_integer(Settings::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookOutbox::Table)
                    .if_not_exists()
                    .col(string(WebhookOutbox::Id).primary_key())
                    .col(string(WebhookOutbox::InstanceId))
                    .col(string(WebhookOutbox::Event))
                    .col(text(WebhookOutbox::Payload))
                    .col(string(WebhookOutbox::Status))
                    .col(integer(WebhookOutbox::Attempts).default(0))
                    .col(big_integer(WebhookOutbox::NextAttemptAt))
                    .col(integer_null(WebhookOutbox::LastStatusCode))
                    .col(text_null(WebhookOutbox::LastError))
                    .col(big_integer(WebhookOutbox::CreatedAt))
                    .col(big_integer_null(WebhookOutbox::DeliveredAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_outbox_due")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::Status)
                    .col(WebhookOutbox::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_outbox_instance")
                    .table(WebhookOutbox::Table)
                    .col(WebhookOutbox::InstanceId)
                    .col(WebhookOutbox::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(string(Messages::InstanceId))
                    .col(string(Messages::MessageId))
                    .col(string(Messages::Direction))
                    .col(string(Messages::Chat))
                    .col(string_null(Messages::Sender))
                    .col(string(Messages::Kind))
                    .col(string(Messages::Status))
                    .col(big_integer(Messages::Timestamp))
                    .col(big_integer(Messages::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(Messages::InstanceId)
                            .col(Messages::MessageId)
                            .col(Messages::Direction),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Messages::Table.into_iden(),
            WebhookOutbox::Table.into_iden(),
            Settings::Table.into_iden(),
            ApiTokens::Table.into_iden(),
            Instances::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
