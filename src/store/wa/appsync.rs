//! [`AppSyncStore`] for [`WaStore`]: app-state sync keys, collection versions
//! (`HashState`) and mutation MACs.
//!
//! Invariants (as wacore's `InMemoryBackend`): `set_sync_key` also makes the key the
//! "latest" one, in the same transaction; `get_version` of an unknown collection is
//! the default `HashState` (version 0), not an error; `put_mutation_macs` is an
//! upsert keyed by (collection, index MAC). A `HashState` is stored as columns, its
//! `index_value_map` as a JSON object of hex strings.

use std::collections::HashMap;

use async_trait::async_trait;
use sea_orm::{ColumnTrait, Condition, QueryFilter};
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::{AppStateSyncKey, AppSyncStore};

use super::entities::{app_state_version, latest_sync_key, mutation_mac, sync_key};
use super::{db_err, last_wins, overwrite, ser_err, upsert_rows, WaStore, ROWS_PER_STATEMENT};

/// Length of the ltHash kept in a `HashState`.
const LT_HASH_LEN: usize = 128;

impl WaStore {
    fn version_row(&self, name: &str, state: &HashState) -> Result<app_state_version::ActiveModel> {
        let version = i64::try_from(state.version).map_err(|_| {
            StoreError::Validation(format!(
                "app-state version {} exceeds BIGINT",
                state.version
            ))
        })?;
        let map: HashMap<&str, String> = state
            .index_value_map
            .iter()
            .map(|(k, v)| (k.as_str(), hex::encode(v)))
            .collect();
        Ok(app_state_version::Model {
            instance_id: self.owner(),
            name: name.to_owned(),
            version,
            hash: state.hash.to_vec(),
            index_value_map: serde_json::to_string(&map).map_err(ser_err)?,
            mac_mismatch_fatal: state.mac_mismatch_fatal,
        }
        .into())
    }
}

fn version_from_row(row: app_state_version::Model) -> Result<HashState> {
    let version = u64::try_from(row.version).map_err(|_| {
        StoreError::Validation(format!("negative app-state version {}", row.version))
    })?;
    let hash: [u8; LT_HASH_LEN] = row.hash.as_slice().try_into().map_err(|_| {
        StoreError::Validation(format!(
            "stored ltHash has {} bytes, expected {LT_HASH_LEN}",
            row.hash.len()
        ))
    })?;
    let map: HashMap<String, String> =
        serde_json::from_str(&row.index_value_map).map_err(ser_err)?;
    let index_value_map = map
        .into_iter()
        .map(|(k, v)| {
            hex::decode(&v)
                .map(|v| (k, v))
                .map_err(|e| StoreError::Serialization(Box::new(e)))
        })
        .collect::<Result<_>>()?;
    Ok(HashState {
        version,
        hash,
        index_value_map,
        mac_mismatch_fatal: row.mac_mismatch_fatal,
    })
}

#[async_trait]
impl AppSyncStore for WaStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        let row = self
            .scoped_find::<sync_key::Entity>()
            .filter(sync_key::Column::KeyId.eq(key_id.to_vec()))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| AppStateSyncKey {
            key_data: r.key_data,
            fingerprint: r.fingerprint,
            timestamp: r.timestamp,
        }))
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        let _turn = self.write_turn().await;
        let key_row: sync_key::ActiveModel = sync_key::Model {
            instance_id: self.owner(),
            key_id: key_id.to_vec(),
            key_data: key.key_data,
            fingerprint: key.fingerprint,
            timestamp: key.timestamp,
        }
        .into();
        let latest_row: latest_sync_key::ActiveModel = latest_sync_key::Model {
            instance_id: self.owner(),
            key_id: key_id.to_vec(),
        }
        .into();
        let txn = self.begin_write().await?;
        upsert_rows(
            &(&txn).into(),
            vec![key_row],
            &overwrite(
                [sync_key::Column::InstanceId, sync_key::Column::KeyId],
                [
                    sync_key::Column::KeyData,
                    sync_key::Column::Fingerprint,
                    sync_key::Column::Timestamp,
                ],
            ),
        )
        .await
        .map_err(db_err)?;
        upsert_rows(
            &(&txn).into(),
            vec![latest_row],
            &overwrite(
                [latest_sync_key::Column::InstanceId],
                [latest_sync_key::Column::KeyId],
            ),
        )
        .await
        .map_err(db_err)?;
        txn.commit().await.map_err(db_err)
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        let row = self
            .scoped_find::<app_state_version::Entity>()
            .filter(app_state_version::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        row.map_or_else(|| Ok(HashState::default()), version_from_row)
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        let row = self.version_row(name, &state)?;
        let on_conflict = overwrite(
            [
                app_state_version::Column::InstanceId,
                app_state_version::Column::Name,
            ],
            [
                app_state_version::Column::Version,
                app_state_version::Column::Hash,
                app_state_version::Column::IndexValueMap,
                app_state_version::Column::MacMismatchFatal,
            ],
        );
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        let version = i64::try_from(version).map_err(|_| {
            StoreError::Validation(format!("app-state version {version} exceeds BIGINT"))
        })?;
        let rows = last_wins(
            mutations
                .iter()
                .map(|m| (m.index_mac.as_slice(), m.value_mac.as_slice())),
        )
        .into_iter()
        .map(|(index_mac, value_mac)| {
            mutation_mac::Model {
                instance_id: self.owner(),
                name: name.to_owned(),
                index_mac: index_mac.to_vec(),
                version,
                value_mac: value_mac.to_vec(),
            }
            .into()
        })
        .collect::<Vec<mutation_mac::ActiveModel>>();
        let on_conflict = overwrite(
            [
                mutation_mac::Column::InstanceId,
                mutation_mac::Column::Name,
                mutation_mac::Column::IndexMac,
            ],
            [
                mutation_mac::Column::Version,
                mutation_mac::Column::ValueMac,
            ],
        );
        self.upsert_batch(rows, on_conflict).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<mutation_mac::Entity>()
            .filter(mutation_mac::Column::Name.eq(name))
            .filter(mutation_mac::Column::IndexMac.eq(index_mac.to_vec()))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.value_mac))
    }

    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        let mut out = HashMap::with_capacity(index_macs.len());
        for chunk in index_macs.chunks(ROWS_PER_STATEMENT) {
            let rows = self
                .scoped_find::<mutation_mac::Entity>()
                .filter(mutation_mac::Column::Name.eq(name))
                .filter(mutation_mac::Column::IndexMac.is_in(chunk.iter().map(|m| m.to_vec())))
                .all(&self.db)
                .await
                .map_err(db_err)?;
            for r in rows {
                // Matched by an IN over 32-byte values, so the length always fits.
                if let Ok(index) = <[u8; 32]>::try_from(r.index_mac.as_slice()) {
                    out.insert(index, r.value_mac);
                }
            }
        }
        Ok(out)
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let _turn = self.write_turn().await;
        if index_macs.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write().await?;
        let mut sorted: Vec<&Vec<u8>> = index_macs.iter().collect();
        sorted.sort();
        for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
            let cond = Condition::all()
                .add(mutation_mac::Column::Name.eq(name))
                .add(mutation_mac::Column::IndexMac.is_in(chunk.iter().map(|m| m.to_vec())));
            self.scoped_delete::<mutation_mac::Entity>()
                .filter(self.in_key_order::<mutation_mac::Entity>(cond))
                .exec(&txn)
                .await
                .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        let cond = Condition::all().add(mutation_mac::Column::Name.eq(name));
        self.scoped_delete::<mutation_mac::Entity>()
            .filter(self.in_key_order::<mutation_mac::Entity>(cond))
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        let row = self
            .scoped_find::<latest_sync_key::Entity>()
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.key_id))
    }
}
