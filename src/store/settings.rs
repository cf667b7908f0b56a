//! The `settings` table (server-wide key/value, e.g. generated secrets) and the
//! `api_tokens` table (per-instance API tokens, stored as SHA-256 hashes only).

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection};

/// The `settings` row.
pub mod setting {
    use sea_orm::entity::prelude::*;

    /// One server-wide setting.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: String,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `api_tokens` row.
pub mod api_token {
    use sea_orm::entity::prelude::*;

    /// One instance token (only its hash is kept).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub instance_id: String,
        pub token_hash: String,
        pub created_at: i64,
        pub last_used_at: Option<i64>,
        pub revoked_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Server-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    db: DatabaseConnection,
}

impl Settings {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<String>, DbErr> {
        Ok(setting::Entity::find_by_id(key.to_string())
            .one(&self.db)
            .await?
            .map(|m| m.value))
    }

    /// Sets `key` only if it is absent, then returns the stored value (so two starts
    /// racing on a shared database agree on one generated secret).
    pub async fn get_or_insert(&self, key: &str, value: &str) -> Result<String, DbErr> {
        setting::Entity::insert(setting::ActiveModel {
            key: Set(key.to_string()),
            value: Set(value.to_string()),
            updated_at: Set(now_ms()),
        })
        .on_conflict(
            OnConflict::column(setting::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        self.get(key)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(key.to_string()))
    }
}

/// Per-instance API tokens.
#[derive(Clone, Debug)]
pub struct Tokens {
    db: DatabaseConnection,
}

impl Tokens {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Stores a token hash for `instance_id`.
    pub async fn insert(&self, id: &str, instance_id: &str, token_hash: &str) -> Result<(), DbErr> {
        api_token::Entity::insert(api_token::ActiveModel {
            id: Set(id.to_string()),
            instance_id: Set(instance_id.to_string()),
            token_hash: Set(token_hash.to_string()),
            created_at: Set(now_ms()),
            last_used_at: Set(None),
            revoked_at: Set(None),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// The instance a live (not revoked) token hash belongs to.
    pub async fn instance_of(&self, token_hash: &str) -> Result<Option<String>, DbErr> {
        Ok(api_token::Entity::find()
            .filter(api_token::Column::TokenHash.eq(token_hash))
            .filter(api_token::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?
            .map(|m| m.instance_id))
    }

    /// Records that a token was used now.
    pub async fn touch(&self, token_hash: &str) -> Result<(), DbErr> {
        let _turn = crate::store::db::write_turn(&self.db).await;
        api_token::Entity::update_many()
            .col_expr(api_token::Column::LastUsedAt, Expr::value(now_ms()))
            .filter(api_token::Column::TokenHash.eq(token_hash))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Revokes every token of `instance_id`; returns how many were live.
    pub async fn revoke_all(&self, instance_id: &str) -> Result<u64, DbErr> {
        let r = api_token::Entity::update_many()
            .col_expr(api_token::Column::RevokedAt, Expr::value(now_ms()))
            .filter(api_token::Column::InstanceId.eq(instance_id))
            .filter(api_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    /// Deletes every token row of `instance_id` (instance deletion).
    pub async fn delete_all(&self, instance_id: &str) -> Result<(), DbErr> {
        api_token::Entity::delete_many()
            .filter(api_token::Column::InstanceId.eq(instance_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
