//! Newsletters (channels). Their metadata lives behind MEX (`crate::mex`): create, fetch by JID or invite code, list the
//! subscribed ones, join, leave, update name/description, mute settings. Their messages
//! are plaintext (no Signal): the owner's `<message to="…@newsletter"><plaintext>` is
//! numbered with a server id, acked, stored and pushed to every follower's devices;
//! reactions (`type="reaction"` with the target's `server_id`) are counted and announced
//! to devices that subscribed to live updates (`<notification type="newsletter">
//! <live_updates>`); admin edits and revokes (`edit="3"` / `edit="8"`, keyed by the
//! message id) replace the stored body and reach the followers; history is read with an
//! iq (`xmlns="newsletter"` `<messages count before>`).
//!
//! Client side (whatsapp-rust 0.7): `whatsapp-rust/src/features/newsletter.rs`
//! (`parse_newsletter_metadata`, `parse_newsletter_messages_response`,
//! `subscribe_live_updates`), `wacore/src/iq/mex.rs` (`MexQuerySpec::parse_response`),
//! the operation ids in `wacore/src/iq/mex_operations.rs`, the plaintext send in
//! `whatsapp-rust/src/send/mod.rs` (`to.is_newsletter()` branch,
//! `build_newsletter_edit_node`), receive in `message/special.rs`
//! (`handle_newsletter_message`), the transport ack in `client/node_io.rs`
//! (`should_ack`), live updates in `handlers/notification/groups.rs`
//! (`handle_newsletter_notification`).

use crate::conn::{attr, iq_error, iq_result, now};
use crate::mex::MexResult;
use crate::registry::Registry;
use crate::routing::{deliver, Delivery};
use crate::Shared;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Node, NodeContent};

/// How long a live-updates subscription lasts (seconds), as the answer states it.
const LIVE_SECS: u64 = 300;
/// The first server id of a channel's messages (clients ignore ids below 99).
const FIRST_SERVER_ID: u64 = 100;

/// A channel.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The user part of `<id>@newsletter`.
    pub id: String,
    pub name: String,
    pub name_time: u64,
    pub description: String,
    pub description_time: u64,
    pub created: u64,
    pub invite: String,
    /// Phone of the owner.
    pub owner: String,
    /// Phones of the followers (the owner is not one).
    pub followers: BTreeSet<String>,
    /// (phone, setting type such as `MUTE_FOLLOWER_ACTIVITY`) → "ON" / "OFF".
    pub settings: BTreeMap<(String, String), String>,
    /// Devices subscribed to live updates: (phone, device) → until (unix seconds).
    pub live: BTreeMap<(String, u32), u64>,
    pub messages: Vec<Post>,
    pub next_server_id: u64,
}

/// A message of a channel.
#[derive(Debug, Clone)]
pub struct Post {
    pub server_id: u64,
    /// The stanza id the owner gave it (edits and revokes name it).
    pub id: String,
    pub t: u64,
    /// The stanza type (`text`, `media`, ...).
    pub kind: String,
    pub mediatype: Option<String>,
    /// The encoded `Message`; empty once revoked.
    pub body: Vec<u8>,
    /// Reactions by phone: the emoji each follower gave.
    pub reactions: BTreeMap<String, String>,
}

impl Channel {
    fn jid(&self) -> String {
        format!("{}@newsletter", self.id)
    }

    fn role_of(&self, phone: &str) -> &'static str {
        if self.owner == phone {
            "owner"
        } else if self.followers.contains(phone) {
            "subscriber"
        } else {
            "guest"
        }
    }

    /// The metadata object the client parses, as `phone` sees it.
    fn metadata(&self, phone: &str) -> Value {
        json!({
            "id": self.jid(),
            "state": {"type": "active"},
            "thread_metadata": {
                "creation_time": self.created.to_string(),
                "name": {"id": self.name_time.to_string(), "text": self.name,
                         "update_time": self.name_time.to_string()},
                "description": {"id": self.description_time.to_string(),
                                "text": self.description,
                                "update_time": self.description_time.to_string()},
                "invite": self.invite,
                "subscribers_count": self.followers.len().to_string(),
                "verification": "unverified",
                "picture": null,
                "preview": null,
            },
            "viewer_metadata": {
                "role": self.role_of(phone),
                "mute": self.settings
                    .get(&(phone.to_string(), "MUTE_FOLLOWER_ACTIVITY".to_string()))
                    .map(|v| if v == "ON" { "on" } else { "off" })
                    .unwrap_or("off"),
            },
        })
    }

    /// Every device of the owner and the followers, except `except`.
    fn audience(&self, reg: &Registry, except: Option<(&str, u32)>) -> Vec<(String, u32)> {
        std::iter::once(&self.owner)
            .chain(self.followers.iter())
            .filter_map(|p| reg.accounts.get(p))
            .flat_map(|a| a.devices.keys().map(move |d| (a.phone.clone(), *d)))
            .filter(|(p, d)| except != Some((p.as_str(), *d)))
            .collect()
    }
}

/// The user part of a newsletter JID.
fn channel_id(jid: &str) -> Option<&str> {
    jid.strip_suffix("@newsletter")
}

/// The channels `phone` owns or follows, as metadata.
pub(crate) fn subscribed(reg: &Registry, phone: &str) -> Vec<Value> {
    let mut list: Vec<&Channel> = reg
        .newsletters
        .values()
        .filter(|c| c.owner == phone || c.followers.contains(phone))
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list.iter().map(|c| c.metadata(phone)).collect()
}

pub(crate) fn create(reg: &mut Registry, phone: &str, vars: &Value) -> MexResult {
    let input = &vars["input"];
    let name = input["name"].as_str().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err((400, "a channel needs a name".into()));
    }
    let id = reg.next_group_id();
    let t = now();
    let channel = Channel {
        invite: format!("{:x}", rand::random::<u64>()),
        id: id.clone(),
        name,
        name_time: t,
        description: input["description"].as_str().unwrap_or("").to_string(),
        description_time: t,
        created: t,
        owner: phone.to_string(),
        followers: BTreeSet::new(),
        settings: BTreeMap::new(),
        live: BTreeMap::new(),
        messages: Vec::new(),
        next_server_id: FIRST_SERVER_ID,
    };
    let meta = channel.metadata(phone);
    reg.newsletters.insert(id, channel);
    Ok(json!({ "xwa2_newsletter_create": meta }))
}

/// The channel named by `input.key` (a JID when `input.type` is `JID`, an invite code
/// when `INVITE`), or null.
pub(crate) fn fetch(reg: &Registry, phone: &str, vars: &Value) -> Value {
    let key = vars["input"]["key"].as_str().unwrap_or("");
    let found = match vars["input"]["type"].as_str() {
        Some("INVITE") => reg.newsletters.values().find(|c| c.invite == key),
        _ => channel_id(key).and_then(|id| reg.newsletters.get(id)),
    };
    found.map(|c| c.metadata(phone)).unwrap_or(Value::Null)
}

pub(crate) fn follow(reg: &mut Registry, phone: &str, vars: &Value, join: bool) -> MexResult {
    let jid = vars["newsletter_id"].as_str().unwrap_or("");
    let Some(c) = channel_id(jid).and_then(|id| reg.newsletters.get_mut(id)) else {
        return Err((404, format!("no channel {jid}")));
    };
    if join {
        if c.owner != phone {
            c.followers.insert(phone.to_string());
        }
        Ok(json!({ "xwa2_newsletter_join_v2": c.metadata(phone) }))
    } else {
        if c.owner == phone {
            return Err((403, "the owner cannot leave the channel".into()));
        }
        c.followers.remove(phone);
        c.live.retain(|(p, _), _| p != phone);
        Ok(json!({ "xwa2_newsletter_leave_v2": {"id": c.jid()} }))
    }
}

pub(crate) fn update(reg: &mut Registry, phone: &str, vars: &Value) -> MexResult {
    let jid = vars["newsletter_id"].as_str().unwrap_or("");
    let Some(c) = channel_id(jid).and_then(|id| reg.newsletters.get_mut(id)) else {
        return Err((404, format!("no channel {jid}")));
    };
    if c.owner != phone {
        return Err((403, "only the owner can change the channel".into()));
    }
    let updates = &vars["updates"];
    let t = now();
    if let Some(name) = updates["name"].as_str() {
        if name.trim().is_empty() {
            return Err((400, "a channel needs a name".into()));
        }
        c.name = name.to_string();
        c.name_time = t;
    }
    if let Some(d) = updates["description"].as_str() {
        c.description = d.to_string();
        c.description_time = t;
    }
    Ok(json!({ "xwa2_newsletter_update": c.metadata(phone) }))
}

pub(crate) fn setting(reg: &mut Registry, phone: &str, vars: &Value) -> MexResult {
    let input = &vars["input"];
    let jid = input["newsletter_id"].as_str().unwrap_or("");
    let (Some(kind), Some(value)) = (input["type"].as_str(), input["value"].as_str()) else {
        return Err((400, "a setting needs a type and a value".into()));
    };
    if value != "ON" && value != "OFF" {
        return Err((400, format!("unknown setting value {value}")));
    }
    let Some(c) = channel_id(jid).and_then(|id| reg.newsletters.get_mut(id)) else {
        return Err((404, format!("no channel {jid}")));
    };
    if c.role_of(phone) == "guest" {
        return Err((403, "not a follower of the channel".into()));
    }
    c.settings
        .insert((phone.to_string(), kind.to_string()), value.to_string());
    Ok(
        json!({ "xwa2_newsletter_update_user_setting": {"id": c.jid(), "type": kind, "value": value} }),
    )
}

/// The `<message>` a follower's device gets for a post (history or push).
fn post_node(c: &Channel, p: &Post, viewer: Option<&str>, edit: Option<&str>) -> Node {
    let mut plaintext = NodeBuilder::new("plaintext");
    if let Some(mt) = &p.mediatype {
        plaintext = plaintext.attr("mediatype", mt.clone());
    }
    let mut children = vec![plaintext.bytes(p.body.clone()).build()];
    let counts = reaction_counts(p);
    if !counts.is_empty() {
        children.push(reactions_node(&counts));
    }
    let mut b = NodeBuilder::new("message")
        .attr("from", c.jid())
        .attr("id", p.id.clone())
        .attr("server_id", p.server_id.to_string())
        .attr("t", p.t.to_string())
        .attr("type", p.kind.clone());
    if let Some(e) = edit {
        b = b.attr("edit", e.to_string());
    }
    if viewer.is_some_and(|v| v == c.owner) {
        b = b.attr("is_sender", "true");
    }
    b.children(children).build()
}

fn reaction_counts(p: &Post) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for code in p.reactions.values() {
        *counts.entry(code.clone()).or_insert(0u64) += 1;
    }
    counts
}

fn reactions_node(counts: &BTreeMap<String, u64>) -> Node {
    NodeBuilder::new("reactions")
        .children(counts.iter().map(|(code, n)| {
            NodeBuilder::new("reaction")
                .attr("code", code.clone())
                .attr("count", n.to_string())
                .build()
        }))
        .build()
}

/// Answers a `newsletter` iq: `<messages count before>` (history, get) or
/// `<live_updates/>` (subscribe, set).
pub(crate) fn iq(shared: &Shared, me: Option<&(String, u32)>, node: &Node, id: &str) -> Node {
    let Some((phone, dev)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    let to = attr(node, "to").unwrap_or_default();
    let mut reg = shared.registry.lock().expect("registry lock");
    let Some(c) = channel_id(&to).and_then(|id| reg.newsletters.get_mut(id)) else {
        return iq_error(id, "404", "item-not-found");
    };
    if node.get_optional_child("live_updates").is_some() {
        c.live.insert((phone.clone(), *dev), now() + LIVE_SECS);
        return iq_result(
            id,
            vec![NodeBuilder::new("live_updates")
                .attr("duration", LIVE_SECS.to_string())
                .build()],
        );
    }
    let Some(m) = node.get_optional_child("messages") else {
        return iq_error(id, "400", "bad-request");
    };
    let count = attr(m, "count")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(50)
        .min(500);
    let before = attr(m, "before").and_then(|n| n.parse::<u64>().ok());
    let older: Vec<&Post> = c
        .messages
        .iter()
        .filter(|p| before.is_none_or(|b| p.server_id < b))
        .collect();
    let page = &older[older.len().saturating_sub(count)..];
    let list = NodeBuilder::new("messages")
        .attr("jid", c.jid())
        .attr("t", now().to_string())
        .children(page.iter().map(|p| post_node(c, p, Some(phone), None)))
        .build();
    iq_result(id, vec![list])
}

/// Routes a message stanza the device `me` sent to a channel: a post or an edit by the
/// owner, or a reaction by anyone who sees the channel. Returns the ack for the sender
/// and the stanzas for other devices.
pub(crate) fn route(shared: &Shared, me: &(String, u32), node: &Node) -> (Node, Vec<Delivery>) {
    let (phone, dev) = me;
    let id = attr(node, "id").unwrap_or_default();
    let to = attr(node, "to").unwrap_or_default();
    let t = now();
    let ack = |server_id: Option<u64>, error: Option<&str>| {
        let mut b = NodeBuilder::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("from", to.clone())
            .attr("t", t.to_string());
        if let Some(s) = server_id {
            b = b.attr("server_id", s.to_string());
        }
        if let Some(e) = error {
            b = b.attr("error", e.to_string());
        }
        b.build()
    };
    let mut reg = shared.registry.lock().expect("registry lock");
    let reg = &mut *reg;
    let kind = attr(node, "type").unwrap_or_else(|| "text".into());
    if kind == "reaction" {
        return react(reg, phone, node, &to, ack);
    }
    let Some(c) = channel_id(&to).and_then(|cid| reg.newsletters.get_mut(cid)) else {
        return (ack(None, Some("404")), Vec::new());
    };
    if c.owner != *phone {
        return (ack(None, Some("403")), Vec::new());
    }
    let plaintext = node.get_optional_child("plaintext");
    let body = plaintext
        .and_then(|p| match &p.content {
            Some(NodeContent::Bytes(b)) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mediatype = plaintext.and_then(|p| attr(p, "mediatype"));
    let edit = attr(node, "edit");
    let (post, server_id) = match edit.as_deref() {
        Some(e @ ("3" | "8")) => {
            let Some(p) = c.messages.iter_mut().find(|p| p.id == id) else {
                return (ack(None, Some("404")), Vec::new());
            };
            p.body = if e == "8" { Vec::new() } else { body };
            if e == "3" {
                p.kind = kind;
                p.mediatype = mediatype;
            }
            (p.clone(), p.server_id)
        }
        _ => {
            let server_id = c.next_server_id;
            c.next_server_id += 1;
            let p = Post {
                server_id,
                id: id.clone(),
                t,
                kind,
                mediatype,
                body,
                reactions: BTreeMap::new(),
            };
            c.messages.push(p.clone());
            (p, server_id)
        }
    };
    let c = c.clone();
    let mut out = Vec::new();
    for (p, d) in c.audience(reg, Some((phone.as_str(), *dev))) {
        let stanza = post_node(&c, &post, Some(&p), edit.as_deref());
        out.extend(deliver(reg, &p, d, stanza));
    }
    (ack(Some(server_id), None), out)
}

/// A reaction (`<reaction code>`, empty code removes it) to the post `server_id`:
/// counted, and the new counts pushed to the devices subscribed to live updates.
fn react(
    reg: &mut Registry,
    phone: &str,
    node: &Node,
    to: &str,
    ack: impl Fn(Option<u64>, Option<&str>) -> Node,
) -> (Node, Vec<Delivery>) {
    let Some(c) = channel_id(to).and_then(|cid| reg.newsletters.get_mut(cid)) else {
        return (ack(None, Some("404")), Vec::new());
    };
    let server_id = attr(node, "server_id").and_then(|s| s.parse::<u64>().ok());
    let Some(p) = c
        .messages
        .iter_mut()
        .find(|p| Some(p.server_id) == server_id)
    else {
        return (ack(None, Some("404")), Vec::new());
    };
    let code = node
        .get_optional_child("reaction")
        .and_then(|r| attr(r, "code"))
        .unwrap_or_default();
    if code.is_empty() {
        p.reactions.remove(phone);
    } else {
        p.reactions.insert(phone.to_string(), code);
    }
    let counts = reaction_counts(p);
    let server_id = p.server_id;
    let t = now();
    c.live.retain(|_, until| *until > t);
    let watchers: Vec<(String, u32)> = c.live.keys().cloned().collect();
    let jid = c.jid();
    let mut out = Vec::new();
    for (p, d) in watchers {
        let Some(conn) = reg
            .accounts
            .get(&p)
            .and_then(|a| a.devices.get(&d))
            .and_then(|d| d.live())
        else {
            continue; // live updates are for connected devices only
        };
        let notification = NodeBuilder::new("notification")
            .attr("from", jid.clone())
            .attr("type", "newsletter")
            .attr("id", format!("{:X}", rand::random::<u64>()))
            .attr("t", t.to_string())
            .children([NodeBuilder::new("live_updates")
                .children([NodeBuilder::new("messages")
                    .children([NodeBuilder::new("message")
                        .attr("server_id", server_id.to_string())
                        .children([reactions_node(&counts)])
                        .build()])
                    .build()])
                .build()])
            .build();
        out.push(Delivery {
            conn,
            node: notification,
            close_after: false,
        });
    }
    (ack(Some(server_id), None), out)
}
