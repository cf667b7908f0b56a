//! [`MsgSecretStore`] for [`WaStore`]: per-message secrets for add-on decryption
//! (poll votes, reactions, edits, bot replies).
//!
//! Invariants (wacore's merge rules, applied atomically in the upsert itself):
//! on a key conflict the secret is replaced, `expires_at` merges as
//! [`merge_msg_secret_expiry`] (0 = never wins, otherwise the later deadline) and
//! `message_ts` as [`merge_msg_secret_message_ts`] (the larger). Duplicates inside one
//! batch are folded with the same functions first (both are associative), so the
//! result equals applying the entries one by one. `delete_expired_msg_secrets`
//! removes rows with `0 < expires_at <= cutoff`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, Condition, QueryFilter};
use wacore::store::error::Result;
use wacore::store::traits::{
    merge_msg_secret_expiry, merge_msg_secret_message_ts, MessageSecret, MsgSecretEntry,
    MsgSecretStore,
};

use super::entities::msg_secret;
use super::{count, db_err, WaStore};

/// [`merge_msg_secret_expiry`] in SQL.
const MERGE_EXPIRY: &str = r#"CASE WHEN "wa_msg_secrets"."expires_at" = 0 OR excluded.expires_at = 0 THEN 0
    WHEN "wa_msg_secrets"."expires_at" >= excluded.expires_at THEN "wa_msg_secrets"."expires_at"
    ELSE excluded.expires_at END"#;

/// [`merge_msg_secret_message_ts`] in SQL.
const MERGE_MESSAGE_TS: &str = r#"CASE WHEN "wa_msg_secrets"."message_ts" >= excluded.message_ts
    THEN "wa_msg_secrets"."message_ts" ELSE excluded.message_ts END"#;

#[async_trait]
impl MsgSecretStore for WaStore {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let stored = entries.len();
        let mut folded: BTreeMap<(String, String, String), (MessageSecret, i64, i64)> =
            BTreeMap::new();
        for e in entries {
            let key = (
                e.chat.to_string(),
                e.sender.to_string(),
                e.msg_id.to_string(),
            );
            folded
                .entry(key)
                .and_modify(|(secret, expires_at, message_ts)| {
                    *secret = e.secret;
                    *expires_at = merge_msg_secret_expiry(*expires_at, e.expires_at);
                    *message_ts = merge_msg_secret_message_ts(*message_ts, e.message_ts);
                })
                .or_insert((e.secret, e.expires_at, e.message_ts));
        }
        let rows = folded
            .into_iter()
            .map(
                |((chat, sender, msg_id), (secret, expires_at, message_ts))| {
                    msg_secret::Model {
                        instance_id: self.owner(),
                        chat,
                        sender,
                        msg_id,
                        secret: secret.to_vec(),
                        expires_at,
                        message_ts,
                    }
                    .into()
                },
            )
            .collect::<Vec<msg_secret::ActiveModel>>();
        let on_conflict = OnConflict::columns([
            msg_secret::Column::InstanceId,
            msg_secret::Column::Chat,
            msg_secret::Column::Sender,
            msg_secret::Column::MsgId,
        ])
        .update_column(msg_secret::Column::Secret)
        .value(msg_secret::Column::ExpiresAt, Expr::cust(MERGE_EXPIRY))
        .value(msg_secret::Column::MessageTs, Expr::cust(MERGE_MESSAGE_TS))
        .to_owned();
        self.upsert_batch(rows, on_conflict).await?;
        Ok(stored)
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let row = self
            .scoped_find::<msg_secret::Entity>()
            .filter(msg_secret::Column::Chat.eq(chat))
            .filter(msg_secret::Column::Sender.eq(sender))
            .filter(msg_secret::Column::MsgId.eq(msg_id))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| (r.secret, r.message_ts)))
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let _turn = self.write_turn().await;
        let cond = Condition::all()
            .add(msg_secret::Column::ExpiresAt.ne(0))
            .add(msg_secret::Column::ExpiresAt.lte(cutoff_timestamp));
        let res = self
            .scoped_delete::<msg_secret::Entity>()
            .filter(self.in_key_order::<msg_secret::Entity>(cond))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(count(res.rows_affected))
    }
}
