//! The durable message path: the message log (every inbound and outbound message), the
//! status timeline of outbound messages, the durable event log (cursor = `seq`), the
//! idempotency keys of sends, and the per-instance webhook event filter.
//!
//! The `messages` table of the first migration was never written; it is replaced by
//! the richer one here. Every table leads its indexes with `instance_id`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Seq,
    InstanceId,
    Direction,
    MessageId,
    Chat,
    Sender,
    SenderPhone,
    SenderLid,
    PushName,
    FromMe,
    IsGroup,
    Kind,
    Body,
    Media,
    Status,
    Timestamp,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum MessageStatus {
    Table,
    Seq,
    InstanceId,
    MessageId,
    Recipient,
    Status,
    At,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    InstanceId,
    Event,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    InstanceId,
    Key,
    RequestHash,
    MessageId,
    State,
    StatusCode,
    Response,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Instances {
    Table,
    WebhookEvents,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Messages::Table).if_exists().to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(big_pk_auto(Messages::Seq))
                    .col(string(Messages::InstanceId))
                    .col(string(Messages::Direction))
                    .col(string(Messages::MessageId))
                    .col(string(Messages::Chat))
                    .col(string(Messages::Sender))
                    .col(string_null(Messages::SenderPhone))
                    .col(string_null(Messages::SenderLid))
                    .col(string_null(Messages::PushName))
                    .col(boolean(Messages::FromMe))
                    .col(boolean(Messages::IsGroup))
                    .col(string(Messages::Kind))
                    .col(text_null(Messages::Body))
                    .col(text_null(Messages::Media))
                    .col(string(Messages::Status))
                    .col(big_integer(Messages::Timestamp))
                    .col(big_integer(Messages::CreatedAt))
                    .col(big_integer(Messages::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // Inbound dedupe key: (chat, sender, id) — stanza ids are unique only per pair.
        manager
            .create_index(
                Index::create()
                    .name("ux_messages_key")
                    .table(Messages::Table)
                    .col(Messages::InstanceId)
                    .col(Messages::Chat)
                    .col(Messages::Sender)
                    .col(Messages::MessageId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_instance_seq")
                    .table(Messages::Table)
                    .col(Messages::InstanceId)
                    .col(Messages::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_instance_id")
                    .table(Messages::Table)
                    .col(Messages::InstanceId)
                    .col(Messages::MessageId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_messages_created")
                    .table(Messages::Table)
                    .col(Messages::CreatedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MessageStatus::Table)
                    .if_not_exists()
                    .col(big_pk_auto(MessageStatus::Seq))
                    .col(string(MessageStatus::InstanceId))
                    .col(string(MessageStatus::MessageId))
                    .col(string(MessageStatus::Recipient))
                    .col(string(MessageStatus::Status))
                    .col(big_integer(MessageStatus::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_message_status_key")
                    .table(MessageStatus::Table)
                    .col(MessageStatus::InstanceId)
                    .col(MessageStatus::MessageId)
                    .col(MessageStatus::Recipient)
                    .col(MessageStatus::Status)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Events::Seq))
                    .col(string(Events::InstanceId))
                    .col(string(Events::Event))
                    .col(text(Events::Payload))
                    .col(big_integer(Events::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_instance_seq")
                    .table(Events::Table)
                    .col(Events::InstanceId)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_created")
                    .table(Events::Table)
                    .col(Events::CreatedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(string(IdempotencyKeys::InstanceId))
                    .col(string(IdempotencyKeys::Key))
                    .col(string(IdempotencyKeys::RequestHash))
                    .col(string(IdempotencyKeys::MessageId))
                    .col(string(IdempotencyKeys::State))
                    .col(integer_null(IdempotencyKeys::StatusCode))
                    .col(text_null(IdempotencyKeys::Response))
                    .col(big_integer(IdempotencyKeys::CreatedAt))
                    .col(big_integer(IdempotencyKeys::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::InstanceId)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .alter_table(
                Table::alter()
                    .table(Instances::Table)
                    .add_column(text_null(Instances::WebhookEvents))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instances::Table)
                    .drop_column(Instances::WebhookEvents)
                    .to_owned(),
            )
            .await?;
        for t in [
            IdempotencyKeys::Table.into_iden(),
            Events::Table.into_iden(),
            MessageStatus::Table.into_iden(),
            Messages::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
