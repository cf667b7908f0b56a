//! Communities: a parent group (`<create>` with `<parent>`) that comes with its
//! announcement group (`<default_sub_group/>`, admins-only, every community member in
//! it) and, when asked, a general chat; subgroups created inside it
//! (`<linked_parent jid>`) or linked and unlinked later (`<links>` / `<unlink>`);
//! members look up and join linked groups (`<query_linked>`, `<join_linked_group>`),
//! list everyone in them (`<linked_groups_participants>`), are removed from all of
//! them at once (`<remove linked_groups="true">`); the owner deactivates it
//! (`<delete_parent>`: the announcement group goes, other subgroups are unlinked). The
//! subgroup list and counts are MEX queries (`fetch_all_subgroups`,
//! `query_subgroup_participant_count`). Members hear of links, unlinks and the
//! deactivation by `w:gp2` notifications (`<link>`, `<unlink>`, `<delete>`).
//!
//! Client side (whatsapp-rust 0.7): `whatsapp-rust/src/features/community.rs`
//! (`get_subgroups`/`parse_subgroup_node`, `get_subgroup_participant_counts`), the iqs
//! and their parsers in `wacore/src/iq/groups.rs` (`build_create_node`,
//! `LinkSubgroupsIq`, `UnlinkSubgroupsIq`, `DeleteCommunityIq`, `QueryLinkedGroupIq`,
//! `JoinLinkedGroupIq`, `GetLinkedGroupsParticipantsIq`, `CommunityParticipatingIq`,
//! the `<parent>`/`<linked_parent>`/`<default_sub_group>`/`<general_chat>` fields of
//! `GroupInfoResponse`), notifications in `wacore/src/stanza/groups.rs`.

use crate::conn::{attr, iq_error, iq_result};
use crate::groups::{none, notify, one_participant, Answer};
use crate::mex::MexResult;
use crate::registry::{Group, Registry};
use crate::routing::group_node;
use serde_json::{json, Value};
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::Node;

/// The `w:g2` children this module answers (addressed to the community).
pub(crate) const ACTIONS: &[&str] = &[
    "links",
    "unlink",
    "delete_parent",
    "query_linked",
    "join_linked_group",
    "linked_groups_participants",
];

fn gid_of(jid: &str) -> String {
    jid.trim_end_matches("@g.us").to_string()
}

/// Ids of the groups linked to the community `parent`, announcement group first.
fn linked(reg: &Registry, parent: &str) -> Vec<String> {
    let mut ids: Vec<&Group> = reg
        .groups
        .values()
        .filter(|g| g.linked_parent.as_deref() == Some(parent))
        .collect();
    ids.sort_by(|a, b| (!a.default_sub, &a.id).cmp(&(!b.default_sub, &b.id)));
    ids.into_iter().map(|g| g.id.clone()).collect()
}

/// After a community `parent` was created: its announcement group and, if asked,
/// its general chat, with the community's members.
pub(crate) fn make_subgroups(reg: &mut Registry, parent: &str, general_chat: bool) {
    let Some(p) = reg.groups.get(parent).cloned() else {
        return;
    };
    let mut kinds = vec![(p.subject.clone(), true)];
    if general_chat {
        kinds.push(("General".to_string(), false));
    }
    for (subject, default_sub) in kinds {
        let id = reg.next_group_id();
        let g = Group {
            id: id.clone(),
            subject,
            creator: p.creator.clone(),
            created: p.created,
            admins: p.admins.clone(),
            announce: default_sub,
            linked_parent: Some(parent.to_string()),
            default_sub,
            general_chat: !default_sub,
            ..Group::new(p.participants.clone())
        };
        reg.groups.insert(id, g);
    }
}

/// Whether `me` may create a subgroup in the community `parent` (else the error).
pub(crate) fn may_create_in(
    reg: &Registry,
    me: &str,
    parent: &str,
) -> Result<(), (&'static str, &'static str)> {
    let Some(p) = reg.groups.get(parent).filter(|g| g.community.is_some()) else {
        return Err(("404", "item-not-found"));
    };
    let member = p.participants.iter().any(|x| x == me);
    let allowed =
        p.admins.contains(me) || (member && p.community.is_some_and(|c| c.member_subgroups));
    if allowed {
        Ok(())
    } else {
        Err(("401", "not-authorized"))
    }
}

/// `phones` become members of the community `parent` and of its announcement group.
pub(crate) fn join_community(reg: &mut Registry, parent: &str, phones: &[String]) {
    let announce = linked(reg, parent)
        .into_iter()
        .filter(|id| reg.groups.get(id).is_some_and(|g| g.default_sub));
    let targets: Vec<String> = std::iter::once(parent.to_string())
        .chain(announce)
        .collect();
    for id in targets {
        if let Some(g) = reg.groups.get_mut(&id) {
            for p in phones {
                if !g.participants.contains(p) {
                    g.participants.push(p.clone());
                }
            }
        }
    }
}

/// Answers a community request `action` of `me` addressed to the community `parent`.
pub(crate) fn manage(
    reg: &mut Registry,
    me: &str,
    parent: &str,
    action: &Node,
    id: &str,
) -> Answer {
    let Some(p) = reg
        .groups
        .get(parent)
        .filter(|g| g.community.is_some())
        .cloned()
    else {
        return none(iq_error(id, "404", "item-not-found"));
    };
    if !p.participants.iter().any(|x| x == me) {
        return none(iq_error(id, "403", "forbidden"));
    }
    let admin = p.admins.contains(me);
    match action.tag.as_ref() {
        "links" | "unlink" if !admin => none(iq_error(id, "401", "not-authorized")),
        "delete_parent" if p.creator != me => none(iq_error(id, "401", "not-authorized")),
        "links" => link(reg, me, &p, action, id),
        "unlink" => unlink(reg, me, &p, action, id),
        "delete_parent" => {
            let subs = linked(reg, parent);
            for s in &subs {
                let default_sub = reg.groups.get(s).is_some_and(|g| g.default_sub);
                if default_sub {
                    reg.groups.remove(s);
                } else if let Some(g) = reg.groups.get_mut(s) {
                    g.linked_parent = None;
                }
            }
            reg.groups.remove(parent);
            let delete = NodeBuilder::new("delete").attr("reason", "delete").build();
            let out = notify(reg, parent, me, vec![delete], &p.participants);
            (iq_result(id, vec![]), out)
        }
        "linked_groups_participants" => {
            let mut everyone: Vec<String> = Vec::new();
            for s in linked(reg, parent) {
                for m in reg
                    .groups
                    .get(&s)
                    .map(|g| g.participants.clone())
                    .unwrap_or_default()
                {
                    if !everyone.contains(&m) {
                        everyone.push(m);
                    }
                }
            }
            let list = NodeBuilder::new("linked_groups_participants")
                .children(everyone.iter().map(|m| {
                    NodeBuilder::new("participant")
                        .attr("jid", format!("{m}@s.whatsapp.net"))
                        .build()
                }))
                .build();
            none(iq_result(id, vec![list]))
        }
        // query_linked / join_linked_group
        tag => {
            let sub = attr(action, "jid").map(|j| gid_of(&j)).unwrap_or_default();
            let Some(g) = reg
                .groups
                .get_mut(&sub)
                .filter(|g| g.linked_parent.as_deref() == Some(parent))
            else {
                return none(iq_error(id, "404", "item-not-found"));
            };
            let mut out = Vec::new();
            if tag == "join_linked_group" && !g.participants.iter().any(|x| x == me) {
                g.participants.push(me.to_string());
                let to = g.participants.clone();
                let add = one_participant("add", "linked_group_join", me);
                out = notify(reg, &sub, me, vec![add], &to);
            }
            let node = reg.groups.get(&sub).map(|g| group_node(reg, g));
            let wrapped = NodeBuilder::new("linked_group")
                .attr("jid", format!("{sub}@g.us"))
                .children(node)
                .build();
            (iq_result(id, vec![wrapped]), out)
        }
    }
}

/// `<links><link link_type="sub_group"><group jid/>…`: groups `me` administers join
/// the community; each answered alone (404 unknown, 401 not their admin, 409 linked
/// already).
fn link(reg: &mut Registry, me: &str, p: &Group, action: &Node, id: &str) -> Answer {
    let asked: Vec<String> = action
        .get_optional_child("link")
        .map(|l| {
            l.get_children_by_tag("group")
                .filter_map(|g| attr(g, "jid"))
                .collect()
        })
        .unwrap_or_default();
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for jid in asked {
        let sub = gid_of(&jid);
        let error = match reg.groups.get(&sub) {
            None => Some("404"),
            Some(g) if !g.admins.contains(me) => Some("401"),
            Some(g) if g.linked_parent.is_some() || g.community.is_some() => Some("409"),
            Some(_) => None,
        };
        let mut b = NodeBuilder::new("group").attr("jid", jid.clone());
        if let Some(e) = error {
            b = b.attr("error", e);
        } else if let Some(g) = reg.groups.get_mut(&sub) {
            g.linked_parent = Some(p.id.clone());
            let (members, subject) = (g.participants.clone(), g.subject.clone());
            join_community(reg, &p.id, &members);
            let notice = NodeBuilder::new("link")
                .attr("link_type", "sub_group")
                .children([NodeBuilder::new("group")
                    .attr("jid", jid.clone())
                    .attr("subject", subject)
                    .build()])
                .build();
            let to = reg
                .groups
                .get(&p.id)
                .map(|g| g.participants.clone())
                .unwrap_or_default();
            out.extend(notify(reg, &p.id, me, vec![notice], &to));
        }
        answers.push(b.build());
    }
    let reply = NodeBuilder::new("links")
        .children([NodeBuilder::new("link")
            .attr("link_type", "sub_group")
            .children(answers)
            .build()])
        .build();
    (iq_result(id, vec![reply]), out)
}

/// `<unlink unlink_type="sub_group"><group jid/>…`: linked groups leave the community
/// (404 for a group not linked to it; the announcement group cannot leave: 403).
fn unlink(reg: &mut Registry, me: &str, p: &Group, action: &Node, id: &str) -> Answer {
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for jid in action
        .get_children_by_tag("group")
        .filter_map(|g| attr(g, "jid"))
        .collect::<Vec<_>>()
    {
        let sub = gid_of(&jid);
        let error = match reg.groups.get(&sub) {
            Some(g) if g.linked_parent.as_deref() != Some(p.id.as_str()) => Some("404"),
            None => Some("404"),
            Some(g) if g.default_sub => Some("403"),
            Some(_) => None,
        };
        let mut b = NodeBuilder::new("group").attr("jid", jid.clone());
        if let Some(e) = error {
            b = b.attr("error", e);
        } else if let Some(g) = reg.groups.get_mut(&sub) {
            g.linked_parent = None;
            let notice = NodeBuilder::new("unlink")
                .attr("unlink_type", "sub_group")
                .attr("unlink_reason", "unlink_group")
                .children([NodeBuilder::new("group").attr("jid", jid.clone()).build()])
                .build();
            out.extend(notify(reg, &p.id, me, vec![notice], &p.participants));
        }
        answers.push(b.build());
    }
    let reply = NodeBuilder::new("unlink")
        .attr("unlink_type", "sub_group")
        .children(answers)
        .build();
    (iq_result(id, vec![reply]), out)
}

/// A subgroup as the MEX subgroup queries describe it.
fn subgroup_json(g: &Group) -> Value {
    json!({
        "id": format!("{}@g.us", g.id),
        "subject": {"value": g.subject, "creation_time": g.created.to_string(),
                    "creator": {"id": format!("{}@s.whatsapp.net", g.creator)}},
        "creation_time": g.created.to_string(),
        "participants_count": g.participants.len(),
        "total_participants_count": g.participants.len(),
        "properties": {"general_chat": g.general_chat},
    })
}

/// MEX `fetch_all_subgroups` (`counts` false) or `query_subgroup_participant_count`
/// (true) for the community `jid`, asked by a member.
pub(crate) fn subgroups(reg: &Registry, phone: &str, jid: Option<&str>, counts: bool) -> MexResult {
    let parent = gid_of(jid.unwrap_or(""));
    let Some(p) = reg.groups.get(&parent).filter(|g| g.community.is_some()) else {
        return Err((404, format!("no community {parent}")));
    };
    if !p.participants.iter().any(|x| x == phone) {
        return Err((403, "not a member of the community".into()));
    }
    let subs: Vec<&Group> = linked(reg, &parent)
        .iter()
        .filter_map(|id| reg.groups.get(id))
        .collect();
    let edge = |g: &&Group| json!({"node": subgroup_json(g)});
    let answer = if counts {
        json!({"id": format!("{parent}@g.us"),
               "sub_groups": {"edges": subs.iter().map(edge).collect::<Vec<_>>()}})
    } else {
        let default = subs
            .iter()
            .find(|g| g.default_sub)
            .map(|g| subgroup_json(g));
        json!({"id": format!("{parent}@g.us"),
               "default_sub_group": default,
               "sub_groups": {"edges": subs.iter().filter(|g| !g.default_sub).map(edge).collect::<Vec<_>>()}})
    };
    Ok(json!({ "xwa2_group_query_by_id": answer }))
}

/// `<remove linked_groups="true">` on a community: the removed members also leave
/// every linked group. Returns who to tell, per group.
pub(crate) fn remove_from_linked(
    reg: &mut Registry,
    parent: &str,
    phones: &[String],
) -> Vec<(String, Vec<String>)> {
    let mut told = Vec::new();
    for s in linked(reg, parent) {
        if let Some(g) = reg.groups.get_mut(&s) {
            let before = g.participants.clone();
            g.participants.retain(|m| !phones.contains(m));
            for p in phones {
                g.admins.remove(p);
            }
            if g.participants.len() != before.len() {
                told.push((s.clone(), before));
            }
        }
    }
    told
}
