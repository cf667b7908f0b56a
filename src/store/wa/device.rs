//! [`DeviceStore`] for [`WaStore`]: the instance's one `wa_device` row.
//!
//! The `Device` is stored as its serde JSON (the encoding its own derive defines;
//! JSON is self-describing, so fields added by later wacore versions with
//! `#[serde(default)]` load from old rows). Fields marked `#[serde(skip)]`
//! (`device_props`, `client_profile`, `nct_salt_sync_seen`) are runtime-only and not
//! persisted, as in whatsapp-rust's own stores.
//!
//! One instance has exactly one device, so `create` always answers [`DEVICE_ID`];
//! like wacore's `InMemoryBackend` it materialises a fresh `Device::new()` when the
//! row is absent (so `exists` is true right after) and never overwrites an existing
//! device.

use async_trait::async_trait;
use sea_orm::sea_query::OnConflict;
use wacore::store::error::Result;
use wacore::store::traits::DeviceStore;
use wacore::store::Device;

use super::entities::device;
use super::{db_err, overwrite, ser_err, WaStore};

/// The device id `DeviceStore::create` returns: one device per instance, always 1.
pub const DEVICE_ID: i32 = 1;

impl WaStore {
    fn device_row(&self, device: &Device) -> Result<device::ActiveModel> {
        Ok(device::Model {
            instance_id: self.owner(),
            device_id: DEVICE_ID,
            data: serde_json::to_vec(device).map_err(ser_err)?,
        }
        .into())
    }
}

#[async_trait]
impl DeviceStore for WaStore {
    async fn save(&self, device: &Device) -> Result<()> {
        let row = self.device_row(device)?;
        let on_conflict = overwrite([device::Column::InstanceId], [device::Column::Data]);
        self.upsert_batch(vec![row], on_conflict).await
    }

    async fn load(&self) -> Result<Option<Device>> {
        let row = self
            .scoped_find::<device::Entity>()
            .one(&self.db)
            .await
            .map_err(db_err)?;
        row.map(|r| serde_json::from_slice(&r.data).map_err(ser_err))
            .transpose()
    }

    async fn exists(&self) -> Result<bool> {
        let row = self
            .scoped_find::<device::Entity>()
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    async fn create(&self) -> Result<i32> {
        let row = self.device_row(&Device::new())?;
        // DO NOTHING: a second create (or a racing one) keeps the existing keys.
        let on_conflict = OnConflict::column(device::Column::InstanceId)
            .do_nothing()
            .to_owned();
        self.upsert_batch(vec![row], on_conflict).await?;
        Ok(DEVICE_ID)
    }
}
