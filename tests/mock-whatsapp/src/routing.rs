//! Who is on the network and where stanzas go: usync (number check, device lists),
//! prekey bundles, 1:1 message fan-out with server acks and offline queues, receipts,
//! and the groups query.
//!
//! Addressing follows whatsapp-rust 0.7 (PROTOCOL.md §4): peers are addressed by phone
//! number; an account's own LID is accepted wherever a user is named (the client asks
//! for its own devices and its own phone's bundle by LID), and every requested JID is
//! echoed exactly as asked.

use crate::conn::{attr, iq_error, iq_result, now};
use crate::registry::{ConnHandle, Outbound, Registry};
use crate::Shared;
use std::collections::HashMap;
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};
use whatsapp_rust::waproto::whatsapp as wa;

pub(crate) fn text_of(n: &Node) -> String {
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

/// Answers a usync query: `<contact>` (is on WhatsApp), `<devices>`, `<status>` (the
/// "about" text, `wacore/src/iq/usync/query.rs` `parse_status`) and `<picture>` (the
/// current profile picture id, `required_u64(id)`).
pub(crate) fn usync(shared: &Shared, iq: &Node) -> Option<Node> {
    let usync = iq.get_optional_child("usync")?;
    let query = usync.get_optional_child("query")?;
    let wants_devices = query.get_optional_child("devices").is_some();
    let wants_contact = query.get_optional_child("contact").is_some();
    let wants_status = query.get_optional_child("status").is_some();
    let wants_picture = query.get_optional_child("picture").is_some();
    let wants_lid = query.get_optional_child("lid").is_some();
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
        // The account's LID for a user asked by phone number (`project_lid_mapping`).
        if let (true, Some(acc)) = (wants_lid, account) {
            if acc.phone == user {
                children.push(
                    NodeBuilder::new("lid")
                        .attr("val", format!("{}@lid", acc.lid))
                        .build(),
                );
            }
        }
        if let (true, Some(acc)) = (wants_status, account) {
            children.push(match &acc.about {
                Some((text, t)) => NodeBuilder::new("status")
                    .attr("t", t.to_string())
                    .string_content(text.clone())
                    .build(),
                None => NodeBuilder::new("status").build(),
            });
        }
        if let (true, Some(acc)) = (wants_picture, account) {
            let key = format!("{}@s.whatsapp.net", acc.phone);
            if let Some(p) = reg.pictures.get(&key) {
                children.push(
                    NodeBuilder::new("picture")
                        .attr("id", p.id.to_string())
                        .build(),
                );
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

/// A stanza to write to a live connection, then maybe close it.
pub(crate) struct Delivery {
    /// The device's live connection.
    pub conn: ConnHandle,
    /// The stanza to write.
    pub node: Node,
    /// The drop-before-ack fault fired: close the socket right after `node`.
    pub close_after: bool,
}

impl Delivery {
    /// Writes the stanza (and the close, if due).
    pub(crate) async fn send(self) {
        let _ = self.conn.tx.send(Outbound::Node(self.node)).await;
        if self.close_after {
            let _ = self.conn.tx.send(Outbound::Close).await;
        }
    }
}

/// Delivers `node` to a device: now if it is connected (a message stays unacked
/// until the device acks it), else into its offline queue.
pub(crate) fn deliver(
    reg: &mut Registry,
    phone: &str,
    device: u32,
    mut node: Node,
) -> Option<Delivery> {
    let d = reg.accounts.get_mut(phone)?.devices.get_mut(&device)?;
    if node.tag == "message" && std::mem::take(&mut d.corrupt_next) {
        corrupt(&mut node);
    }
    let Some(conn) = d.live() else {
        d.queue(node);
        return None;
    };
    let mut close_after = false;
    if node.tag == "message" {
        d.delivered += 1;
        d.track(node.clone());
        close_after = std::mem::take(&mut d.drop_before_ack);
    }
    Some(Delivery {
        conn,
        node,
        close_after,
    })
}

async fn send_deliveries(out: Vec<Delivery>) {
    for d in out {
        d.send().await;
    }
}

async fn send_all(out: Vec<(ConnHandle, Node)>) {
    for (c, n) in out {
        let _ = c.tx.send(Outbound::Node(n)).await;
    }
}

/// The other side a message stanza or an ack names, comparable across addressing:
/// `g:<id>` for a group, else the account's phone (a LID user is mapped to its
/// phone) or the bare user; the device suffix is ignored.
fn party(reg: &Registry, jid: &str) -> String {
    match jid.parse::<Jid>() {
        Ok(j) if j.server == "g.us" => format!("g:{}", j.user),
        Ok(j) => reg
            .find_user(&j.user)
            .map(|a| a.phone.clone())
            .unwrap_or_else(|| j.user.to_string()),
        Err(_) => jid.to_string(),
    }
}

/// A device acknowledged messages it received: `ids` sent by `to` (the other side of
/// the original stanza's `from`), in a group by `participant`. Matching entries leave
/// the device's unacked list, unless its acks are held. whatsapp-rust acks a 1:1 or
/// group message it decrypted with a `<receipt>` (type delivery, `peer_msg`, `sender`
/// or `inactive`; offline ones aggregated with a `<list>`) and the rest with an
/// `<ack class="message">`; both name the stanza's `from` in `to` and, in groups, its
/// `participant`.
pub(crate) fn apply_acks(
    reg: &mut Registry,
    me: &(String, u32),
    ids: &[String],
    to: &str,
    participant: Option<&str>,
) {
    let (phone, dev) = me;
    let held = reg.faults.acks_held(phone, *dev);
    let to = party(reg, to);
    let participant = participant.map(|p| party(reg, p));
    let Some(d) = reg.accounts.get(phone).and_then(|a| a.devices.get(dev)) else {
        return;
    };
    let matched: Vec<usize> = d
        .unacked
        .iter()
        .enumerate()
        .filter(|(_, u)| {
            ids.contains(&u.id)
                && party(reg, &u.from) == to
                && match (&u.participant, &participant) {
                    (Some(a), Some(b)) => party(reg, a) == *b,
                    _ => true,
                }
        })
        .map(|(i, _)| i)
        .collect();
    if matched.is_empty() {
        return;
    }
    let Some(d) = reg
        .accounts
        .get_mut(phone)
        .and_then(|a| a.devices.get_mut(dev))
    else {
        return;
    };
    if held {
        d.held_acks += matched.len() as u64;
        return;
    }
    d.acked += matched.len() as u64;
    let mut i = 0usize;
    d.unacked.retain(|_| {
        let keep = !matched.contains(&i);
        i += 1;
        keep
    });
}

/// `<ack class="message" id to [participant]>` from a device: clears the matching
/// unacked message. Other ack classes are ignored.
pub(crate) fn route_ack(shared: &Shared, me: Option<&(String, u32)>, node: &Node) {
    let Some(me) = me else { return };
    if attr(node, "class").as_deref() != Some("message") {
        return;
    }
    let (Some(id), Some(to)) = (attr(node, "id"), attr(node, "to")) else {
        return;
    };
    let participant = attr(node, "participant");
    let mut reg = shared.registry.lock().expect("registry lock");
    apply_acks(&mut reg, me, &[id], &to, participant.as_deref());
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
    if let Some(gid) = to.strip_suffix("@g.us") {
        let gid = gid.to_string();
        return route_group_message(shared, &(my_phone.clone(), *my_dev), conn, node, &gid).await;
    }
    if to.ends_with("@newsletter") {
        let (ack, out) = crate::newsletters::route(shared, &(my_phone.clone(), *my_dev), &node);
        let _ = conn.tx.send(Outbound::Node(ack)).await;
        return send_deliveries(out).await;
    }
    let typ = attr(&node, "type").unwrap_or_else(|| "text".into());
    let Ok(to_jid) = to.parse::<Jid>() else {
        return;
    };
    // One `<enc>` and no fan-out: a device writing to another device of its own account
    // (`category="peer"`), or a resend after a retry receipt, addressed to the one
    // device that asked (`to` names the device): routed as a fan-out to that device.
    let mut node = node;
    if node.get_optional_child("participants").is_none() && node.get_optional_child("enc").is_some()
    {
        if attr(&node, "category").as_deref() == Some("peer") {
            return route_peer_message(shared, (my_phone, *my_dev), conn, &node, &to_jid).await;
        }
        node = as_fan_out(node, &to);
    }
    // A recipient that requires privacy tokens refuses the message without one (463).
    // One that blocked the sender takes it (the sender sees it sent) and drops it.
    let (refused, blocked) = {
        let reg = shared.registry.lock().expect("registry lock");
        let r = reg.find_user(&to_jid.user);
        (
            r.is_some_and(|r| !crate::privacy::admits(&reg, my_phone, &r.phone, &node)),
            r.is_some_and(|r| crate::privacy::blocks(&reg, &r.phone, my_phone)),
        )
    };
    let mut ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id.clone())
        .attr("from", to.clone())
        .attr("t", now().to_string());
    if refused {
        ack = ack.attr("error", crate::privacy::MISSING_TOKEN);
    }
    let _ = conn.tx.send(Outbound::Node(ack.build())).await;
    if refused || blocked {
        return;
    }

    let device_identity = node.get_optional_child("device-identity").cloned();
    let mut out = Vec::new();
    {
        let mut reg = shared.registry.lock().expect("registry lock");
        let (push_name, my_lid) = reg
            .accounts
            .get(my_phone)
            .map(|a| (a.push_name.clone(), a.lid.clone()))
            .unwrap_or_default();
        let Some(recipient) = reg.find_user(&to_jid.user) else {
            return;
        };
        // Addressed by LID, the stanza comes from the sender's LID with its phone
        // number beside it (`sender_pn`); addressed by phone number, the other way
        // round (`sender_lid`). The copy for the sender's own devices names the
        // recipient the same way.
        let by_lid = to_jid.server == "lid";
        let recipient_jid = if by_lid {
            format!("{}@lid", recipient.lid)
        } else {
            format!("{}@s.whatsapp.net", recipient.phone)
        };
        let (from, alt_name, alt) = if by_lid {
            (
                format!("{my_lid}:{my_dev}@lid"),
                "sender_pn",
                format!("{my_phone}@s.whatsapp.net"),
            )
        } else {
            (
                format!("{my_phone}:{my_dev}@s.whatsapp.net"),
                "sender_lid",
                format!("{my_lid}@lid"),
            )
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
                .attr("from", from.clone())
                .attr("id", id.clone())
                .attr("type", typ.clone())
                .attr("t", now().to_string())
                .attr("notify", push_name.clone());
            if target_phone == *my_phone {
                // A copy for the sender's own other device.
                b = b.attr("recipient", recipient_jid.clone());
            } else {
                b = b.attr(alt_name, alt.clone());
            }
            let stanza = b.children(children).build();
            if let Some(x) = deliver(&mut reg, &target_phone, u32::from(target.device), stanza) {
                out.push(x);
            }
        }
    }
    send_deliveries(out).await;
}

/// A direct message (`<enc>` children) as a fan-out to the one device `to`.
fn as_fan_out(mut node: Node, to: &str) -> Node {
    let children = match node.content.take() {
        Some(NodeContent::Nodes(c)) => c,
        _ => Vec::new(),
    };
    let (encs, mut rest): (Vec<Node>, Vec<Node>) =
        children.into_iter().partition(|c| c.tag == "enc");
    rest.push(
        NodeBuilder::new("participants")
            .children([NodeBuilder::new("to")
                .attr("jid", to)
                .children(encs)
                .build()])
            .build(),
    );
    node.content = Some(NodeContent::Nodes(rest));
    node
}

/// A peer message (`category="peer"`): one device of an account to another, e.g. an
/// app-state key request to the phone. Acked; one for the phone (device 0) is read by
/// the phone (`phone::peer_message`), one for a companion delivered to it from the
/// sender's device. Addressed outside the sender's own account, it goes nowhere.
async fn route_peer_message(
    shared: &Shared,
    (my_phone, my_dev): (&String, u32),
    conn: &ConnHandle,
    node: &Node,
    to: &Jid,
) {
    let id = attr(node, "id").unwrap_or_default();
    let ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id.clone())
        .attr("from", to.to_string())
        .attr("t", now().to_string())
        .build();
    let _ = conn.tx.send(Outbound::Node(ack)).await;
    let target = u32::from(to.device);
    let out = {
        let mut reg = shared.registry.lock().expect("registry lock");
        if reg.find_user(&to.user).map(|a| a.phone.as_str()) != Some(my_phone.as_str())
            || target == my_dev
        {
            return;
        }
        if target != 0 {
            let mut children: Vec<Node> = node.children().map(|c| c.to_vec()).unwrap_or_default();
            children.retain(|c| c.tag == "enc" || c.tag == "device-identity");
            let stanza = NodeBuilder::new("message")
                .attr("from", format!("{my_phone}:{my_dev}@s.whatsapp.net"))
                .attr("id", id)
                .attr("type", attr(node, "type").unwrap_or_else(|| "text".into()))
                .attr("category", "peer")
                .attr("t", now().to_string())
                .children(children)
                .build();
            deliver(&mut reg, my_phone, target, stanza)
        } else {
            None
        }
    };
    if let Some(d) = out {
        return d.send().await;
    }
    if target != 0 {
        return;
    }
    let Some(enc) = node.get_optional_child("enc") else {
        return;
    };
    let body = match &enc.content {
        Some(NodeContent::Bytes(b)) => b.clone(),
        _ => return,
    };
    let enc_type = attr(enc, "type").unwrap_or_default();
    let (shared, phone) = (shared.clone(), my_phone.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::phone::peer_message(shared, phone, my_dev, enc_type, body).await {
            tracing::warn!("the phone could not read a peer message: {e}");
        }
    });
}

/// Damages every `<enc>` payload of a message where its receiver checks it: the last
/// byte of the Signal message's MAC (inside a `pkmsg`, the inner message's), so the
/// envelope still parses and the decryption fails as with a broken session.
fn corrupt(node: &mut Node) {
    use whatsapp_rust::wacore::libsignal::protocol::PreKeySignalMessage;
    let Some(NodeContent::Nodes(children)) = &mut node.content else {
        return;
    };
    for c in children.iter_mut().filter(|c| c.tag == "enc") {
        let pkmsg = attr(c, "type").as_deref() == Some("pkmsg");
        let Some(NodeContent::Bytes(b)) = &mut c.content else {
            continue;
        };
        let mut end = b.len();
        if pkmsg {
            let Ok(outer) = PreKeySignalMessage::try_from(b.as_slice()) else {
                continue;
            };
            let inner = outer.message().serialized();
            match b.windows(inner.len()).position(|w| w == inner) {
                Some(at) => end = at + inner.len(),
                None => continue,
            }
        }
        if let Some(byte) = end.checked_sub(1).and_then(|i| b.get_mut(i)) {
            *byte ^= 0xff;
        }
    }
}

/// Forwards a receipt to the device it is addressed to: a retry receipt with its
/// `<retry>`, `<registration>` and `<keys>`, so that the sender can re-encrypt.
pub(crate) async fn route_receipt(shared: &Shared, me: Option<&(String, u32)>, node: Node) {
    let Some((my_phone, my_dev)) = me else { return };
    let Some(to_s) = attr(&node, "to") else {
        return;
    };
    let typ = attr(&node, "type");
    // Any receipt but a retry request says the device has the message(s).
    if matches!(typ.as_deref(), Some("retry" | "enc_rekey_retry")) {
        let mut reg = shared.registry.lock().expect("registry lock");
        if let Some(d) = reg
            .accounts
            .get_mut(my_phone)
            .and_then(|a| a.devices.get_mut(my_dev))
        {
            d.retry_receipts += 1;
        }
    } else {
        let mut ids: Vec<String> = attr(&node, "id").into_iter().collect();
        if let Some(list) = node.get_optional_child("list") {
            ids.extend(
                list.get_children_by_tag("item")
                    .filter_map(|i| attr(i, "id")),
            );
        }
        let participant = attr(&node, "participant");
        let mut reg = shared.registry.lock().expect("registry lock");
        apply_acks(
            &mut reg,
            &(my_phone.clone(), *my_dev),
            &ids,
            &to_s,
            participant.as_deref(),
        );
    }
    let Ok(mut to) = to_s.parse::<Jid>() else {
        return;
    };
    // A receipt for a LID-addressed message (or in a LID-addressed group) comes from
    // the reader's LID.
    let my_lid = {
        let reg = shared.registry.lock().expect("registry lock");
        let lid_group = to.server == "g.us"
            && reg
                .groups
                .get(to.user.as_str())
                .is_some_and(|g| g.lid_addressed);
        (to.server == "lid" || lid_group)
            .then(|| reg.accounts.get(my_phone).map(|a| a.lid.clone()))
            .flatten()
    };
    let me_jid = if let Some(lid) = my_lid {
        format!("{lid}:{my_dev}@lid")
    } else {
        format!("{my_phone}:{my_dev}@s.whatsapp.net")
    };
    let mut b = NodeBuilder::new("receipt")
        .attr("id", attr(&node, "id").unwrap_or_default())
        .attr("t", now().to_string());
    if to.server == "g.us" {
        // A receipt for a group message names the group and, as participant, the
        // message's sender: it goes to the sender, from the group, with the
        // receipt's author as participant.
        let Some(sender) = attr(&node, "participant").and_then(|p| p.parse::<Jid>().ok()) else {
            return;
        };
        b = b.attr("from", to_s.clone()).attr("participant", me_jid);
        to = sender;
    } else {
        b = b.attr("from", me_jid);
    }
    if let Some(t) = typ {
        b = b.attr("type", t);
    }
    if let Some(children) = node.children() {
        b = b.children(children.to_vec());
    }
    let stanza = b.build();
    let out: Vec<Delivery> = {
        let mut reg = shared.registry.lock().expect("registry lock");
        let Some(phone) = reg.find_user(&to.user).map(|a| a.phone.clone()) else {
            return;
        };
        // Addressed to a device: that device. Addressed to the user (read receipts
        // name the chat): every companion device of the account but the sender.
        let targets: Vec<u32> = if to.device != 0 {
            vec![u32::from(to.device)]
        } else {
            reg.accounts
                .get(&phone)
                .map(|a| {
                    a.devices
                        .keys()
                        .copied()
                        .filter(|d| *d != 0 && !(phone == *my_phone && *d == *my_dev))
                        .collect()
                })
                .unwrap_or_default()
        };
        targets
            .into_iter()
            .filter_map(|d| deliver(&mut reg, &phone, d, stanza.clone()))
            .collect()
    };
    for d in out {
        d.send().await;
    }
}

/// Presence and chat state are recorded per account (not routed to subscribers yet).
/// The live connections of an account's devices (presence is never queued).
fn live_conns(reg: &Registry, phone: &str, except: Option<u32>) -> Vec<ConnHandle> {
    reg.accounts
        .get(phone)
        .map(|a| {
            a.devices
                .values()
                .filter(|d| Some(d.id) != except)
                .filter_map(|d| d.conn.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn presence_node(phone: &str, available: bool, last: u64) -> Node {
    let mut b = NodeBuilder::new("presence").attr("from", format!("{phone}@s.whatsapp.net"));
    if !available {
        b = b.attr("type", "unavailable").attr("last", last.to_string());
    }
    b.build()
}

/// Presence and chat state: subscriptions, availability fanned out to subscribers,
/// typing/recording forwarded to the chat's other side. Only live devices get them.
pub(crate) async fn route_presence(shared: &Shared, me: Option<&(String, u32)>, node: Node) {
    let Some((phone, dev)) = me else { return };
    let mut out = Vec::new();
    {
        let mut reg = shared.registry.lock().expect("registry lock");
        let target = attr(&node, "to").and_then(|t| {
            if t.ends_with("@g.us") {
                return Some(t);
            }
            let j = t.parse::<Jid>().ok()?;
            reg.find_user(&j.user).map(|a| a.phone.clone())
        });
        // `<presence name="...">` (whatsapp-rust `set_push_name`) renames the account:
        // later messages carry the new name as `notify`.
        if let Some(name) = attr(&node, "name").filter(|n| node.tag == "presence" && !n.is_empty())
        {
            if let Some(acc) = reg.accounts.get_mut(phone.as_str()) {
                acc.push_name = name;
            }
        }
        let what = match node.tag.as_ref() {
            "presence" => attr(&node, "type").unwrap_or_else(|| "available".into()),
            other => other.to_string(),
        };
        let seen = reg.presence_seen.entry(phone.clone()).or_default();
        if seen.len() < 1000 {
            seen.push(what.clone());
        }
        match (node.tag.as_ref(), what.as_str(), target) {
            // An account that requires privacy tokens shows its presence only to
            // subscribers presenting the token it granted them.
            ("presence", "subscribe", Some(t))
                if !crate::privacy::shows(&reg, phone, &t, Some(&node)) => {}
            ("presence", "subscribe", Some(t)) => {
                reg.presence_subs
                    .entry(t.clone())
                    .or_default()
                    .insert((phone.clone(), *dev));
                // The subscriber learns the current state at once.
                if let (Some(&(available, last)), Some(c)) = (
                    reg.presence_state.get(&t),
                    reg.accounts
                        .get(phone)
                        .and_then(|a| a.devices.get(dev))
                        .and_then(|d| d.conn.clone()),
                ) {
                    out.push((c, presence_node(&t, available, last)));
                }
            }
            ("presence", "unsubscribe", Some(t)) => {
                if let Some(subs) = reg.presence_subs.get_mut(&t) {
                    subs.remove(&(phone.clone(), *dev));
                }
            }
            ("presence", "available" | "unavailable", _) => {
                let available = what == "available";
                let at = now();
                reg.presence_state.insert(phone.clone(), (available, at));
                let subs: Vec<(String, u32)> = reg
                    .presence_subs
                    .get(phone)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for (p, d) in subs {
                    if let Some(c) = reg
                        .accounts
                        .get(&p)
                        .and_then(|a| a.devices.get(&d))
                        .and_then(|x| x.conn.clone())
                    {
                        out.push((c, presence_node(phone, available, at)));
                    }
                }
            }
            ("chatstate", _, Some(t)) => {
                let children: Vec<Node> = node.children().map(|c| c.to_vec()).unwrap_or_default();
                if let Some(gid) = t.strip_suffix("@g.us") {
                    let members = reg
                        .groups
                        .get(gid)
                        .filter(|g| g.participants.contains(phone))
                        .map(|g| g.participants.clone())
                        .unwrap_or_default();
                    for m in members.iter().filter(|m| *m != phone) {
                        for c in live_conns(&reg, m, None) {
                            let n = NodeBuilder::new("chatstate")
                                .attr("from", t.clone())
                                .attr("participant", format!("{phone}@s.whatsapp.net"))
                                .children(children.clone())
                                .build();
                            out.push((c, n));
                        }
                    }
                } else if t != *phone {
                    for c in live_conns(&reg, &t, None) {
                        let n = NodeBuilder::new("chatstate")
                            .attr("from", format!("{phone}@s.whatsapp.net"))
                            .children(children.clone())
                            .build();
                        out.push((c, n));
                    }
                }
            }
            _ => {}
        }
    }
    send_all(out).await;
}

/// A group as `w:g2` answers describe it (phone-number addressing).
pub(crate) fn group_node(reg: &Registry, g: &crate::registry::Group) -> Node {
    let participants = g.participants.iter().map(|p| {
        let mut b = NodeBuilder::new("participant");
        // A LID-addressed group names members by LID, their number beside.
        match reg.accounts.get(p).filter(|_| g.lid_addressed) {
            Some(a) => {
                b = b
                    .attr("jid", format!("{}@lid", a.lid))
                    .attr("phone_number", format!("{p}@s.whatsapp.net"));
            }
            None => b = b.attr("jid", format!("{p}@s.whatsapp.net")),
        }
        if *p == g.creator {
            b = b.attr("type", "superadmin");
        } else if g.admins.contains(p) {
            b = b.attr("type", "admin");
        }
        b.build()
    });
    let mut children: Vec<Node> = participants.collect();
    if g.locked {
        children.push(NodeBuilder::new("locked").build());
    }
    if g.announce {
        children.push(NodeBuilder::new("announcement").build());
    }
    if let Some(c) = &g.community {
        let mut parent = NodeBuilder::new("parent");
        if c.closed {
            parent = parent.attr("default_membership_approval_mode", "request_required");
        }
        children.push(parent.build());
        if c.member_subgroups {
            children.push(NodeBuilder::new("allow_non_admin_sub_group_creation").build());
        }
    }
    if let Some(p) = &g.linked_parent {
        children.push(
            NodeBuilder::new("linked_parent")
                .attr("jid", format!("{p}@g.us"))
                .build(),
        );
    }
    if g.default_sub {
        children.push(NodeBuilder::new("default_sub_group").build());
    }
    if g.general_chat {
        children.push(NodeBuilder::new("general_chat").build());
    }
    if let Some((id, body)) = &g.description {
        children.push(
            NodeBuilder::new("description")
                .attr("id", id.clone())
                .children([NodeBuilder::new("body")
                    .string_content(body.clone())
                    .build()])
                .build(),
        );
    }
    NodeBuilder::new("group")
        .attr("id", g.id.clone())
        .attr("subject", g.subject.clone())
        .attr("s_t", g.created.to_string())
        .attr("s_o", format!("{}@s.whatsapp.net", g.creator))
        .attr("creation", g.created.to_string())
        .attr("creator", format!("{}@s.whatsapp.net", g.creator))
        .attr(
            "addressing_mode",
            if g.lid_addressed { "lid" } else { "pn" },
        )
        .children(children)
        .build()
}

/// `w:g2` queries: "groups I'm in" and one group's metadata (members only).
pub(crate) fn groups_iq(
    shared: &Shared,
    me: Option<&(String, u32)>,
    node: &Node,
    id: &str,
) -> Node {
    let Some((my_phone, _)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    if let Some(pictures) = node.get_optional_child("pictures") {
        return iq_result(id, vec![crate::profile::group_pictures(shared, pictures)]);
    }
    let reg = shared.registry.lock().expect("registry lock");
    if node.get_optional_child("participating").is_some() {
        let mut mine: Vec<&crate::registry::Group> = reg
            .groups
            .values()
            .filter(|g| g.participants.contains(my_phone))
            .collect();
        mine.sort_by(|a, b| a.id.cmp(&b.id));
        let groups = NodeBuilder::new("groups")
            .children(mine.into_iter().map(|g| group_node(&reg, g)))
            .build();
        return iq_result(id, vec![groups]);
    }
    if node.get_optional_child("query").is_some() {
        let to = attr(node, "to").unwrap_or_default();
        let gid = to.strip_suffix("@g.us").unwrap_or_default();
        return match reg.groups.get(gid) {
            Some(g) if g.participants.contains(my_phone) => {
                iq_result(id, vec![group_node(&reg, g)])
            }
            Some(_) => iq_error(id, "403", "forbidden"),
            None => iq_error(id, "404", "item-not-found"),
        };
    }
    iq_error(id, "501", "not-implemented")
}

/// Routes a group message: ack to the sender, then to every device of every member
/// (the sender's own other devices included) the group-wide `skmsg` plus, when the
/// sender addressed that device, its own `pkmsg`/`msg` (the sender-key distribution).
pub(crate) async fn route_group_message(
    shared: &Shared,
    me: &(String, u32),
    conn: &ConnHandle,
    node: Node,
    gid: &str,
) {
    let (my_phone, my_dev) = me;
    let id = attr(&node, "id").unwrap_or_default();
    let typ = attr(&node, "type").unwrap_or_else(|| "text".into());
    let group_jid = format!("{gid}@g.us");
    // In announcement mode only admins may send: anyone else's message is nacked
    // (403) and goes nowhere.
    let refused = {
        let reg = shared.registry.lock().expect("registry lock");
        reg.groups
            .get(gid)
            .is_some_and(|g| g.announce && !g.admins.contains(my_phone) && g.creator != *my_phone)
    };
    let mut ack = NodeBuilder::new("ack")
        .attr("class", "message")
        .attr("id", id.clone())
        .attr("from", group_jid.clone())
        .attr("t", now().to_string());
    if refused {
        ack = ack.attr("error", "403");
    }
    let _ = conn.tx.send(Outbound::Node(ack.build())).await;
    if refused {
        return;
    }
    // A resend after a retry receipt names the one member device that asked
    // (`participant`) and carries its pairwise `<enc>`: only that device gets it.
    let only = attr(&node, "participant").and_then(|p| p.parse::<Jid>().ok());
    let device_identity = node.get_optional_child("device-identity").cloned();
    let skmsg: Vec<Node> = node
        .get_children_by_tag("enc")
        .into_iter()
        .cloned()
        .collect();
    // Per-device encs, keyed by (phone, device).
    let mut direct: HashMap<(String, u32), Vec<Node>> = HashMap::new();
    let mut out = Vec::new();
    {
        let mut reg = shared.registry.lock().expect("registry lock");
        let Some(group) = reg.groups.get(gid).cloned() else {
            return;
        };
        if !group.participants.contains(my_phone) {
            return;
        }
        let only = only.and_then(|j| {
            reg.find_user(&j.user)
                .map(|a| (a.phone.clone(), u32::from(j.device)))
        });
        if let Some(participants) = node.get_optional_child("participants") {
            for t in participants.get_children_by_tag("to") {
                let Some(target) = attr(t, "jid").and_then(|j| j.parse::<Jid>().ok()) else {
                    continue;
                };
                let Some(phone) = reg.find_user(&target.user).map(|a| a.phone.clone()) else {
                    continue;
                };
                let encs = t.children().map(|c| c.to_vec()).unwrap_or_default();
                direct.insert((phone, u32::from(target.device)), encs);
            }
        }
        let (push_name, my_lid) = reg
            .accounts
            .get(my_phone)
            .map(|a| (a.push_name.clone(), a.lid.clone()))
            .unwrap_or_default();
        // The sender as the group's addressing names it, the other form beside.
        let (participant, alt_name, alt, mode) = if group.lid_addressed {
            (
                format!("{my_lid}:{my_dev}@lid"),
                "participant_pn",
                format!("{my_phone}@s.whatsapp.net"),
                "lid",
            )
        } else {
            (
                format!("{my_phone}:{my_dev}@s.whatsapp.net"),
                "participant_lid",
                format!("{my_lid}@lid"),
                "pn",
            )
        };
        for phone in &group.participants {
            let devices: Vec<u32> = reg
                .accounts
                .get(phone)
                .map(|a| a.devices.keys().copied().collect())
                .unwrap_or_default();
            for dev in devices {
                if phone == my_phone && dev == *my_dev
                    || only.as_ref().is_some_and(|o| o.0 != *phone || o.1 != dev)
                {
                    continue;
                }
                let mut children = direct.remove(&(phone.clone(), dev)).unwrap_or_default();
                children.extend(skmsg.iter().cloned());
                let has_pkmsg = children
                    .iter()
                    .any(|c| attr(c, "type").as_deref() == Some("pkmsg"));
                if has_pkmsg {
                    if let Some(di) = &device_identity {
                        children.push(di.clone());
                    }
                }
                let stanza = NodeBuilder::new("message")
                    .attr("from", group_jid.clone())
                    .attr("participant", participant.clone())
                    .attr(alt_name, alt.clone())
                    .attr("id", id.clone())
                    .attr("type", typ.clone())
                    .attr("t", now().to_string())
                    .attr("notify", push_name.clone())
                    .attr("addressing_mode", mode)
                    .children(children)
                    .build();
                if let Some(x) = deliver(&mut reg, phone, dev, stanza) {
                    out.push(x);
                }
            }
        }
    }
    send_deliveries(out).await;
}

/// Creates a group; every member must be a registered account.
pub(crate) fn create_group(
    shared: &Shared,
    subject: &str,
    creator: &str,
    members: &[String],
) -> Result<String, String> {
    let mut reg = shared.registry.lock().expect("registry lock");
    let mut participants = vec![creator.to_string()];
    for m in members {
        if !participants.contains(m) {
            participants.push(m.clone());
        }
    }
    if let Some(p) = participants.iter().find(|p| !reg.accounts.contains_key(*p)) {
        return Err(format!("{p} is not on the network"));
    }
    let id = reg.next_group_id();
    reg.groups.insert(
        id.clone(),
        crate::registry::Group {
            id: id.clone(),
            subject: subject.to_string(),
            creator: creator.to_string(),
            created: now(),
            admins: [creator.to_string()].into(),
            ..crate::registry::Group::new(participants)
        },
    );
    Ok(format!("{id}@g.us"))
}
