//! The message itself (`raw`: the WhatsApp message protobuf, as received or sent)
//! beside each message-log row, so later actions can use it: quoting it in a reply,
//! forwarding it, downloading its media with the keys it carries. Rows stored before
//! this migration have none (they can still be reacted to, edited, deleted and
//! quoted by their text).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Raw,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(blob_null(Messages::Raw))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::Raw)
                    .to_owned(),
            )
            .await
    }
}
