//! Profile pictures (`w:profile:picture`): accounts and groups set, replace and remove
//! their picture; anyone asks for a user's or a group's picture and gets its id and a
//! media URL, or "not found", or — when they already hold the current id — an empty
//! answer meaning "unchanged". Group pictures are also answered in batches (`w:g2`
//! `<pictures>`). The bytes are served from the media host (`/v/t62/pp/<id>`); preview
//! and full size are the same bytes (the mock does not resize).
//!
//! Client side (whatsapp-rust 0.7): `wacore/src/iq/contacts.rs` (`ProfilePictureSpec`,
//! `SetProfilePictureSpec`) and `wacore/src/iq/groups.rs` (`GetGroupProfilePicturesIq`);
//! see `PROTOCOL.md`, "Profile pictures".

use crate::conn::{attr, iq_error, iq_result};
use crate::Shared;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};

/// A stored picture.
#[derive(Debug, Clone)]
pub struct Picture {
    /// Server-assigned id, new with every change.
    pub id: u64,
}

/// Where a picture's bytes are served.
fn direct_path(id: u64) -> String {
    format!("/v/t62/pp/{id}")
}

/// The picture key of a user (by phone) or a group (`<id>@g.us`).
fn key_of(shared: &Shared, jid: &str) -> Option<String> {
    if jid.ends_with("@g.us") {
        return Some(jid.to_string());
    }
    let j = jid.parse::<Jid>().ok()?;
    let reg = shared.registry.lock().expect("registry lock");
    reg.find_user(&j.user)
        .map(|a| format!("{}@s.whatsapp.net", a.phone))
}

/// Answers a `w:profile:picture` iq from the device `me` (phone, device).
pub(crate) fn picture_iq(
    shared: &Shared,
    me: Option<&(String, u32)>,
    node: &Node,
    id: &str,
) -> Node {
    let Some((my_phone, _)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    // A group is named by `target` (whatsapp-rust) or by `to` (WhatsApp Web).
    let target = attr(node, "target").or_else(|| attr(node, "to").filter(|t| t.ends_with("@g.us")));
    match attr(node, "type").as_deref() {
        Some("set") => set(shared, my_phone, target, node, id),
        Some("get") => get(shared, my_phone, target, node, id),
        _ => iq_error(id, "400", "bad-request"),
    }
}

fn set(shared: &Shared, my_phone: &str, target: Option<String>, node: &Node, id: &str) -> Node {
    let key = match target {
        Some(g) if g.ends_with("@g.us") => {
            let reg = shared.registry.lock().expect("registry lock");
            match reg.groups.get(g.trim_end_matches("@g.us")) {
                Some(grp) if grp.participants.iter().any(|p| p == my_phone) => g,
                Some(_) => return iq_error(id, "403", "forbidden"),
                None => return iq_error(id, "404", "item-not-found"),
            }
        }
        Some(_) => return iq_error(id, "403", "forbidden"),
        None => format!("{my_phone}@s.whatsapp.net"),
    };
    let bytes = node
        .get_optional_child("picture")
        .and_then(|p| match &p.content {
            Some(NodeContent::Bytes(b)) if !b.is_empty() => Some(b.clone()),
            _ => None,
        });
    let mut reg = shared.registry.lock().expect("registry lock");
    let old = reg.pictures.remove(&key);
    let mut media = shared.media.lock().expect("media lock");
    if let Some(old) = old {
        media.remove(&direct_path(old.id));
    }
    let Some(bytes) = bytes else {
        // Removal: an empty result.
        return iq_result(id, vec![]);
    };
    reg.next_picture += 1;
    let pid = 1_700_000_000 + reg.next_picture;
    media.insert(direct_path(pid), bytes.to_vec());
    reg.pictures.insert(key, Picture { id: pid });
    iq_result(
        id,
        vec![NodeBuilder::new("picture")
            .attr("id", pid.to_string())
            .build()],
    )
}

fn get(shared: &Shared, my_phone: &str, target: Option<String>, node: &Node, id: &str) -> Node {
    let Some(key) = target.as_deref().and_then(|t| key_of(shared, t)) else {
        return not_found(id);
    };
    let request = node.get_optional_child("picture");
    // An account that requires privacy tokens shows its picture only to those who
    // present the token it granted them (`<picture><tctoken>`); others get 401.
    if let Some(owner) = key.strip_suffix("@s.whatsapp.net") {
        let reg = shared.registry.lock().expect("registry lock");
        if !crate::privacy::shows(&reg, my_phone, owner, request) {
            return picture_error(id, "401", "not-authorized");
        }
    }
    let kind = request
        .and_then(|p| attr(p, "type"))
        .unwrap_or_else(|| "image".into());
    let known = request.and_then(|p| attr(p, "id"));
    let current = shared
        .registry
        .lock()
        .expect("registry lock")
        .pictures
        .get(&key)
        .cloned();
    match current {
        None => not_found(id),
        // The asker holds the current picture: an empty <picture/> says "unchanged".
        Some(p) if known.as_deref() == Some(p.id.to_string().as_str()) => {
            iq_result(id, vec![NodeBuilder::new("picture").build()])
        }
        Some(p) => iq_result(id, vec![picture_node(shared, &p, &kind).build()]),
    }
}

fn picture_node(shared: &Shared, p: &Picture, kind: &str) -> NodeBuilder {
    let host = shared.media_host();
    let path = direct_path(p.id);
    NodeBuilder::new("picture")
        .attr("id", p.id.to_string())
        .attr("type", kind.to_string())
        .attr("url", format!("https://{host}{path}"))
        .attr("direct_path", path)
}

fn not_found(id: &str) -> Node {
    picture_error(id, "404", "item-not-found")
}

/// `<picture><error code text/></picture>`: how a picture get says "none" (404) or
/// "not for you" (401); the client reads both as no picture.
fn picture_error(id: &str, code: &str, text: &str) -> Node {
    iq_result(
        id,
        vec![NodeBuilder::new("picture")
            .children([NodeBuilder::new("error")
                .attr("code", code)
                .attr("text", text)
                .build()])
            .build()],
    )
}

/// `w:g2` `<pictures>`: the pictures of several groups at once; a group without one
/// is listed with its jid only.
pub(crate) fn group_pictures(shared: &Shared, pictures: &Node) -> Node {
    let children: Vec<Node> = pictures
        .get_children_by_tag("picture")
        .filter_map(|p| {
            let jid = attr(p, "jid")?;
            let kind = attr(p, "type").unwrap_or_else(|| "preview".into());
            let current = shared
                .registry
                .lock()
                .expect("registry lock")
                .pictures
                .get(&jid)
                .cloned();
            Some(match current {
                Some(pic) => picture_node(shared, &pic, &kind).attr("jid", jid).build(),
                None => NodeBuilder::new("picture").attr("jid", jid).build(),
            })
        })
        .collect();
    NodeBuilder::new("pictures").children(children).build()
}
