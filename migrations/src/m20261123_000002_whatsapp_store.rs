//! whatsapp-rust session storage: the tables behind `sudevwa::store::wa::WaStore`.
//!
//! Every table leads its primary key with `instance_id` (TEXT), so thousands of
//! instances share one database and every lookup, delete and expiry sweep stays on
//! the instance's slice of the key. Binary data (keys, Signal records, payloads) is
//! BLOB/BYTEA; times and u32/u64 counters are BIGINT. The schema is built with
//! sea-query so the same migration runs on SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WaDevice {
    Table,
    InstanceId,
    DeviceId,
    Data,
}

#[derive(DeriveIden)]
enum WaIdentities {
    Table,
    InstanceId,
    Address,
    IdentityKey,
}

#[derive(DeriveIden)]
enum WaSessions {
    Table,
    InstanceId,
    Address,
    Record,
}

#[derive(DeriveIden)]
enum WaPrekeys {
    Table,
    InstanceId,
    KeyId,
    Record,
    Uploaded,
}

#[derive(DeriveIden)]
enum WaSignedPrekeys {
    Table,
    InstanceId,
    KeyId,
    Record,
}

#[derive(DeriveIden)]
enum WaSenderKeys {
    Table,
    InstanceId,
    Address,
    Record,
}

#[derive(DeriveIden)]
enum WaAppStateSyncKeys {
    Table,
    InstanceId,
    KeyId,
    KeyData,
    Fingerprint,
    Timestamp,
}

#[derive(DeriveIden)]
enum WaAppStateLatestSyncKey {
    Table,
    InstanceId,
    KeyId,
}

#[derive(DeriveIden)]
enum WaAppStateVersions {
    Table,
    InstanceId,
    Name,
    Version,
    Hash,
    IndexValueMap,
    MacMismatchFatal,
}

#[derive(DeriveIden)]
enum WaAppStateMutationMacs {
    Table,
    InstanceId,
    Name,
    IndexMac,
    Version,
    ValueMac,
}

#[derive(DeriveIden)]
enum WaSenderKeyDevices {
    Table,
    InstanceId,
    GroupJid,
    DeviceJid,
    HasKey,
}

#[derive(DeriveIden)]
enum WaLidPnMappings {
    Table,
    InstanceId,
    Lid,
    PhoneNumber,
    CreatedAt,
    UpdatedAt,
    LearningSource,
}

#[derive(DeriveIden)]
enum WaPnLidIndex {
    Table,
    InstanceId,
    PhoneNumber,
    Lid,
}

#[derive(DeriveIden)]
enum WaBaseKeys {
    Table,
    InstanceId,
    Address,
    MessageId,
    BaseKey,
}

#[derive(DeriveIden)]
enum WaDeviceLists {
    Table,
    InstanceId,
    User,
    Devices,
    Timestamp,
    Phash,
    RawId,
}

#[derive(DeriveIden)]
enum WaGroupMetadata {
    Table,
    InstanceId,
    GroupJid,
    Blob,
}

#[derive(DeriveIden)]
enum WaTcTokens {
    Table,
    InstanceId,
    Jid,
    Token,
    TokenTimestamp,
    SenderTimestamp,
}

#[derive(DeriveIden)]
enum WaSentMessages {
    Table,
    InstanceId,
    ChatJid,
    MessageId,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WaPendingInbound {
    Table,
    InstanceId,
    Chat,
    Sender,
    StanzaId,
    Message,
    InsertedAt,
}

#[derive(DeriveIden)]
enum WaMsgSecrets {
    Table,
    InstanceId,
    Chat,
    Sender,
    MsgId,
    Secret,
    ExpiresAt,
    MessageTs,
}

/// `CREATE TABLE IF NOT EXISTS` with the given columns and primary key.
fn table(name: impl IntoIden, cols: Vec<ColumnDef>, pk: Vec<DynIden>) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(name).if_not_exists();
    for mut c in cols {
        t.col(&mut c);
    }
    let mut key = Index::create();
    for c in pk {
        key.col(c);
    }
    t.primary_key(&mut key);
    t.to_owned()
}

/// Secondary index `(instance_id, col)` for the expiry sweeps and reverse lookups.
fn index(
    name: &str,
    tbl: impl IntoIden,
    instance: impl IntoIden,
    col: impl IntoIden,
) -> IndexCreateStatement {
    Index::create()
        .name(name)
        .table(tbl)
        .col(instance)
        .col(col)
        .if_not_exists()
        .to_owned()
}

fn tables() -> Vec<TableCreateStatement> {
    use WaAppStateLatestSyncKey as Latest;
    use WaAppStateMutationMacs as Macs;
    use WaAppStateSyncKeys as SyncKeys;
    use WaAppStateVersions as Versions;
    vec![
        table(
            WaDevice::Table,
            vec![
                text(WaDevice::InstanceId),
                integer(WaDevice::DeviceId),
                blob(WaDevice::Data),
            ],
            vec![WaDevice::InstanceId.into_iden()],
        ),
        table(
            WaIdentities::Table,
            vec![
                text(WaIdentities::InstanceId),
                text(WaIdentities::Address),
                blob(WaIdentities::IdentityKey),
            ],
            vec![
                WaIdentities::InstanceId.into_iden(),
                WaIdentities::Address.into_iden(),
            ],
        ),
        table(
            WaSessions::Table,
            vec![
                text(WaSessions::InstanceId),
                text(WaSessions::Address),
                blob(WaSessions::Record),
            ],
            vec![
                WaSessions::InstanceId.into_iden(),
                WaSessions::Address.into_iden(),
            ],
        ),
        table(
            WaPrekeys::Table,
            vec![
                text(WaPrekeys::InstanceId),
                big_integer(WaPrekeys::KeyId),
                blob(WaPrekeys::Record),
                boolean(WaPrekeys::Uploaded),
            ],
            vec![
                WaPrekeys::InstanceId.into_iden(),
                WaPrekeys::KeyId.into_iden(),
            ],
        ),
        table(
            WaSignedPrekeys::Table,
            vec![
                text(WaSignedPrekeys::InstanceId),
                big_integer(WaSignedPrekeys::KeyId),
                blob(WaSignedPrekeys::Record),
            ],
            vec![
                WaSignedPrekeys::InstanceId.into_iden(),
                WaSignedPrekeys::KeyId.into_iden(),
            ],
        ),
        table(
            WaSenderKeys::Table,
            vec![
                text(WaSenderKeys::InstanceId),
                text(WaSenderKeys::Address),
                blob(WaSenderKeys::Record),
            ],
            vec![
                WaSenderKeys::InstanceId.into_iden(),
                WaSenderKeys::Address.into_iden(),
            ],
        ),
        table(
            SyncKeys::Table,
            vec![
                text(SyncKeys::InstanceId),
                blob(SyncKeys::KeyId),
                blob(SyncKeys::KeyData),
                blob(SyncKeys::Fingerprint),
                big_integer(SyncKeys::Timestamp),
            ],
            vec![
                SyncKeys::InstanceId.into_iden(),
                SyncKeys::KeyId.into_iden(),
            ],
        ),
        table(
            Latest::Table,
            vec![text(Latest::InstanceId), blob(Latest::KeyId)],
            vec![Latest::InstanceId.into_iden()],
        ),
        table(
            Versions::Table,
            vec![
                text(Versions::InstanceId),
                text(Versions::Name),
                big_integer(Versions::Version),
                blob(Versions::Hash),
                text(Versions::IndexValueMap),
                boolean(Versions::MacMismatchFatal),
            ],
            vec![Versions::InstanceId.into_iden(), Versions::Name.into_iden()],
        ),
        table(
            Macs::Table,
            vec![
                text(Macs::InstanceId),
                text(Macs::Name),
                blob(Macs::IndexMac),
                big_integer(Macs::Version),
                blob(Macs::ValueMac),
            ],
            vec![
                Macs::InstanceId.into_iden(),
                Macs::Name.into_iden(),
                Macs::IndexMac.into_iden(),
            ],
        ),
        table(
            WaSenderKeyDevices::Table,
            vec![
                text(WaSenderKeyDevices::InstanceId),
                text(WaSenderKeyDevices::GroupJid),
                text(WaSenderKeyDevices::DeviceJid),
                boolean(WaSenderKeyDevices::HasKey),
            ],
            vec![
                WaSenderKeyDevices::InstanceId.into_iden(),
                WaSenderKeyDevices::GroupJid.into_iden(),
                WaSenderKeyDevices::DeviceJid.into_iden(),
            ],
        ),
        table(
            WaLidPnMappings::Table,
            vec![
                text(WaLidPnMappings::InstanceId),
                text(WaLidPnMappings::Lid),
                text(WaLidPnMappings::PhoneNumber),
                big_integer(WaLidPnMappings::CreatedAt),
                big_integer(WaLidPnMappings::UpdatedAt),
                text(WaLidPnMappings::LearningSource),
            ],
            vec![
                WaLidPnMappings::InstanceId.into_iden(),
                WaLidPnMappings::Lid.into_iden(),
            ],
        ),
        table(
            WaPnLidIndex::Table,
            vec![
                text(WaPnLidIndex::InstanceId),
                text(WaPnLidIndex::PhoneNumber),
                text(WaPnLidIndex::Lid),
            ],
            vec![
                WaPnLidIndex::InstanceId.into_iden(),
                WaPnLidIndex::PhoneNumber.into_iden(),
            ],
        ),
        table(
            WaBaseKeys::Table,
            vec![
                text(WaBaseKeys::InstanceId),
                text(WaBaseKeys::Address),
                text(WaBaseKeys::MessageId),
                blob(WaBaseKeys::BaseKey),
            ],
            vec![
                WaBaseKeys::InstanceId.into_iden(),
                WaBaseKeys::Address.into_iden(),
                WaBaseKeys::MessageId.into_iden(),
            ],
        ),
        table(
            WaDeviceLists::Table,
            vec![
                text(WaDeviceLists::InstanceId),
                text(WaDeviceLists::User),
                text(WaDeviceLists::Devices),
                big_integer(WaDeviceLists::Timestamp),
                text_null(WaDeviceLists::Phash),
                big_integer_null(WaDeviceLists::RawId),
            ],
            vec![
                WaDeviceLists::InstanceId.into_iden(),
                WaDeviceLists::User.into_iden(),
            ],
        ),
        table(
            WaGroupMetadata::Table,
            vec![
                text(WaGroupMetadata::InstanceId),
                text(WaGroupMetadata::GroupJid),
                blob(WaGroupMetadata::Blob),
            ],
            vec![
                WaGroupMetadata::InstanceId.into_iden(),
                WaGroupMetadata::GroupJid.into_iden(),
            ],
        ),
        table(
            WaTcTokens::Table,
            vec![
                text(WaTcTokens::InstanceId),
                text(WaTcTokens::Jid),
                blob(WaTcTokens::Token),
                big_integer(WaTcTokens::TokenTimestamp),
                big_integer_null(WaTcTokens::SenderTimestamp),
            ],
            vec![
                WaTcTokens::InstanceId.into_iden(),
                WaTcTokens::Jid.into_iden(),
            ],
        ),
        table(
            WaSentMessages::Table,
            vec![
                text(WaSentMessages::InstanceId),
                text(WaSentMessages::ChatJid),
                text(WaSentMessages::MessageId),
                blob(WaSentMessages::Payload),
                big_integer(WaSentMessages::CreatedAt),
            ],
            vec![
                WaSentMessages::InstanceId.into_iden(),
                WaSentMessages::ChatJid.into_iden(),
                WaSentMessages::MessageId.into_iden(),
            ],
        ),
        table(
            WaPendingInbound::Table,
            vec![
                text(WaPendingInbound::InstanceId),
                text(WaPendingInbound::Chat),
                text(WaPendingInbound::Sender),
                text(WaPendingInbound::StanzaId),
                blob(WaPendingInbound::Message),
                big_integer(WaPendingInbound::InsertedAt),
            ],
            vec![
                WaPendingInbound::InstanceId.into_iden(),
                WaPendingInbound::Chat.into_iden(),
                WaPendingInbound::Sender.into_iden(),
                WaPendingInbound::StanzaId.into_iden(),
            ],
        ),
        table(
            WaMsgSecrets::Table,
            vec![
                text(WaMsgSecrets::InstanceId),
                text(WaMsgSecrets::Chat),
                text(WaMsgSecrets::Sender),
                text(WaMsgSecrets::MsgId),
                blob(WaMsgSecrets::Secret),
                big_integer(WaMsgSecrets::ExpiresAt),
                big_integer(WaMsgSecrets::MessageTs),
            ],
            vec![
                WaMsgSecrets::InstanceId.into_iden(),
                WaMsgSecrets::Chat.into_iden(),
                WaMsgSecrets::Sender.into_iden(),
                WaMsgSecrets::MsgId.into_iden(),
            ],
        ),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        // Expiry sweeps run per instance on every keepalive.
        index(
            "idx_wa_sent_messages_created",
            WaSentMessages::Table,
            WaSentMessages::InstanceId,
            WaSentMessages::CreatedAt,
        ),
        index(
            "idx_wa_pending_inbound_inserted",
            WaPendingInbound::Table,
            WaPendingInbound::InstanceId,
            WaPendingInbound::InsertedAt,
        ),
        index(
            "idx_wa_msg_secrets_expires",
            WaMsgSecrets::Table,
            WaMsgSecrets::InstanceId,
            WaMsgSecrets::ExpiresAt,
        ),
        // delete_sender_key_device_rows deletes by device across all groups.
        index(
            "idx_wa_sender_key_devices_device",
            WaSenderKeyDevices::Table,
            WaSenderKeyDevices::InstanceId,
            WaSenderKeyDevices::DeviceJid,
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in tables() {
            manager.create_table(t).await?;
        }
        for i in indexes() {
            manager.create_index(i).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping a table drops its indexes on both backends.
        for t in tables() {
            let name = t
                .get_table_name()
                .cloned()
                .ok_or_else(|| DbErr::Migration("whatsapp table without a name".into()))?;
            manager
                .drop_table(Table::drop().table(name).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
