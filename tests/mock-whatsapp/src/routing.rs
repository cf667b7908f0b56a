//! Who is on the network and where stanzas go: usync (number check, device lists),
//! prekey bundles, 1:1 message fan-out with server acks and offline queues, receipts,
//! and the groups query.
//!
//! Addressing follows whatsapp-rust 0.7 (PROTOCOL.md §4): peers are addressed by phone
//! number; an account's own LID is accepted wherever a user is named (the client asks
//! for its own devices and its own phone's bundle by LID), and every requested JID is
//! echoed exactly as asked.

use crate::conn::{attr, iq_result, SERVER};
use crate::registry::{ConnHandle, Outbound, Registry};
use crate::Shared;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};
use whatsapp_rust::waproto::whatsapp as wa;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn text_of(n: &Node) -> String {
    match &n.content {
        Some(NodeContent::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(NodeContent::String(s)) => s.to_string(),
        _ => String::new(),
    }
}

/// The signed key-index list of an account (the client does not verify the signature).
fn key_index_list(reg: &Registry, phone: &str) -> Vec<u8> {
    let Some(acc) = reg.accounts.get(phone) else {
        return Vec::new();
    };
    let valid: Vec<u32> = acc.devices.values().map(|d| d.key_index).collect();
    let details = wa::ADVKeyIndexList {
        raw_id: Some(acc.raw_id),
        timestamp: Some(now()),
        current_index: valid.iter().copied().max(),
        valid_indexes: valid,
        account_type: None,
    }
    .encode_to_vec();
    let sig = acc
        .account_key
        .calculate_signature(&details, &mut rand::rng())
        .map(|s| s.to_vec())
        .unwrap_or_default();
    wa::ADVSignedKeyIndexList {
        details: Some(details),
        account_signature: Some(sig),
        account_signature_key: Some(acc.account_key.public_key.public_key_bytes().to_vec()),
    }
    .encode_to_vec()
}

/// Answers a usync query: `<contact>` (is on WhatsApp), `<devices>`, `<lid>`.
pub(crate) fn usync(shared: &Shared, iq: &Node) -> Option<Node> {
    let usync = iq.get_optional_child("usync")?;
    let query = usync.get_optional_child("query")?;
    let wants_devices = query.get_optional_child("devices").is_some();
    let wants_contact = query.get_optional_child("contact").is_some();
    let list = usync.get_optional_child("list")?;
    let reg = shared.registry.lock().expect("registry lock");
    let mut users = Vec::new();
    for u in list.get_children_by_tag("user") {
        let mut children = Vec::new();
        let (jid_attr, user) = match attr(u, "jid") {
            Some(j) => {
                let user = j.split(['@', ':']).next().unwrap_or_default().to_string();
                (j, user)
            }
            None => {
                let number = u
                    .get_optional_child("contact")
                    .map(text_of)
                    .unwrap_or_default();
                let digits: String = number.chars().filter(|c| c.is_ascii_digit()).collect();
                (format!("{digits}@s.whatsapp.net"), digits)
            }
        };
        let account = reg.find_user(&user);
        if wants_contact {
            let t = if account.is_some() { "in" } else { "out" };
            children.push(NodeBuilder::new("contact").attr("type", t).build());
        }
        if wants_devices {
            if let Some(acc) = account {
                let mut devs = vec![NodeBuilder::new("device").attr("id", "0").build()];
                for d in acc.devices.values() {
                    devs.push(
                        NodeBuilder::new("device")
                            .attr("id", d.id.to_string())
                            .attr("key-index", d.key_index.to_string())
                            .build(),
                    );
                }
                let mut dev_children = vec![NodeBuilder::new("device-list")
                    .attr("hash", format!("2:{:x}", acc.devices.len()))
                    .children(devs)
                    .build()];
                if !acc.devices.is_empty() {
                    dev_children.push(
                        NodeBuilder::new("key-index-list")
                            .attr("ts", now().to_string())
                            .bytes(key_index_list(&reg, &acc.phone))
                            .build(),
                    );
                }
                children.push(NodeBuilder::new("devices").children(dev_children).build());
            }
        }
        let b = NodeBuilder::new("user").attr("jid", jid_attr);
        users.push(if children.is_empty() {
            b.build()
        } else {
            b.children(children).build()
        });
    }
    Some(
        NodeBuilder::new("usync")
            .children([NodeBuilder::new("list").children(users).build()])
            .build(),
    )
}

/// Prekey bundles for `<key><user jid=.../>...</key>`; unknown devices are left out.
pub(crate) fn prekey_bundles(shared: &Shared, key: Option<&Node>) -> Node {
    let mut users = Vec::new();
    if let Some(key) = key {
        let mut reg = shared.registry.lock().expect("registry lock");
        for u in key.get_children_by_tag("user") {
            let Some(jid_s) = attr(u, "jid") else {
                continue;
            };
            let Ok(jid) = jid_s.parse::<Jid>() else {
                continue;
            };
            let Some(acc) = reg.find_user_mut(&jid.user) else {
                continue;
            };
            let b = |tag: &'static str, v: Vec<u8>| NodeBuilder::new(tag).bytes(v).build();
            let mut children;
            if jid.device == 0 {
                let skey = &acc.phone_skey;
                children = vec![
                    b("registration", acc.phone_reg_id.to_be_bytes().to_vec()),
                    b("type", vec![5]),
                    b(
                        "identity",
                        acc.account_key.public_key.public_key_bytes().to_vec(),
                    ),
                    NodeBuilder::new("skey")
                        .children([
                            b("id", vec![0, 0, 1]),
                            b("value", skey.public_key.public_key_bytes().to_vec()),
                            b("signature", acc.phone_skey_sig.clone()),
                        ])
                        .build(),
                ];
            } else {
                let Some(d) = acc.devices.get_mut(&u32::from(jid.device)) else {
                    continue;
                };
                if d.keys.identity.is_empty() {
                    continue;
                }
                children = vec![
                    b("registration", d.keys.registration_id.clone()),
                    b("type", vec![5]),
                    b("identity", d.keys.identity.clone()),
                    NodeBuilder::new("skey")
                        .children([
                            b("id", d.keys.signed_prekey_id.clone()),
                            b("value", d.keys.signed_prekey.clone()),
                            b("signature", d.keys.signed_prekey_sig.clone()),
                        ])
                        .build(),
                ];
                if let Some((id, value)) = d.keys.prekeys.pop_front() {
                    children.push(
                        NodeBuilder::new("key")
                            .children([b("id", id), b("value", value)])
                            .build(),
                    );
                }
                if let Some(ident) = &d.device_identity {
                    children.push(b("device-identity", ident.clone()));
                }
            }
            users.push(
                NodeBuilder::new("user")
                    .attr("jid", jid_s)
                    .children(children)
                    .build(),
            );
        }
    }
    NodeBuilder::new("list").children(users).build()
}

/// Delivers `node` to a device: now if it is connected, else into its offline queue.
fn deliver(reg: &mut Registry, phone: &str, device: u32, node: Node) -> Option<(ConnHandle, Node)> {
    let d = reg.accounts.get_mut(phone)?.devices.get_mut(&device)?;
    if node.tag == "message" {
        d.delivered += 1;
    }
    match &d.conn {
        Some(c) => Some((c.clone(), node)),
        None => {
            d.offline.push_back(node);
            None
        }
    }
}

async fn send_all(out: Vec<(ConnHandle, Node)>) {
    for (c, n) in out {
        let _ = c.tx.send(Outbound::Node(n)).await;
    }
}

/// Routes a 1:1 message: ack to the sender, one stanza per addressed device.
pub(crate) async fn route_message(
    shared: &Shared,
    me: Option<&(String, u32)>,
    conn: &ConnHandle,
    node: Node,
) {
    let Some((my_phone, my_dev)) = me else { return };
    let id = attr(&node, "id").unwrap_or_default();
    let to = attr(&node, "to").unwrap_or_default();
    let typ = attr(&node, "type").unwrap_or_else(|| "text".into());
    let ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id.clone())
        .attr("from", to.clone())
        .attr("t", now().to_string())
        .build();
    let _ = conn.tx.send(Outbound::Node(ack)).await;

    let Ok(to_jid) = to.parse::<Jid>() else {
        return;
    };
    let device_identity = node.get_optional_child("device-identity").cloned();
    let mut out = Vec::new();
    {
        let mut reg = shared.registry.lock().expect("registry lock");
        let push_name = reg
            .accounts
            .get(my_phone)
            .map(|a| a.push_name.clone())
            .unwrap_or_default();
        let Some(recipient_phone) = reg.find_user(&to_jid.user).map(|a| a.phone.clone()) else {
            return;
        };
        let Some(participants) = node.get_optional_child("participants") else {
            return;
        };
        for t in participants.get_children_by_tag("to") {
            let Some(target) = attr(t, "jid").and_then(|j| j.parse::<Jid>().ok()) else {
                continue;
            };
            if target.device == 0 {
                continue; // the mock phone does not read messages
            }
            let Some(target_phone) = reg.find_user(&target.user).map(|a| a.phone.clone()) else {
                continue;
            };
            if target_phone == *my_phone && u32::from(target.device) == *my_dev {
                continue;
            }
            let mut children: Vec<Node> = t.children().map(|c| c.to_vec()).unwrap_or_default();
            if let Some(di) = &device_identity {
                children.push(di.clone());
            }
            let mut b = NodeBuilder::new("message")
                .attr("from", format!("{my_phone}:{my_dev}@s.whatsapp.net"))
                .attr("id", id.clone())
                .attr("type", typ.clone())
                .attr("t", now().to_string())
                .attr("notify", push_name.clone());
            if target_phone == *my_phone {
                // A copy for the sender's own other device.
                b = b.attr("recipient", format!("{recipient_phone}@s.whatsapp.net"));
            }
            let stanza = b.children(children).build();
            if let Some(x) = deliver(&mut reg, &target_phone, u32::from(target.device), stanza) {
                out.push(x);
            }
        }
    }
    send_all(out).await;
}

/// Forwards a receipt to the device it is addressed to.
pub(crate) async fn route_receipt(shared: &Shared, me: Option<&(String, u32)>, node: Node) {
    let Some((my_phone, my_dev)) = me else { return };
    let Some(to) = attr(&node, "to").and_then(|j| j.parse::<Jid>().ok()) else {
        return;
    };
    let mut b = NodeBuilder::new("receipt")
        .attr("from", format!("{my_phone}:{my_dev}@s.whatsapp.net"))
        .attr("id", attr(&node, "id").unwrap_or_default())
        .attr("t", now().to_string());
    if let Some(t) = attr(&node, "type") {
        b = b.attr("type", t);
    }
    let stanza = b.build();
    let out = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let Some(phone) = reg.find_user(&to.user).map(|a| a.phone.clone()) else {
            return;
        };
        if to.device == 0 {
            return;
        }
        deliver(&mut reg, &phone, u32::from(to.device), stanza)
    };
    send_all(out.into_iter().collect()).await;
}

/// Presence and chat state are accepted; the mock does not route them yet.
pub(crate) async fn route_presence(_shared: &Shared, _me: Option<&(String, u32)>, _node: Node) {}

/// `w:g2` queries: no groups yet, so "groups I'm in" is empty.
pub(crate) fn groups_iq(
    _shared: &Shared,
    _me: Option<&(String, u32)>,
    node: &Node,
    id: &str,
) -> Node {
    if node.get_optional_child("participating").is_some() {
        return iq_result(id, vec![NodeBuilder::new("groups").build()]);
    }
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "error")
        .attr("id", id.to_string())
        .children([NodeBuilder::new("error")
            .attr("code", "501")
            .attr("text", "not-implemented")
            .build()])
        .build()
}
