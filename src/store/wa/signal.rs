//! [`SignalStore`] for [`WaStore`]: identity keys, sessions, one-time and signed
//! pre-keys, sender keys.
//!
//! Semantics follow wacore's `InMemoryBackend`: every put is an upsert, deletes of
//! absent rows succeed, batch puts are one transaction where the last duplicate
//! wins, `load_prekeys_batch` returns the found keys in request order, and
//! `mark_prekeys_uploaded` only UPDATEs (a consumed key is never resurrected).
//! Pre-key ids are u32 and stored as BIGINT.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{ColumnTrait, Condition, QueryFilter, QuerySelect};
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::SignalStore;

use super::entities::{identity, prekey, sender_key, session, signed_prekey};
use super::{db_err, last_wins, overwrite, WaStore};

/// Identity keys are X25519 public keys without the type byte.
const IDENTITY_KEY_LEN: usize = 32;

impl WaStore {
    fn identity_row(&self, address: &str, key: &[u8]) -> identity::ActiveModel {
        identity::Model {
            instance_id: self.owner(),
            address: address.to_owned(),
            identity_key: key.to_vec(),
        }
        .into()
    }

    fn session_row(&self, address: &str, record: &[u8]) -> session::ActiveModel {
        session::Model {
            instance_id: self.owner(),
            address: address.to_owned(),
            record: record.to_vec(),
        }
        .into()
    }

    fn prekey_row(&self, id: u32, record: &[u8], uploaded: bool) -> prekey::ActiveModel {
        prekey::Model {
            instance_id: self.owner(),
            key_id: i64::from(id),
            record: record.to_vec(),
            uploaded,
        }
        .into()
    }

    fn sender_key_row(&self, address: &str, record: &[u8]) -> sender_key::ActiveModel {
        sender_key::Model {
            instance_id: self.owner(),
            address: address.to_owned(),
            record: record.to_vec(),
        }
        .into()
    }

    /// Whether `addresses` (the column) holds `user@…` or `user:…` for this instance.
    /// A prefix compare with `substr`, not `LIKE`: `LIKE` treats `_`/`%` in the user
    /// as wildcards and is case-insensitive on SQLite.
    async fn any_address_of_user<E>(&self, column: E::Column, user: &str) -> Result<bool>
    where
        E: super::entities::InstanceScoped,
    {
        // INTEGER arguments: PostgreSQL has no substr(text, bigint, bigint).
        let len = i32::try_from(user.chars().count() + 1).unwrap_or(i32::MAX);
        let prefix = Expr::expr(Func::cust("substr").args([
            Expr::col(column),
            Expr::val(1i32),
            Expr::val(len),
        ]));
        let found = self
            .scoped_find::<E>()
            .filter(
                Condition::any()
                    .add(prefix.clone().eq(format!("{user}@")))
                    .add(prefix.eq(format!("{user}:"))),
            )
            .limit(1)
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }
}

#[async_trait]
impl SignalStore for WaStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        let on_conflict = overwrite(
            [identity::Column::InstanceId, identity::Column::Address],
            [identity::Column::IdentityKey],
        );
        self.upsert_batch(vec![self.identity_row(address, &key)], on_conflict)
            .await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        let rows = last_wins(identities.iter().map(|(a, k)| (a.as_ref(), k)))
            .into_iter()
            .map(|(a, k)| self.identity_row(a, k))
            .collect();
        let on_conflict = overwrite(
            [identity::Column::InstanceId, identity::Column::Address],
            [identity::Column::IdentityKey],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        let row = self
            .scoped_find::<identity::Entity>()
            .filter(identity::Column::Address.eq(address))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        row.map(|r| {
            <[u8; IDENTITY_KEY_LEN]>::try_from(r.identity_key.as_slice()).map_err(|_| {
                StoreError::Validation(format!(
                    "stored identity key has {} bytes, expected {IDENTITY_KEY_LEN}",
                    r.identity_key.len()
                ))
            })
        })
        .transpose()
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<identity::Entity>()
            .filter(identity::Column::Address.eq(address))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        let row = self
            .scoped_find::<session::Entity>()
            .filter(session::Column::Address.eq(address))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| Bytes::from(r.record)))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        let on_conflict = overwrite(
            [session::Column::InstanceId, session::Column::Address],
            [session::Column::Record],
        );
        self.upsert_batch(vec![self.session_row(address, session)], on_conflict)
            .await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows = last_wins(sessions.iter().map(|(a, s)| (a.as_ref(), s)))
            .into_iter()
            .map(|(a, s)| self.session_row(a, s))
            .collect();
        let on_conflict = overwrite(
            [session::Column::InstanceId, session::Column::Address],
            [session::Column::Record],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<session::Entity>()
            .filter(session::Column::Address.eq(address))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn has_session(&self, address: &str) -> Result<bool> {
        let row = self
            .scoped_find::<session::Entity>()
            .select_only()
            .column(session::Column::Address)
            .filter(session::Column::Address.eq(address))
            .into_tuple::<String>()
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        Ok(self
            .any_address_of_user::<session::Entity>(session::Column::Address, user)
            .await?
            || self
                .any_address_of_user::<identity::Entity>(identity::Column::Address, user)
                .await?)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let on_conflict = overwrite(
            [prekey::Column::InstanceId, prekey::Column::KeyId],
            [prekey::Column::Record, prekey::Column::Uploaded],
        );
        self.upsert_batch(vec![self.prekey_row(id, record, uploaded)], on_conflict)
            .await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        let rows = last_wins(keys.iter().map(|(id, r)| (*id, r)))
            .into_iter()
            .map(|(id, r)| self.prekey_row(id, r, uploaded))
            .collect();
        let on_conflict = overwrite(
            [prekey::Column::InstanceId, prekey::Column::KeyId],
            [prekey::Column::Record, prekey::Column::Uploaded],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        let row = self
            .scoped_find::<prekey::Entity>()
            .filter(prekey::Column::KeyId.eq(i64::from(id)))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| Bytes::from(r.record)))
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        let mut found: HashMap<u32, Bytes> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(super::ROWS_PER_STATEMENT) {
            let rows = self
                .scoped_find::<prekey::Entity>()
                .filter(prekey::Column::KeyId.is_in(chunk.iter().map(|&id| i64::from(id))))
                .all(&self.db)
                .await
                .map_err(db_err)?;
            for r in rows {
                // The column only ever holds u32 ids written by this store.
                if let Ok(id) = u32::try_from(r.key_id) {
                    found.insert(id, Bytes::from(r.record));
                }
            }
        }
        // Request order, duplicates repeated, absent ids skipped: as the reference.
        Ok(ids
            .iter()
            .filter_map(|id| found.get(id).map(|r| (*id, r.clone())))
            .collect())
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        let _turn = self.write_turn().await;
        for chunk in ids.chunks(super::ROWS_PER_STATEMENT) {
            self.scoped_update::<prekey::Entity>()
                .col_expr(prekey::Column::Uploaded, Expr::value(true))
                .filter(
                    self.in_key_order::<prekey::Entity>(
                        Condition::all().add(
                            prekey::Column::KeyId.is_in(chunk.iter().map(|&id| i64::from(id))),
                        ),
                    ),
                )
                .exec(&self.db)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<prekey::Entity>()
            .filter(prekey::Column::KeyId.eq(i64::from(id)))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        let max = self
            .scoped_find::<prekey::Entity>()
            .select_only()
            .column_as(prekey::Column::KeyId.max(), "max_id")
            .into_tuple::<Option<i64>>()
            .one(&self.db)
            .await
            .map_err(db_err)?
            .flatten()
            .unwrap_or(0);
        u32::try_from(max)
            .map_err(|_| StoreError::Validation(format!("stored pre-key id {max} is not a u32")))
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        let row: signed_prekey::ActiveModel = signed_prekey::Model {
            instance_id: self.owner(),
            key_id: i64::from(id),
            record: record.to_vec(),
        }
        .into();
        let on_conflict = overwrite(
            [
                signed_prekey::Column::InstanceId,
                signed_prekey::Column::KeyId,
            ],
            [signed_prekey::Column::Record],
        );
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<signed_prekey::Entity>()
            .filter(signed_prekey::Column::KeyId.eq(i64::from(id)))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.record))
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let rows = self
            .scoped_find::<signed_prekey::Entity>()
            .all(&self.db)
            .await
            .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                let id = u32::try_from(r.key_id).map_err(|_| {
                    StoreError::Validation(format!(
                        "stored signed pre-key id {} is not a u32",
                        r.key_id
                    ))
                })?;
                Ok((id, r.record))
            })
            .collect()
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<signed_prekey::Entity>()
            .filter(signed_prekey::Column::KeyId.eq(i64::from(id)))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        let on_conflict = overwrite(
            [sender_key::Column::InstanceId, sender_key::Column::Address],
            [sender_key::Column::Record],
        );
        self.upsert_batch(vec![self.sender_key_row(address, record)], on_conflict)
            .await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        let rows = last_wins(sender_keys.iter().map(|(a, r)| (a.as_ref(), r)))
            .into_iter()
            .map(|(a, r)| self.sender_key_row(a, r))
            .collect();
        let on_conflict = overwrite(
            [sender_key::Column::InstanceId, sender_key::Column::Address],
            [sender_key::Column::Record],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<sender_key::Entity>()
            .filter(sender_key::Column::Address.eq(address))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.record))
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        self.scoped_delete::<sender_key::Entity>()
            .filter(sender_key::Column::Address.eq(address))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
