//! [`ProtocolStore`] for [`WaStore`]: sender-key distribution status, LID↔PN
//! mappings, base keys, device lists, group metadata, tc-tokens, the sent-message
//! retry store and the pending-inbound durability buffer.
//!
//! Invariants (matching wacore's `InMemoryBackend`):
//! - `get_pn_mapping` follows a phone → LID pointer (`wa_pn_lid_index`) set by the
//!   latest `put_lid_mapping` for that phone and cleared when that LID moves to
//!   another phone, exactly like the reference's reverse map.
//! - tc-tokens: `touch_tc_token_sender_timestamp` only ever raises the sender
//!   timestamp (inserting a byte-less placeholder), `store_received_tc_token` is
//!   newer-wins and never touches the sender timestamp; both are one atomic upsert.
//!   `delete_expired_tc_tokens` drops a row only when neither its received token
//!   (non-empty and `token_timestamp >= token_cutoff`) nor its sender bucket
//!   (`sender_timestamp >= sender_cutoff`) is live.
//! - `take_sent_message` is one `DELETE … RETURNING`: of N racing callers exactly one
//!   gets the payload. Sent messages and pending inbound rows are stamped with
//!   `wacore::time::now_secs()` and swept when strictly older than the cutoff.

use async_trait::async_trait;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, Condition, QueryFilter, QuerySelect, QueryTrait};
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::{
    DeviceInfo, DeviceListRecord, LidPnMappingEntry, PendingInboundKey, PendingInboundRow,
    ProtocolStore, TcTokenEntry,
};

use super::entities::{
    base_key, device_list, group_metadata, lid_mapping, pending_inbound, pn_lid_index,
    sender_key_device, sent_message, tc_token,
};
use super::{
    count, db_err, last_wins, overwrite, ser_err, tc_cache, upsert_rows, WaStore,
    ROWS_PER_STATEMENT,
};

/// `sender_timestamp` only moves forward; a NULL one takes the incoming value.
const TC_SENDER_MAX: &str = r#"CASE WHEN "wa_tc_tokens"."sender_timestamp" IS NULL
    OR "wa_tc_tokens"."sender_timestamp" < excluded.sender_timestamp
    THEN excluded.sender_timestamp ELSE "wa_tc_tokens"."sender_timestamp" END"#;

/// Newer-wins for a received token: a placeholder never blocks a real token, and a
/// stale write never clobbers a fresher one.
const TC_RECEIVED_NEWER: &str = r#"length("wa_tc_tokens"."token") = 0
    OR excluded.token_timestamp >= "wa_tc_tokens"."token_timestamp""#;

impl WaStore {
    /// Deletes this instance's pending-inbound row for (chat, sender, stanza id).
    fn pending_row_delete(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> sea_orm::DeleteMany<pending_inbound::Entity> {
        self.scoped_delete::<pending_inbound::Entity>()
            .filter(pending_inbound::Column::Chat.eq(chat))
            .filter(pending_inbound::Column::Sender.eq(sender))
            .filter(pending_inbound::Column::StanzaId.eq(id))
    }

    fn device_list_row(&self, record: &DeviceListRecord) -> Result<device_list::ActiveModel> {
        Ok(device_list::Model {
            instance_id: self.owner(),
            user: record.user.clone(),
            devices: serde_json::to_string(&record.devices).map_err(ser_err)?,
            timestamp: record.timestamp,
            phash: record.phash.clone(),
            raw_id: record.raw_id.map(i64::from),
        }
        .into())
    }

    fn pending_row(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
        now: i64,
    ) -> pending_inbound::ActiveModel {
        pending_inbound::Model {
            instance_id: self.owner(),
            chat: chat.to_owned(),
            sender: sender.to_owned(),
            stanza_id: id.to_owned(),
            message: message.to_vec(),
            inserted_at: now,
        }
        .into()
    }

    /// One `put_lid_mapping` on `conn` (a write transaction): clear the reverse
    /// pointer of the phone this LID leaves, then upsert the mapping and point its
    /// phone at it.
    async fn put_lid_mapping_in(
        &self,
        conn: &crate::store::db::WriteConn<'_>,
        entry: &LidPnMappingEntry,
    ) -> Result<()> {
        let previous = conn
            .rows(
                &self
                    .scoped_find::<lid_mapping::Entity>()
                    .select_only()
                    .column(lid_mapping::Column::PhoneNumber)
                    .filter(lid_mapping::Column::Lid.eq(&entry.lid))
                    .limit(1)
                    .into_query(),
            )
            .await
            .map_err(db_err)?;
        let previous = match previous.first() {
            Some(r) => Some(r.string("phone_number").map_err(db_err)?),
            None => None,
        };
        if let Some(old) = previous.filter(|old| *old != entry.phone_number) {
            // Unconditional, as the reference: the pointer goes even if another LID
            // had claimed that phone since.
            conn.run(
                &self
                    .scoped_delete::<pn_lid_index::Entity>()
                    .filter(pn_lid_index::Column::PhoneNumber.eq(old)),
            )
            .await
            .map_err(db_err)?;
        }
        let mapping: lid_mapping::ActiveModel = lid_mapping::Model {
            instance_id: self.owner(),
            lid: entry.lid.clone(),
            phone_number: entry.phone_number.clone(),
            created_at: entry.created_at,
            updated_at: entry.updated_at,
            learning_source: entry.learning_source.clone(),
        }
        .into();
        upsert_rows(
            conn,
            vec![mapping],
            &overwrite(
                [lid_mapping::Column::InstanceId, lid_mapping::Column::Lid],
                [
                    lid_mapping::Column::PhoneNumber,
                    lid_mapping::Column::CreatedAt,
                    lid_mapping::Column::UpdatedAt,
                    lid_mapping::Column::LearningSource,
                ],
            ),
        )
        .await
        .map_err(db_err)?;
        let pointer: pn_lid_index::ActiveModel = pn_lid_index::Model {
            instance_id: self.owner(),
            phone_number: entry.phone_number.clone(),
            lid: entry.lid.clone(),
        }
        .into();
        upsert_rows(
            conn,
            vec![pointer],
            &overwrite(
                [
                    pn_lid_index::Column::InstanceId,
                    pn_lid_index::Column::PhoneNumber,
                ],
                [pn_lid_index::Column::Lid],
            ),
        )
        .await
        .map_err(db_err)
    }
}

fn lid_entry(m: lid_mapping::Model) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: m.lid,
        phone_number: m.phone_number,
        created_at: m.created_at,
        updated_at: m.updated_at,
        learning_source: m.learning_source,
    }
}

fn device_list_record(m: device_list::Model) -> Result<DeviceListRecord> {
    let devices: Vec<DeviceInfo> = serde_json::from_str(&m.devices).map_err(ser_err)?;
    let raw_id = m
        .raw_id
        .map(|r| {
            u32::try_from(r)
                .map_err(|_| StoreError::Validation(format!("stored raw_id {r} is not a u32")))
        })
        .transpose()?;
    Ok(DeviceListRecord {
        user: m.user,
        devices,
        timestamp: m.timestamp,
        phash: m.phash,
        raw_id,
    })
}

#[async_trait]
impl ProtocolStore for WaStore {
    // --- Per-device sender-key tracking ---

    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let rows = self
            .scoped_find::<sender_key_device::Entity>()
            .filter(sender_key_device::Column::GroupJid.eq(group_jid))
            .all(&self.db)
            .await
            .map_err(db_err)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.device_jid, r.has_key))
            .collect())
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let rows = last_wins(entries.iter().copied())
            .into_iter()
            .map(|(device_jid, has_key)| {
                sender_key_device::Model {
                    instance_id: self.owner(),
                    group_jid: group_jid.to_owned(),
                    device_jid: device_jid.to_owned(),
                    has_key,
                }
                .into()
            })
            .collect::<Vec<sender_key_device::ActiveModel>>();
        let on_conflict = overwrite(
            [
                sender_key_device::Column::InstanceId,
                sender_key_device::Column::GroupJid,
                sender_key_device::Column::DeviceJid,
            ],
            [sender_key_device::Column::HasKey],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        let cond = Condition::all().add(sender_key_device::Column::GroupJid.eq(group_jid));
        self.scoped_delete::<sender_key_device::Entity>()
            .filter(self.in_key_order::<sender_key_device::Entity>(cond))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        let _turn = self.write_turn().await;
        if device_jids.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write().await?;
        for chunk in device_jids.chunks(ROWS_PER_STATEMENT) {
            let cond = Condition::all()
                .add(sender_key_device::Column::DeviceJid.is_in(chunk.iter().copied()));
            self.scoped_delete::<sender_key_device::Entity>()
                .filter(self.in_key_order::<sender_key_device::Entity>(cond))
                .exec(&txn)
                .await
                .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<sender_key_device::Entity>()
            .filter(self.in_key_order::<sender_key_device::Entity>(Condition::all()))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // --- LID-PN mapping ---

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        let row = self
            .scoped_find::<lid_mapping::Entity>()
            .filter(lid_mapping::Column::Lid.eq(lid))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(lid_entry))
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let Some(pointer) = self
            .scoped_find::<pn_lid_index::Entity>()
            .filter(pn_lid_index::Column::PhoneNumber.eq(phone))
            .one(&self.db)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        self.get_lid_mapping(&pointer.lid).await
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        let mut w = self.writer().await?;
        w.atomic().await.map_err(db_err)?;
        let txn = w.conn();
        self.put_lid_mapping_in(&txn, entry).await?;
        drop(txn);
        w.finish().await.map_err(db_err)
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut w = self.writer().await?;
        // Applied in order: each entry's reverse-pointer cleanup depends on the
        // mapping the previous one left.
        w.atomic().await.map_err(db_err)?;
        let txn = w.conn();
        for entry in entries {
            self.put_lid_mapping_in(&txn, entry).await?;
        }
        drop(txn);
        w.finish().await.map_err(db_err)
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        let rows = self
            .scoped_find::<lid_mapping::Entity>()
            .all(&self.db)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().map(lid_entry).collect())
    }

    // --- Base-key collision detection ---

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        let row: base_key::ActiveModel = base_key::Model {
            instance_id: self.owner(),
            address: address.to_owned(),
            message_id: message_id.to_owned(),
            base_key: base_key.to_vec(),
        }
        .into();
        let on_conflict = overwrite(
            [
                base_key::Column::InstanceId,
                base_key::Column::Address,
                base_key::Column::MessageId,
            ],
            [base_key::Column::BaseKey],
        );
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        let row = self
            .scoped_find::<base_key::Entity>()
            .filter(base_key::Column::Address.eq(address))
            .filter(base_key::Column::MessageId.eq(message_id))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.is_some_and(|r| r.base_key == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<base_key::Entity>()
            .filter(base_key::Column::Address.eq(address))
            .filter(base_key::Column::MessageId.eq(message_id))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // --- Device registry ---

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.update_device_lists(vec![record]).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let rows = last_wins(records.iter().map(|r| (r.user.as_str(), r)))
            .into_iter()
            .map(|(_, r)| self.device_list_row(r))
            .collect::<Result<Vec<_>>>()?;
        let on_conflict = overwrite(
            [device_list::Column::InstanceId, device_list::Column::User],
            [
                device_list::Column::Devices,
                device_list::Column::Timestamp,
                device_list::Column::Phash,
                device_list::Column::RawId,
            ],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        let row = self
            .scoped_find::<device_list::Entity>()
            .filter(device_list::Column::User.eq(user))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        row.map(device_list_record).transpose()
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<device_list::Entity>()
            .filter(device_list::Column::User.eq(user))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // --- Group metadata cache ---

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<group_metadata::Entity>()
            .filter(group_metadata::Column::GroupJid.eq(group_jid))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.blob))
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        let row: group_metadata::ActiveModel = group_metadata::Model {
            instance_id: self.owner(),
            group_jid: group_jid.to_owned(),
            blob: blob.to_vec(),
        }
        .into();
        let on_conflict = overwrite(
            [
                group_metadata::Column::InstanceId,
                group_metadata::Column::GroupJid,
            ],
            [group_metadata::Column::Blob],
        );
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<group_metadata::Entity>()
            .filter(group_metadata::Column::GroupJid.eq(group_jid))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // --- tc-tokens ---

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        let key = self.tc_key(jid);
        let generation = match tc_cache::cache().get(&key) {
            Ok(hit) => return Ok(hit),
            Err(generation) => generation,
        };
        let row = self
            .scoped_find::<tc_token::Entity>()
            .filter(tc_token::Column::Jid.eq(jid))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        let entry = row.map(|r| TcTokenEntry {
            token: r.token,
            token_timestamp: r.token_timestamp,
            sender_timestamp: r.sender_timestamp,
        });
        tc_cache::cache().fill(key, generation, entry.clone());
        Ok(entry)
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let row: tc_token::ActiveModel = tc_token::Model {
            instance_id: self.owner(),
            jid: jid.to_owned(),
            token: entry.token.clone(),
            token_timestamp: entry.token_timestamp,
            sender_timestamp: entry.sender_timestamp,
        }
        .into();
        let on_conflict = overwrite(
            [tc_token::Column::InstanceId, tc_token::Column::Jid],
            [
                tc_token::Column::Token,
                tc_token::Column::TokenTimestamp,
                tc_token::Column::SenderTimestamp,
            ],
        );
        let _forget = tc_cache::Forget(self.tc_key(jid));
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        let _forget = tc_cache::Forget(self.tc_key(jid));
        let _turn = self.write_turn().await;
        self.scoped_delete::<tc_token::Entity>()
            .filter(tc_token::Column::Jid.eq(jid))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        let rows = self
            .scoped_find::<tc_token::Entity>()
            .all(&self.db)
            .await
            .map_err(db_err)?;
        Ok(rows.into_iter().map(|r| r.jid).collect())
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let _turn = self.write_turn().await;
        let token_dead = Expr::cust(r#"length("wa_tc_tokens"."token") = 0"#)
            .or(tc_token::Column::TokenTimestamp.lt(token_cutoff));
        let sender_dead = tc_token::Column::SenderTimestamp
            .is_null()
            .or(tc_token::Column::SenderTimestamp.lt(sender_cutoff));
        let cond = Condition::all().add(token_dead).add(sender_dead);
        let res = self
            .scoped_delete::<tc_token::Entity>()
            .filter(self.in_key_order::<tc_token::Entity>(cond))
            .exec(&self.db)
            .await;
        self.forget_cached();
        Ok(count(res.map_err(db_err)?.rows_affected))
    }

    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> Result<()> {
        let placeholder: tc_token::ActiveModel = tc_token::Model {
            instance_id: self.owner(),
            jid: jid.to_owned(),
            token: Vec::new(),
            token_timestamp: sender_timestamp,
            sender_timestamp: Some(sender_timestamp),
        }
        .into();
        let on_conflict =
            OnConflict::columns([tc_token::Column::InstanceId, tc_token::Column::Jid])
                .value(tc_token::Column::SenderTimestamp, Expr::cust(TC_SENDER_MAX))
                .to_owned();
        let _forget = tc_cache::Forget(self.tc_key(jid));
        self.upsert_batch(vec![placeholder], on_conflict).await
    }

    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> Result<()> {
        let row: tc_token::ActiveModel = tc_token::Model {
            instance_id: self.owner(),
            jid: jid.to_owned(),
            token: token.to_vec(),
            token_timestamp,
            sender_timestamp: None,
        }
        .into();
        let on_conflict =
            OnConflict::columns([tc_token::Column::InstanceId, tc_token::Column::Jid])
                .update_columns([tc_token::Column::Token, tc_token::Column::TokenTimestamp])
                .action_and_where(Expr::cust(TC_RECEIVED_NEWER))
                .to_owned();
        let _forget = tc_cache::Forget(self.tc_key(jid));
        self.upsert_batch(vec![row], on_conflict).await
    }

    // --- Sent-message store ---

    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        let row: sent_message::ActiveModel = sent_message::Model {
            instance_id: self.owner(),
            chat_jid: chat_jid.to_owned(),
            message_id: message_id.to_owned(),
            payload: payload.to_vec(),
            created_at: wacore::time::now_secs(),
        }
        .into();
        let on_conflict = overwrite(
            [
                sent_message::Column::InstanceId,
                sent_message::Column::ChatJid,
                sent_message::Column::MessageId,
            ],
            [
                sent_message::Column::Payload,
                sent_message::Column::CreatedAt,
            ],
        );
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let mut take = self
            .scoped_delete::<sent_message::Entity>()
            .filter(sent_message::Column::ChatJid.eq(chat_jid))
            .filter(sent_message::Column::MessageId.eq(message_id))
            .into_query();
        take.returning_col(sent_message::Column::Payload);
        crate::store::queue::write(&self.db, false, move |txn| {
            Box::pin(async move {
                let row = txn.rows(&take).await?.into_iter().next();
                row.map(|r| r.bytes("payload")).transpose()
            })
        })
        .await
        .map_err(db_err)
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let _turn = self.write_turn().await;
        let cond = Condition::all().add(sent_message::Column::CreatedAt.lt(cutoff_timestamp));
        let res = self
            .scoped_delete::<sent_message::Entity>()
            .filter(self.in_key_order::<sent_message::Entity>(cond))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(count(res.rows_affected))
    }

    // --- Pending inbound buffer ---

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> Result<()> {
        self.store_pending_inbound_batch(&[PendingInboundRow {
            chat,
            sender,
            id,
            message,
        }])
        .await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<pending_inbound::Entity>()
            .filter(pending_inbound::Column::Chat.eq(chat))
            .filter(pending_inbound::Column::Sender.eq(sender))
            .filter(pending_inbound::Column::StanzaId.eq(id))
            .one(&self.db)
            .await
            .map_err(db_err);
        match (row, self.spool()) {
            (Ok(Some(r)), _) => Ok(Some(r.message)),
            (Ok(None), None) => Ok(None),
            (Ok(None), Some(s)) => s
                .get(self.instance_id(), chat, sender, id)
                .map_err(|e| StoreError::Database(Box::new(e))),
            // The database is down: a spooled copy still answers; without one, fail
            // closed (whatsapp-rust then withholds the ack instead of dropping).
            (Err(e), Some(s)) => match s.get(self.instance_id(), chat, sender, id) {
                Ok(Some(b)) => Ok(Some(b)),
                _ => Err(e),
            },
            (Err(e), None) => Err(e),
        }
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        if let Some(s) = self.spool() {
            s.delete(self.instance_id(), chat, sender, id)
                .map_err(|e| StoreError::Database(Box::new(e)))?;
        }
        let delete = self
            .pending_row_delete(chat, sender, id)
            .build(self.db.get_database_backend());
        crate::store::queue::write_statements(&self.db, false, vec![delete])
            .await
            .map(|_| ())
            .map_err(db_err)
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        let _turn = self.write_turn().await;
        let spooled = self
            .spool()
            .map(|s| s.expire(self.instance_id(), cutoff_timestamp))
            .unwrap_or(0);
        let cond = Condition::all().add(pending_inbound::Column::InsertedAt.lt(cutoff_timestamp));
        let res = self
            .scoped_delete::<pending_inbound::Entity>()
            .filter(self.in_key_order::<pending_inbound::Entity>(cond))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(count(res.rows_affected) + spooled)
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        let raw = rows;
        let now = wacore::time::now_secs();
        let rows = last_wins(rows.iter().map(|r| ((r.chat, r.sender, r.id), r.message)))
            .into_iter()
            .map(|((chat, sender, id), message)| self.pending_row(chat, sender, id, message, now))
            .collect();
        let on_conflict = overwrite(
            [
                pending_inbound::Column::InstanceId,
                pending_inbound::Column::Chat,
                pending_inbound::Column::Sender,
                pending_inbound::Column::StanzaId,
            ],
            [
                pending_inbound::Column::Message,
                pending_inbound::Column::InsertedAt,
            ],
        );
        match self.upsert_batch(rows, on_conflict).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let Some(spool) = self.spool() else {
                    return Err(e);
                };
                // The database refuses the write: keep the buffered copies on disk so
                // a redelivery can still be replayed (see the spool module).
                tracing::warn!(instance_id = %self.instance_id(), rows = raw.len(), error = %e, "pending-inbound buffer spooled to disk");
                for r in raw {
                    spool
                        .put(self.instance_id(), r.chat, r.sender, r.id, r.message)
                        .map_err(|e| StoreError::Database(Box::new(e)))?;
                }
                Ok(())
            }
        }
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        // Key order, like the batch upsert, so concurrent batches lock alike.
        let mut keys: Vec<(&str, &str, &str)> =
            keys.iter().map(|k| (k.chat, k.sender, k.id)).collect();
        keys.sort_unstable();
        keys.dedup();
        if let Some(s) = self.spool() {
            for (chat, sender, id) in &keys {
                s.delete(self.instance_id(), chat, sender, id)
                    .map_err(|e| StoreError::Database(Box::new(e)))?;
            }
        }
        let backend = self.db.get_database_backend();
        let deletes = keys
            .into_iter()
            .map(|(chat, sender, id)| self.pending_row_delete(chat, sender, id).build(backend))
            .collect();
        crate::store::queue::write_statements(&self.db, true, deletes)
            .await
            .map(|_| ())
            .map_err(db_err)
    }
}
