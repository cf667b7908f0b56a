//! Groups created and managed by clients (`w:g2` sets): create, add / remove / promote /
//! demote participants, leave, subject, description, locked and announcement settings,
//! invite links (get, reset, join by code). Each change is answered as WhatsApp answers
//! it and announced to the members' devices with a `<notification type="w:gp2">` whose
//! children name the change (`<add>`, `<remove>`, `<promote>`, `<demote>`, `<subject>`,
//! `<description>`, `<locked>`/`<unlocked>`, `<announcement>`/`<not_announcement>`),
//! queued for devices that are offline.
//!
//! Client side (whatsapp-rust 0.7): requests and answer parsers in
//! `wacore/src/iq/groups.rs` (`GroupCreateIq`, the participant-action IQs and
//! `ParticipantChangeResponse`, `LeaveGroupIq`, `SetGroupSubjectIq`,
//! `SetGroupDescriptionIq`, `SetGroupLockedIq`, `SetGroupAnnouncementIq`,
//! `GetGroupInviteLinkIq`, `AcceptGroupInviteIq` / `parse_join_group_response`); the
//! notifications in `wacore/src/stanza/groups.rs` (`GroupNotificationAction`).

use crate::conn::{attr, iq_error, iq_result, now};
use crate::registry::{CommunitySettings, Group, Registry};
use crate::routing::{deliver, group_node, Delivery};
use crate::Shared;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};

/// The children of a `w:g2` iq this module answers.
const ACTIONS: &[&str] = &[
    "create",
    "add",
    "remove",
    "promote",
    "demote",
    "leave",
    "subject",
    "description",
    "locked",
    "unlocked",
    "announcement",
    "not_announcement",
    "invite",
];

pub(crate) type Answer = (Node, Vec<Delivery>);

/// The management request in `node`, if it is one.
pub(crate) fn action(node: &Node) -> Option<Node> {
    node.children()?
        .iter()
        .find(|n| {
            ACTIONS.contains(&n.tag.as_ref())
                || crate::communities::ACTIONS.contains(&n.tag.as_ref())
        })
        .cloned()
}

/// Answers a management request of the device `me` (phone, device) and the
/// notifications it causes.
pub(crate) fn manage(shared: &Shared, me: &str, node: &Node, action: &Node, id: &str) -> Answer {
    let gid = attr(node, "to")
        .and_then(|t| t.strip_suffix("@g.us").map(str::to_string))
        .unwrap_or_default();
    let get = attr(node, "type").as_deref() == Some("get");
    let mut reg = shared.registry.lock().expect("registry lock");
    let reg = &mut *reg;
    match action.tag.as_ref() {
        "create" => create(
            reg,
            me,
            action,
            id,
            shared
                .lid_migrated
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        "leave" => leave(reg, me, action, id),
        "invite" if gid.is_empty() => by_code(reg, me, action, get, id),
        t if crate::communities::ACTIONS.contains(&t) => {
            crate::communities::manage(reg, me, &gid, action, id)
        }
        _ => change(reg, me, &gid, action, get, id),
    }
}

pub(crate) fn none(reply: Node) -> Answer {
    (reply, Vec::new())
}

/// The phones named by `<participant jid>` children: (jid as written, phone if the
/// account exists).
fn named(reg: &Registry, action: &Node) -> Vec<(String, Option<String>)> {
    action
        .get_children_by_tag("participant")
        .filter_map(|p| attr(p, "jid"))
        .map(|jid| {
            let phone = jid
                .parse::<Jid>()
                .ok()
                .and_then(|j| reg.find_user(&j.user).map(|a| a.phone.clone()));
            (jid, phone)
        })
        .collect()
}

fn user_jid(phone: &str) -> String {
    format!("{phone}@s.whatsapp.net")
}

/// A `w:gp2` notification of `children` by `actor`, to every device of `to`.
pub(crate) fn notify(
    reg: &mut Registry,
    gid: &str,
    actor: &str,
    children: Vec<Node>,
    to: &[String],
) -> Vec<Delivery> {
    let node = NodeBuilder::new("notification")
        .attr("from", format!("{gid}@g.us"))
        .attr("type", "w:gp2")
        .attr("id", format!("gp2-{}", rand::random::<u64>()))
        .attr("t", now().to_string())
        .attr("participant", user_jid(actor))
        .children(children)
        .build();
    let mut out = Vec::new();
    for phone in to {
        let devices: Vec<u32> = reg
            .accounts
            .get(phone)
            .map(|a| a.devices.keys().copied().filter(|d| *d != 0).collect())
            .unwrap_or_default();
        for d in devices {
            out.extend(deliver(reg, phone, d, node.clone()));
        }
    }
    out
}

/// `<tag reason="..."><participant jid="phone@..."/></tag>`: one member joining or going.
pub(crate) fn one_participant(tag: &'static str, reason: &str, phone: &str) -> Node {
    NodeBuilder::new(tag)
        .attr("reason", reason.to_string())
        .children([NodeBuilder::new("participant")
            .attr("jid", user_jid(phone))
            .build()])
        .build()
}

/// Creates a group; `lid` when accounts are LID-migrated (new groups are then
/// LID-addressed, as WhatsApp makes them).
fn create(reg: &mut Registry, me: &str, action: &Node, id: &str, lid: bool) -> Answer {
    let mut participants = vec![me.to_string()];
    for (_, phone) in named(reg, action) {
        if let Some(p) = phone.filter(|p| !participants.contains(p)) {
            participants.push(p);
        }
    }
    let description = action
        .get_optional_child("description")
        .and_then(|d| Some((attr(d, "id")?, text(d.get_optional_child("body")?))));
    // A community (`<parent>`), or a subgroup created inside one (`<linked_parent>`).
    let community = action
        .get_optional_child("parent")
        .map(|p| CommunitySettings {
            closed: attr(p, "default_membership_approval_mode").as_deref()
                == Some("request_required"),
            member_subgroups: action
                .get_optional_child("allow_non_admin_sub_group_creation")
                .is_some(),
        });
    let linked_parent = action
        .get_optional_child("linked_parent")
        .and_then(|l| attr(l, "jid"))
        .map(|j| j.trim_end_matches("@g.us").to_string());
    if let Some(parent) = &linked_parent {
        if let Err((code, text)) = crate::communities::may_create_in(reg, me, parent) {
            return none(iq_error(id, code, text));
        }
    }
    let gid = reg.next_group_id();
    let group = Group {
        id: gid.clone(),
        subject: attr(action, "subject").unwrap_or_default(),
        creator: me.to_string(),
        created: now(),
        admins: [me.to_string()].into(),
        description,
        community,
        linked_parent: linked_parent.clone(),
        lid_addressed: lid,
        ..Group::new(participants)
    };
    if community.is_some() {
        let general = action.get_optional_child("create_general_chat").is_some();
        reg.groups.insert(gid.clone(), group.clone());
        crate::communities::make_subgroups(reg, &gid, general);
    }
    if let Some(parent) = &linked_parent {
        crate::communities::join_community(reg, parent, &group.participants);
    }
    let node = group_node(reg, &group);
    let others: Vec<String> = group
        .participants
        .iter()
        .filter(|p| *p != me)
        .cloned()
        .collect();
    reg.groups.insert(gid.clone(), group);
    let create = NodeBuilder::new("create").children([node.clone()]).build();
    let out = notify(reg, &gid, me, vec![create], &others);
    (iq_result(id, vec![node]), out)
}

fn leave(reg: &mut Registry, me: &str, action: &Node, id: &str) -> Answer {
    let Some(gid) = action
        .get_optional_child("group")
        .and_then(|g| attr(g, "id"))
        .map(|g| g.trim_end_matches("@g.us").to_string())
    else {
        return none(iq_error(id, "400", "bad-request"));
    };
    let Some(group) = reg.groups.get_mut(&gid) else {
        return none(iq_error(id, "404", "item-not-found"));
    };
    if !group.participants.iter().any(|p| p == me) {
        return none(iq_error(id, "403", "forbidden"));
    }
    group.participants.retain(|p| p != me);
    group.admins.remove(me);
    let mut to = group.participants.clone();
    if group.participants.is_empty() {
        reg.groups.remove(&gid);
    }
    to.push(me.to_string());
    let removed = one_participant("remove", "leave", me);
    let out = notify(reg, &gid, me, vec![removed], &to);
    (iq_result(id, vec![]), out)
}

/// Joins by invite code (`set`), or describes the group a code leads to (`get`).
fn by_code(reg: &mut Registry, me: &str, action: &Node, get: bool, id: &str) -> Answer {
    let code = attr(action, "code").unwrap_or_default();
    let Some(gid) = reg
        .groups
        .values()
        .find(|g| !code.is_empty() && g.invite.as_deref() == Some(code.as_str()))
        .map(|g| g.id.clone())
    else {
        return none(iq_error(id, "404", "item-not-found"));
    };
    let Some(group) = reg.groups.get_mut(&gid) else {
        return none(iq_error(id, "404", "item-not-found"));
    };
    if get {
        let g = group.clone();
        return none(iq_result(id, vec![group_node(reg, &g)]));
    }
    let joined = NodeBuilder::new("group")
        .attr("jid", format!("{gid}@g.us"))
        .build();
    if group.participants.iter().any(|p| p == me) {
        return none(iq_result(id, vec![joined]));
    }
    group.participants.push(me.to_string());
    let to = group.participants.clone();
    let add = one_participant("add", "invite", me);
    let out = notify(reg, &gid, me, vec![add], &to);
    (iq_result(id, vec![joined]), out)
}

/// A change to the group `gid`: members and admins only, as WhatsApp allows.
fn change(reg: &mut Registry, me: &str, gid: &str, action: &Node, get: bool, id: &str) -> Answer {
    let targets = named(reg, action);
    let Some(group) = reg.groups.get_mut(gid) else {
        return none(iq_error(id, "404", "item-not-found"));
    };
    if !group.participants.iter().any(|p| p == me) {
        return none(iq_error(id, "403", "forbidden"));
    }
    let admin = group.admins.contains(me);
    let tag: &'static str = ACTIONS
        .iter()
        .copied()
        .find(|t| *t == action.tag.as_ref())
        .unwrap_or("invite");
    // Members may change the subject and description of an unlocked group; everything
    // else is for admins.
    let members_may = matches!(tag, "subject" | "description") && !group.locked;
    if !admin && !members_may {
        return none(iq_error(id, "401", "not-authorized"));
    }
    let mut extra = Vec::new();
    let (reply, notice): (Vec<Node>, Option<Node>) = match tag {
        "add" | "remove" | "promote" | "demote" => {
            let mut answers = Vec::new();
            let mut done = Vec::new();
            for (jid, phone) in targets {
                let member = phone
                    .as_ref()
                    .is_some_and(|p| group.participants.contains(p));
                let error = match (tag, &phone, member) {
                    (_, None, _) => Some("404"),
                    ("add", Some(_), true) => Some("409"),
                    ("add", Some(p), false) => {
                        group.participants.push(p.clone());
                        None
                    }
                    (_, Some(_), false) => Some("404"),
                    ("remove", Some(p), true) => {
                        group.participants.retain(|x| x != p);
                        group.admins.remove(p);
                        extra.push(p.clone());
                        None
                    }
                    ("promote", Some(p), true) => {
                        group.admins.insert(p.clone());
                        None
                    }
                    (_, Some(p), true) => {
                        group.admins.remove(p);
                        None
                    }
                };
                let mut b = NodeBuilder::new("participant").attr("jid", jid.clone());
                if let Some(e) = error {
                    b = b.attr("error", e);
                } else {
                    done.push(NodeBuilder::new("participant").attr("jid", jid).build());
                }
                answers.push(b.build());
            }
            let reply = NodeBuilder::new(tag).children(answers).build();
            let notice = (!done.is_empty()).then(|| NodeBuilder::new(tag).children(done).build());
            (vec![reply], notice)
        }
        "subject" => {
            group.subject = text(action);
            let n = NodeBuilder::new("subject")
                .attr("subject", group.subject.clone())
                .attr("s_o", user_jid(me))
                .attr("s_t", now().to_string())
                .build();
            (vec![], Some(n))
        }
        "description" => {
            let did = attr(action, "id").unwrap_or_else(|| format!("{:X}", rand::random::<u64>()));
            let body = action.get_optional_child("body").map(text);
            group.description = body.clone().map(|b| (did.clone(), b));
            let inner = match body {
                Some(b) => NodeBuilder::new("body").string_content(b).build(),
                None => NodeBuilder::new("delete").build(),
            };
            let n = NodeBuilder::new("description")
                .attr("id", did)
                .children([inner])
                .build();
            (vec![], Some(n))
        }
        "locked" | "unlocked" => {
            group.locked = tag == "locked";
            (vec![], Some(NodeBuilder::new(tag).build()))
        }
        "announcement" | "not_announcement" => {
            group.announce = tag == "announcement";
            (vec![], Some(NodeBuilder::new(tag).build()))
        }
        // The invite link: `get` reads it (made on first use), `set` resets it.
        _ => {
            if !get || group.invite.is_none() {
                group.invite = Some(invite_code());
            }
            let code = group.invite.clone().unwrap_or_default();
            let notice = (!get).then(|| NodeBuilder::new("revoke").build());
            (
                vec![NodeBuilder::new("invite").attr("code", code).build()],
                notice,
            )
        }
    };
    let mut to = group.participants.clone();
    to.extend(extra.iter().cloned());
    let mut out = match &notice {
        Some(n) => notify(reg, gid, me, vec![n.clone()], &to),
        None => Vec::new(),
    };
    // `<remove linked_groups="true">` on a community: out of every linked group too.
    if tag == "remove" && attr(action, "linked_groups").as_deref() == Some("true") {
        for (sub, members) in crate::communities::remove_from_linked(reg, gid, &extra) {
            if let Some(n) = &notice {
                out.extend(notify(reg, &sub, me, vec![n.clone()], &members));
            }
        }
    }
    (iq_result(id, reply), out)
}

/// The text content of a node.
fn text(n: &Node) -> String {
    match &n.content {
        Some(NodeContent::String(s)) => s.to_string(),
        Some(NodeContent::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A fresh invite code (22 letters and digits, like WhatsApp's).
fn invite_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..22)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}
