//! App state ("syncd"): the server side of `w:sync:app:state`, and the phone as a writer.
//!
//! WhatsApp's server keeps, per account, five collections (`critical_block`,
//! `critical_unblock_low`, `regular_high`, `regular`, `regular_low`) as ordered lists of
//! encrypted patches. It never reads them: a patch is encrypted and MACed by the device
//! that wrote it with the account's app-state key, and the server only numbers it
//! (`version`, one more than the collection's last) and hands it to the other devices.
//! So here:
//!
//! - **fetch** (`<collection name version? return_snapshot>` without a `<patch>`): the
//!   patches after `version` (all of them when it is absent), at most [`PAGE`] per
//!   answer with `has_more_patches="true"` when more remain. No snapshot is ever sent:
//!   the patches from version 1 rebuild the same state.
//! - **upload** (`<collection name version><patch>`): optimistic concurrency on the
//!   base `version`. On the current version the patch becomes the next one (the server
//!   writes its `version` field, which clients leave empty) and the answer names the
//!   new version; the account's other devices get `<notification type="server_sync">`
//!   naming the collection and version. On an older base the collection answers
//!   `type="error"` with `<error code="409">` and carries the patches it missed, which
//!   the client absorbs before rebuilding its patch.
//! - **the phone** writes patches of its own (push name, NCT salt, chat mute/pin/archive,
//!   contacts...: any action of `wacore::appstate::schemas`), encrypted with the
//!   account's current key exactly as a client builds them (value and index MACs, the
//!   collection's LTHash and snapshot MAC, the patch MAC). It can rotate the key without
//!   telling the companions, who then meet a patch whose key they lack and ask the
//!   phone for it (`APP_STATE_SYNC_KEY_REQUEST`, answered in `phone.rs`).
//!
//! Client side (whatsapp-rust 0.7): `wacore-appstate/src/patch_decode.rs`
//! (`parse_patch_lists`, `parse_collection_error`: 409 → conflict, 400/404 fatal, the
//! rest retryable), `whatsapp-rust/src/client/app_state.rs`
//! (`sync_collections_batched_inner`, `process_app_state_sync_task`,
//! `send_app_state_patch`, `absorb_conflicting_patches`, `request_keys_and_wait`),
//! `src/handlers/notification/groups.rs` (`handle_server_sync_notification`),
//! `wacore/src/appstate_sync.rs` (`build_patch`: how a client numbers and MACs a patch).

use crate::conn::{attr, iq_error, iq_result, now};
use crate::registry::Registry;
use crate::routing::{deliver, Delivery};
use std::collections::{BTreeMap, HashMap};
use whatsapp_rust::wacore::appstate::encode::encode_record;
use whatsapp_rust::wacore::appstate::hash::{generate_patch_mac, HashState};
use whatsapp_rust::wacore::appstate::keys::expand_app_state_keys;
use whatsapp_rust::wacore::appstate::schemas::{IndexPart, Schema, NCT_SALT_SYNC};
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Node, NodeContent};
use whatsapp_rust::waproto::codec::{syncd_patch_decode, syncd_patch_to_vec};
use whatsapp_rust::waproto::whatsapp as wa;

/// Patches per fetch answer; more are announced with `has_more_patches`.
pub const PAGE: usize = 20;

/// The five collections WhatsApp keeps.
pub const COLLECTIONS: [&str; 5] = [
    "critical_block",
    "critical_unblock_low",
    "regular_high",
    "regular",
    "regular_low",
];

/// One collection: its patches (patch `i` is version `i + 1`, stored as served) and
/// the phone's view of its state, which it needs to MAC patches of its own.
#[derive(Default)]
pub struct Collection {
    patches: Vec<Vec<u8>>,
    hash: HashState,
    /// Index MAC → value MAC of every entry currently set.
    value_macs: HashMap<Vec<u8>, Vec<u8>>,
}

impl Collection {
    pub fn version(&self) -> u64 {
        self.patches.len() as u64
    }

    /// Numbers `patch` as the next version, stores it, and moves the phone's view.
    fn append(&mut self, name: &str, mut patch: wa::SyncdPatch) -> Result<u64, String> {
        let version = self.version() + 1;
        let macs = &self.value_macs;
        let (_, r) = self.hash.update_hash(&patch.mutations, |index_mac, _| {
            Ok(macs.get(index_mac).cloned())
        });
        r.map_err(|e| format!("{name}: {e}"))?;
        self.hash.version = version;
        for m in &patch.mutations {
            let Some(index) = m.record.index.blob.clone() else {
                continue;
            };
            let remove = m
                .operation
                .is_some_and(|op| op == wa::syncd_mutation::SyncdOperation::REMOVE);
            match &m.record.value.blob {
                Some(blob) if !remove && blob.len() >= 32 => {
                    self.value_macs
                        .insert(index, blob[blob.len() - 32..].to_vec());
                }
                _ => {
                    self.value_macs.remove(&index);
                }
            }
        }
        patch.version = wa::SyncdVersion {
            version: Some(version),
        }
        .into();
        self.patches.push(syncd_patch_to_vec(&patch));
        Ok(version)
    }
}

/// An account's app state on the server.
#[derive(Default)]
pub struct Store {
    pub collections: BTreeMap<String, Collection>,
    /// Key requests (`APP_STATE_SYNC_KEY_REQUEST`) the phone received.
    pub key_requests: u64,
    /// Key requests the phone leaves unanswered before it answers again (a phone that
    /// is offline for a while).
    pub ignore_key_requests: u64,
}

fn bytes_of(n: &Node) -> Option<&[u8]> {
    match &n.content {
        Some(NodeContent::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// `<notification type="server_sync">` for the account's devices other than `except`.
fn server_sync(
    reg: &mut Registry,
    phone: &str,
    except: Option<u32>,
    name: &str,
    version: u64,
) -> Vec<Delivery> {
    let devices: Vec<u32> = reg
        .accounts
        .get(phone)
        .map(|a| {
            a.devices
                .keys()
                .copied()
                .filter(|d| Some(*d) != except)
                .collect()
        })
        .unwrap_or_default();
    devices
        .into_iter()
        .filter_map(|d| {
            let n = NodeBuilder::new("notification")
                .attr("from", "s.whatsapp.net")
                .attr("type", "server_sync")
                .attr("id", format!("{}", rand::random::<u32>()))
                .attr("t", now().to_string())
                .children([NodeBuilder::new("collection")
                    .attr("name", name)
                    .attr("version", version.to_string())
                    .build()])
                .build();
            deliver(reg, phone, d, n)
        })
        .collect()
}

fn patches_node(patches: &[Vec<u8>]) -> Node {
    NodeBuilder::new("patches")
        .children(
            patches
                .iter()
                .map(|p| NodeBuilder::new("patch").bytes(p.clone()).build()),
        )
        .build()
}

/// Answers a `w:sync:app:state` iq of the device `(phone, device)`.
pub(crate) fn sync_iq(
    reg: &mut Registry,
    me: Option<&(String, u32)>,
    node: &Node,
    id: &str,
) -> (Node, Vec<Delivery>) {
    let Some((phone, device)) = me else {
        return (iq_error(id, "401", "not-authorized"), Vec::new());
    };
    let Some(sync) = node.get_optional_child("sync") else {
        return (iq_error(id, "400", "bad-request"), Vec::new());
    };
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for c in sync.get_children_by_tag("collection") {
        let name = attr(c, "name").unwrap_or_default();
        let error = |code: &str, text: &str| {
            NodeBuilder::new("collection")
                .attr("name", name.clone())
                .attr("type", "error")
                .children([NodeBuilder::new("error")
                    .attr("code", code)
                    .attr("text", text)
                    .build()])
                .build()
        };
        if !COLLECTIONS.contains(&name.as_str()) {
            answers.push(error("400", "bad-request"));
            continue;
        }
        let Some(acc) = reg.accounts.get_mut(phone) else {
            answers.push(error("404", "item-not-found"));
            continue;
        };
        let coll = acc.app_state.collections.entry(name.clone()).or_default();
        let base: u64 = attr(c, "version").and_then(|v| v.parse().ok()).unwrap_or(0);
        let current = coll.version();
        if let Some(upload) = c.get_optional_child("patch") {
            let Some(patch) = bytes_of(upload).and_then(|b| syncd_patch_decode(b).ok()) else {
                answers.push(error("400", "bad-request"));
                continue;
            };
            if base != current {
                // Someone else moved the collection on: the patches it missed win.
                let from = (base as usize).min(coll.patches.len());
                let end = (from + PAGE).min(coll.patches.len());
                let mut b = NodeBuilder::new("collection")
                    .attr("name", name.clone())
                    .attr("type", "error")
                    .attr("version", current.to_string());
                if end < coll.patches.len() {
                    b = b.attr("has_more_patches", "true");
                }
                answers.push(
                    b.children([
                        NodeBuilder::new("error")
                            .attr("code", "409")
                            .attr("text", "conflict")
                            .build(),
                        patches_node(&coll.patches[from..end]),
                    ])
                    .build(),
                );
                continue;
            }
            match coll.append(&name, patch) {
                Ok(version) => {
                    answers.push(
                        NodeBuilder::new("collection")
                            .attr("name", name.clone())
                            .attr("version", version.to_string())
                            .build(),
                    );
                    out.extend(server_sync(reg, phone, Some(*device), &name, version));
                }
                Err(_) => answers.push(error("400", "bad-request")),
            }
            continue;
        }
        let from = (base as usize).min(coll.patches.len());
        let end = (from + PAGE).min(coll.patches.len());
        let mut b = NodeBuilder::new("collection")
            .attr("name", name.clone())
            .attr("version", current.to_string());
        if let Some(d) = acc.devices.get_mut(device) {
            d.app_state_fetched.insert(name.clone());
        }
        if end < coll.patches.len() {
            b = b.attr("has_more_patches", "true");
        }
        if end > from {
            b = b.children([patches_node(&coll.patches[from..end])]);
        }
        answers.push(b.build());
    }
    (
        iq_result(id, vec![NodeBuilder::new("sync").children(answers).build()]),
        out,
    )
}

/// `server_sync` for every collection that has patches, to every device of `phone`:
/// what the server says to a device that may have missed a notification.
pub(crate) fn announce(reg: &mut Registry, phone: &str) -> Vec<Delivery> {
    let versions: Vec<(String, u64)> = reg
        .accounts
        .get(phone)
        .map(|a| {
            versions(&a.app_state)
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default();
    versions
        .into_iter()
        .flat_map(|(name, v)| server_sync(reg, phone, None, &name, v))
        .collect()
}

/// The JSON index of an action: the schema's literal name and `args` in order.
fn index_of(schema: &Schema, args: &[&str]) -> Result<Vec<u8>, String> {
    let mut parts = Vec::new();
    let mut rest = args.iter();
    for p in schema.index_parts {
        match p {
            IndexPart::Literal { value } => parts.push((*value).to_string()),
            _ => parts.push(
                rest.next()
                    .ok_or_else(|| format!("{}: too few index arguments", schema.name))?
                    .to_string(),
            ),
        }
    }
    if rest.next().is_some() {
        return Err(format!("{}: too many index arguments", schema.name));
    }
    serde_json::to_vec(&parts).map_err(|e| e.to_string())
}

/// The phone sets `value` for the action `schema` with index `args`: one patch in the
/// schema's collection, encrypted and MACed with the account's current key. With
/// `notify`, the account's devices get a `server_sync` notification; without, they
/// learn of it at their next sync (or from a 409 when they upload). Returns the new
/// collection version.
pub(crate) fn phone_set(
    reg: &mut Registry,
    phone: &str,
    schema: &Schema,
    args: &[&str],
    value: &wa::SyncActionValue,
    notify: bool,
) -> Result<(u64, Vec<Delivery>), String> {
    let index = index_of(schema, args)?;
    let name = schema.collection.as_str();
    let acc = reg.accounts.get_mut(phone).ok_or("no such account")?;
    if schema.name == NCT_SALT_SYNC.name {
        // The server knows the salt it syncs, so it can check the tokens made from it.
        acc.nct_salt = value
            .nct_salt_sync_action
            .as_option()
            .and_then(|a| a.salt.clone())
            .filter(|s| !s.is_empty());
    }
    let key = acc.app_state_key.clone();
    let keys = expand_app_state_keys(&key.data);
    let iv: [u8; 16] = rand::random();
    let (mutation, _) = encode_record(
        wa::syncd_mutation::SyncdOperation::SET,
        &index,
        value,
        &keys,
        &key.id,
        &iv,
        schema.version as i32,
    );
    let coll = acc
        .app_state
        .collections
        .entry(name.to_string())
        .or_default();
    // The snapshot MAC is over the state after this patch, as `build_patch` makes it.
    let mut after = coll.hash.clone();
    let macs = &coll.value_macs;
    let (_, r) = after.update_hash(std::slice::from_ref(&mutation), |i, _| {
        Ok(macs.get(i).cloned())
    });
    r.map_err(|e| e.to_string())?;
    after.version = coll.version() + 1;
    let mut patch = wa::SyncdPatch {
        snapshot_mac: Some(after.generate_snapshot_mac(name, &keys.snapshot_mac)),
        key_id: wa::KeyId {
            id: Some(key.id.clone()),
        }
        .into(),
        mutations: vec![mutation],
        ..Default::default()
    };
    patch.patch_mac = Some(generate_patch_mac(
        &patch,
        name,
        &keys.patch_mac,
        after.version,
    ));
    let version = coll.append(name, patch)?;
    let out = if notify {
        server_sync(reg, phone, None, name, version)
    } else {
        Vec::new()
    };
    Ok((version, out))
}

/// Keys the phone can hand out: the current one and every one it rotated away from.
pub(crate) fn known_keys(acc: &crate::registry::Account) -> Vec<crate::phone::AppStateKey> {
    let mut keys = acc.old_app_state_keys.clone();
    keys.push(acc.app_state_key.clone());
    keys
}

/// The collections' versions, for the admin view.
pub fn versions(store: &Store) -> BTreeMap<String, u64> {
    store
        .collections
        .iter()
        .map(|(k, c)| (k.clone(), c.version()))
        .collect()
}

/// Body of `POST /admin/mock-phone/app-state`: `op` is `set` (the phone writes an
/// action: `push_name` with `name`, `nct_salt` with base64 `salt`, `mute` / `pin` /
/// `archive` with `chat` and `on`, `contact` with `jid` and `name`), `rotate-key`
/// (`share`), or `ignore-key-requests` (`count`).
#[derive(serde::Deserialize)]
pub(crate) struct AdminBody {
    phone: String,
    op: String,
    action: Option<String>,
    name: Option<String>,
    salt: Option<String>,
    chat: Option<String>,
    jid: Option<String>,
    on: Option<bool>,
    #[serde(default = "yes")]
    notify: bool,
    #[serde(default = "yes")]
    share: bool,
    count: Option<u64>,
}

fn yes() -> bool {
    true
}

/// One admin app-state operation: (HTTP status, JSON answer).
pub(crate) async fn admin(shared: &crate::Shared, b: AdminBody) -> (u16, serde_json::Value) {
    use serde_json::json;
    use wa::sync_action_value as sav;
    use whatsapp_rust::wacore::appstate::schemas;
    match b.op.as_str() {
        "rotate-key" => match crate::phone::rotate_app_state_key(shared, &b.phone, b.share).await {
            Ok(id) => {
                let hex: String = id.iter().map(|x| format!("{x:02x}")).collect();
                (
                    200,
                    json!({"phone": b.phone, "key_id": hex, "shared": b.share}),
                )
            }
            Err(e) => (404, json!({"error": e})),
        },
        "ignore-key-requests" => {
            let mut reg = shared.registry.lock().expect("registry lock");
            match reg.accounts.get_mut(&b.phone) {
                Some(a) => {
                    a.app_state.ignore_key_requests = b.count.unwrap_or(1);
                    (
                        200,
                        json!({"phone": b.phone, "ignore": a.app_state.ignore_key_requests}),
                    )
                }
                None => (404, json!({"error": "no such account"})),
            }
        }
        "set" => {
            let mut v = wa::SyncActionValue {
                timestamp: Some(now() as i64 * 1000),
                ..Default::default()
            };
            let on = b.on.unwrap_or(true);
            let chat = b.chat.clone().unwrap_or_default();
            let (schema, args): (&Schema, Vec<String>) = match b.action.as_deref() {
                Some("push_name") => {
                    v.push_name_setting = sav::PushNameSetting {
                        name: b.name.clone(),
                    }
                    .into();
                    (&schemas::SETTING_PUSH_NAME, vec![])
                }
                Some("nct_salt") => {
                    use base64::Engine as _;
                    let Some(salt) = b
                        .salt
                        .as_deref()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    else {
                        return (400, json!({"error": "salt must be base64"}));
                    };
                    v.nct_salt_sync_action = sav::NctSaltSyncAction { salt: Some(salt) }.into();
                    (&schemas::NCT_SALT_SYNC, vec![])
                }
                Some("mute") => {
                    v.mute_action = sav::MuteAction {
                        muted: Some(on),
                        mute_end_timestamp: on.then_some(-1),
                        ..Default::default()
                    }
                    .into();
                    (&schemas::MUTE, vec![chat])
                }
                Some("pin") => {
                    v.pin_action = sav::PinAction { pinned: Some(on) }.into();
                    (&schemas::PIN, vec![chat])
                }
                Some("archive") => {
                    v.archive_chat_action = sav::ArchiveChatAction {
                        archived: Some(on),
                        ..Default::default()
                    }
                    .into();
                    (&schemas::ARCHIVE, vec![chat])
                }
                Some("contact") => {
                    v.contact_action = sav::ContactAction {
                        full_name: b.name.clone(),
                        ..Default::default()
                    }
                    .into();
                    (&schemas::CONTACT, vec![b.jid.clone().unwrap_or_default()])
                }
                _ => {
                    return (
                        400,
                        json!({"error": "action is one of push_name, nct_salt, mute, pin, archive, contact"}),
                    )
                }
            };
            if args.iter().any(|a| !a.contains('@')) {
                return (400, json!({"error": "chat / jid must be a JID"}));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let result = {
                let mut reg = shared.registry.lock().expect("registry lock");
                phone_set(&mut reg, &b.phone, schema, &args, &v, b.notify)
            };
            match result {
                Ok((version, out)) => {
                    for d in out {
                        d.send().await;
                    }
                    (
                        200,
                        json!({"phone": b.phone, "collection": schema.collection.as_str(), "version": version}),
                    )
                }
                Err(e) => (404, json!({"error": e})),
            }
        }
        _ => (
            400,
            json!({"error": "op is one of set, rotate-key, ignore-key-requests"}),
        ),
    }
}

/// `GET /admin/mock-phone/app-state/<phone>`: versions, key requests, current key id.
pub(crate) fn admin_view(shared: &crate::Shared, phone: &str) -> Option<serde_json::Value> {
    let reg = shared.registry.lock().expect("registry lock");
    let a = reg.accounts.get(phone)?;
    let key: String = a
        .app_state_key
        .id
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    Some(serde_json::json!({
        "phone": phone,
        "versions": versions(&a.app_state),
        "key_requests": a.app_state.key_requests,
        "key_id": key,
    }))
}
