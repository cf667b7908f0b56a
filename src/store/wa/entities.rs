//! sea-orm entities for the whatsapp-rust session tables, one module per table.
//!
//! Invariant: every table's primary key starts with `instance_id`; the
//! [`InstanceScoped`] impls at the bottom are what `WaStore`'s scoped query helpers
//! use, so no query on these entities is written without the instance filter.
//! Columns mirror `migration::m20261123_000002_whatsapp_store` exactly.

use sea_orm::EntityTrait;

/// An entity whose rows belong to one instance through its `instance_id` column.
pub trait InstanceScoped: EntityTrait {
    /// The `instance_id` column of this entity.
    fn instance_column() -> Self::Column;
}

/// `wa_device`: The one device row of an instance: whatsapp-rust's `Device`, serialized.
pub mod device {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_device`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_device")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        pub device_id: i32,
        #[sea_orm(column_type = "Blob")]
        pub data: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_identities`: Remote identity keys (32 bytes) by Signal address.
pub mod identity {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_identities`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_identities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub address: String,
        #[sea_orm(column_type = "Blob")]
        pub identity_key: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_sessions`: Encrypted Signal sessions by address.
pub mod session {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_sessions`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub address: String,
        #[sea_orm(column_type = "Blob")]
        pub record: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_prekeys`: One-time pre-keys (serialized `PreKeyRecordStructure`) and whether the server has them.
pub mod prekey {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_prekeys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_prekeys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: i64,
        #[sea_orm(column_type = "Blob")]
        pub record: Vec<u8>,
        pub uploaded: bool,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_signed_prekeys`: Signed pre-key records kept for rotation grace periods.
pub mod signed_prekey {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_signed_prekeys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_signed_prekeys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: i64,
        #[sea_orm(column_type = "Blob")]
        pub record: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_sender_keys`: Group sender-key records by sender-key address.
pub mod sender_key {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_sender_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_sender_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub address: String,
        #[sea_orm(column_type = "Blob")]
        pub record: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_app_state_sync_keys`: App-state sync keys by key id.
pub mod sync_key {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_app_state_sync_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_app_state_sync_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Blob")]
        pub key_id: Vec<u8>,
        #[sea_orm(column_type = "Blob")]
        pub key_data: Vec<u8>,
        #[sea_orm(column_type = "Blob")]
        pub fingerprint: Vec<u8>,
        pub timestamp: i64,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_app_state_latest_sync_key`: The id of the most recently stored app-state sync key (one row per instance).
pub mod latest_sync_key {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_app_state_latest_sync_key`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_app_state_latest_sync_key")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(column_type = "Blob")]
        pub key_id: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_app_state_versions`: App-state collection versions (`HashState`).
pub mod app_state_version {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_app_state_versions`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_app_state_versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub name: String,
        pub version: i64,
        #[sea_orm(column_type = "Blob")]
        pub hash: Vec<u8>,
        #[sea_orm(column_type = "Text")]
        pub index_value_map: String,
        pub mac_mismatch_fatal: bool,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_app_state_mutation_macs`: App-state value MACs by collection and index MAC.
pub mod mutation_mac {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_app_state_mutation_macs`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_app_state_mutation_macs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub name: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Blob")]
        pub index_mac: Vec<u8>,
        pub version: i64,
        #[sea_orm(column_type = "Blob")]
        pub value_mac: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_sender_key_devices`: Per-group, per-device sender-key distribution status.
pub mod sender_key_device {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_sender_key_devices`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_sender_key_devices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub group_jid: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub device_jid: String,
        pub has_key: bool,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_lid_pn_mappings`: LID → phone-number mappings.
pub mod lid_mapping {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_lid_pn_mappings`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_lid_pn_mappings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub lid: String,
        #[sea_orm(column_type = "Text")]
        pub phone_number: String,
        pub created_at: i64,
        pub updated_at: i64,
        #[sea_orm(column_type = "Text")]
        pub learning_source: String,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_pn_lid_index`: Phone number → the LID most recently mapped to it (reverse index).
pub mod pn_lid_index {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_pn_lid_index`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_pn_lid_index")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub phone_number: String,
        #[sea_orm(column_type = "Text")]
        pub lid: String,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_base_keys`: Session base keys saved for retry collision detection.
pub mod base_key {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_base_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_base_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub address: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub message_id: String,
        #[sea_orm(column_type = "Blob")]
        pub base_key: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_device_lists`: Known device lists per user (usync results); `devices` is JSON.
pub mod device_list {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_device_lists`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_device_lists")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub user: String,
        #[sea_orm(column_type = "Text")]
        pub devices: String,
        pub timestamp: i64,
        #[sea_orm(column_type = "Text", nullable)]
        pub phash: Option<String>,
        pub raw_id: Option<i64>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_group_metadata`: Opaque serialized group metadata blobs.
pub mod group_metadata {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_group_metadata`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_group_metadata")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub group_jid: String,
        #[sea_orm(column_type = "Blob")]
        pub blob: Vec<u8>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_tc_tokens`: Trusted-contact privacy tokens.
pub mod tc_token {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_tc_tokens`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_tc_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub jid: String,
        #[sea_orm(column_type = "Blob")]
        pub token: Vec<u8>,
        pub token_timestamp: i64,
        pub sender_timestamp: Option<i64>,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_sent_messages`: Serialized sent messages kept for retry receipts.
pub mod sent_message {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_sent_messages`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_sent_messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub chat_jid: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub message_id: String,
        #[sea_orm(column_type = "Blob")]
        pub payload: Vec<u8>,
        pub created_at: i64,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_pending_inbound`: Decrypted inbound messages awaiting the durability hook's commit.
pub mod pending_inbound {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_pending_inbound`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_pending_inbound")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub chat: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub sender: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub stanza_id: String,
        #[sea_orm(column_type = "Blob")]
        pub message: Vec<u8>,
        pub inserted_at: i64,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `wa_msg_secrets`: Message secrets for add-on decryption (polls, reactions, edits).
pub mod msg_secret {
    use sea_orm::entity::prelude::*;

    /// One row of `wa_msg_secrets`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wa_msg_secrets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub instance_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub chat: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub sender: String,
        #[sea_orm(primary_key, auto_increment = false)]
        #[sea_orm(column_type = "Text")]
        pub msg_id: String,
        #[sea_orm(column_type = "Blob")]
        pub secret: Vec<u8>,
        pub expires_at: i64,
        pub message_ts: i64,
    }

    /// No relations: tables are joined only by the instance scope.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

macro_rules! instance_scoped {
    ($($m:ident),* $(,)?) => {
        $(impl InstanceScoped for $m::Entity {
            fn instance_column() -> Self::Column {
                $m::Column::InstanceId
            }
        })*
    };
}

/// Calls the macro `$m` with every entity module, in migration order: the one list of
/// whatsapp tables that the scoping impls, [`super::WaStore::wipe`] and
/// [`super::wa_tables`] all expand from.
macro_rules! with_wa_tables {
    ($m:ident) => {
        $m! {
            device,
            identity,
            session,
            prekey,
            signed_prekey,
            sender_key,
            sync_key,
            latest_sync_key,
            app_state_version,
            mutation_mac,
            sender_key_device,
            lid_mapping,
            pn_lid_index,
            base_key,
            device_list,
            group_metadata,
            tc_token,
            sent_message,
            pending_inbound,
            msg_secret,
        }
    };
}
pub(crate) use with_wa_tables;

with_wa_tables!(instance_scoped);
