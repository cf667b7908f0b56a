//! Trusted-contact privacy tokens ("tc tokens"). After a 1:1 send a client grants the
//! recipient a token (`<iq xmlns="privacy" type="set"><tokens><token jid t
//! type="trusted_contact"/>`); the server answers with the token bytes and hands them to
//! the recipient's devices in a `<notification type="privacy_token">` (from the
//! granter's number, `sender_lid` beside it). The recipient attaches the bytes
//! (`<tctoken>`) when it writes to the granter. An account that restricts who may
//! contact it (`MockNetwork::require_tc_token`) refuses a 1:1 message without the
//! token it granted that sender with a `463` nack (`<ack class="message" error="463">`),
//! and nothing is delivered. The props answer turns on
//! `privacy_token_sending_on_all_1_on_1_messages` (code 10518), so clients attach the
//! tokens they hold to every 1:1 message.
//!
//! Client side (whatsapp-rust 0.7): `wacore/src/iq/tctoken.rs`
//! (`IssuePrivacyTokensSpec::parse_response`, `parse_privacy_token_notification`,
//! `build_tc_token_node`), `whatsapp-rust/src/send/tctoken_lifecycle.rs`
//! (`maybe_include_tc_token`, `issue_tc_token_after_send`),
//! `src/handlers/notification/privacy_business.rs`, the 463 log in
//! `src/client/node_io.rs` (`take_ack_waiter`).

use crate::conn::{attr, iq_result, now};
use crate::registry::Registry;
use crate::routing::{deliver, Delivery};
use whatsapp_rust::wacore::iq::tctoken::compute_cs_token;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent};

/// The nack code for a message refused for want of a privacy token.
pub(crate) const MISSING_TOKEN: &str = "463";

/// How long a granted token admits messages: four 7-day buckets, the client's own
/// default (`TC_TOKEN_BUCKET_DURATION` × `TC_TOKEN_NUM_BUCKETS`).
const TOKEN_LIFETIME_SECS: u64 = 4 * 604_800;

/// A token the account `granter` gave the account `holder`: its bytes and time.
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: Vec<u8>,
    pub t: u64,
}

/// Answers a token grant of the device `me` (its phone): one token per named account,
/// announced to the holder's devices.
pub(crate) fn issue(reg: &mut Registry, me: &str, node: &Node, id: &str) -> (Node, Vec<Delivery>) {
    let Some(tokens) = node.get_optional_child("tokens") else {
        return (iq_result(id, vec![]), Vec::new());
    };
    let granter_lid = reg
        .accounts
        .get(me)
        .map(|a| a.lid.clone())
        .unwrap_or_default();
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for t in tokens.get_children_by_tag("token") {
        let Some(jid) = attr(t, "jid") else { continue };
        let Some(holder) = jid
            .parse::<Jid>()
            .ok()
            .and_then(|j| reg.find_user(&j.user).map(|a| a.phone.clone()))
        else {
            continue; // no such account: nothing to grant
        };
        if holder == me {
            continue;
        }
        let stamp = attr(t, "t")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(now);
        let token: Vec<u8> = (0..20).map(|_| rand::random::<u8>()).collect();
        reg.tc_tokens.insert(
            (me.to_string(), holder.clone()),
            Grant {
                token: token.clone(),
                t: stamp,
            },
        );
        answers.push(
            NodeBuilder::new("token")
                .attr("jid", jid)
                .attr("t", stamp.to_string())
                .attr("type", "trusted_contact")
                .bytes(token.clone())
                .build(),
        );
        let notification = NodeBuilder::new("notification")
            .attr("from", format!("{me}@s.whatsapp.net"))
            .attr("sender_lid", format!("{granter_lid}@lid"))
            .attr("type", "privacy_token")
            .attr("id", format!("{:X}", rand::random::<u64>()))
            .attr("t", now().to_string())
            .children([NodeBuilder::new("tokens")
                .children([NodeBuilder::new("token")
                    .attr("type", "trusted_contact")
                    .attr("t", stamp.to_string())
                    .bytes(token)
                    .build()])
                .build()])
            .build();
        let devices: Vec<u32> = reg
            .accounts
            .get(&holder)
            .map(|a| a.devices.keys().copied().filter(|d| *d != 0).collect())
            .unwrap_or_default();
        for d in devices {
            out.extend(deliver(reg, &holder, d, notification.clone()));
        }
    }
    let reply = NodeBuilder::new("tokens").children(answers).build();
    (iq_result(id, vec![reply]), out)
}

fn token_child<'a>(node: &'a Node, tag: &str) -> Option<&'a [u8]> {
    node.get_optional_child(tag).and_then(|t| match &t.content {
        Some(NodeContent::Bytes(b)) => Some(b.as_slice()),
        _ => None,
    })
}

/// Whether `node` carries (`<tctoken>`) the valid token `granter` gave `holder`.
fn presents_grant(reg: &Registry, granter: &str, holder: &str, node: &Node) -> bool {
    match (
        reg.tc_tokens
            .get(&(granter.to_string(), holder.to_string())),
        token_child(node, "tctoken"),
    ) {
        (Some(g), Some(p)) => g.token == p && g.t + TOKEN_LIFETIME_SECS > now(),
        _ => false,
    }
}

/// Whether a 1:1 message `node` from `sender` may reach `recipient`: always, unless
/// the recipient requires tokens and the stanza carries neither the token it granted
/// the sender nor a `cstoken` made from the sender's NCT salt and the recipient's LID
/// (`user@lid`).
pub(crate) fn admits(reg: &Registry, sender: &str, recipient: &str, node: &Node) -> bool {
    if sender == recipient || !reg.tc_required.contains(recipient) {
        return true;
    }
    let salted = match (
        reg.accounts.get(sender).and_then(|a| a.nct_salt.as_deref()),
        reg.accounts.get(recipient),
        token_child(node, "cstoken"),
    ) {
        (Some(salt), Some(r), Some(p)) => compute_cs_token(salt, &format!("{}@lid", r.lid)) == p,
        _ => false,
    };
    salted || presents_grant(reg, recipient, sender, node)
}

/// Whether `asker` may see `owner`'s presence or profile picture: always, unless the
/// owner requires tokens and the request (`<presence type="subscribe">`, or the
/// `<picture>` of a `w:profile:picture` get) lacks the token the owner granted.
pub(crate) fn shows(reg: &Registry, asker: &str, owner: &str, request: Option<&Node>) -> bool {
    asker == owner
        || !reg.tc_required.contains(owner)
        || request.is_some_and(|r| presents_grant(reg, owner, asker, r))
}

/// Whether account `phone` blocked the account `sender` (by phone number).
pub(crate) fn blocks(reg: &crate::registry::Registry, phone: &str, sender: &str) -> bool {
    let (Some(acc), Some(from)) = (reg.accounts.get(phone), reg.accounts.get(sender)) else {
        return false;
    };
    acc.blocked.contains_key(&from.lid)
}

/// `<iq xmlns="blocklist">`: `get` answers `<list>` of `<item jid t>`; `set` with
/// `<item jid action="block|unblock" pn_jid?>` changes the list (the person named by
/// LID or phone number; an unknown one is a 404).
pub(crate) fn blocklist_iq(
    shared: &crate::Shared,
    me: Option<&(String, u32)>,
    node: &Node,
    id: &str,
) -> Node {
    use crate::conn::iq_error;
    let Some((phone, _)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    let mut reg = shared.registry.lock().expect("registry lock");
    if attr(node, "type").as_deref() == Some("get") {
        let items = reg
            .accounts
            .get(phone)
            .map(|a| {
                a.blocked
                    .iter()
                    .map(|(lid, t)| {
                        NodeBuilder::new("item")
                            .attr("jid", format!("{lid}@lid"))
                            .attr("t", t.to_string())
                            .build()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        return iq_result(id, vec![NodeBuilder::new("list").children(items).build()]);
    }
    let Some(item) = node.get_optional_child("item") else {
        return iq_error(id, "400", "bad-request");
    };
    let jid = attr(item, "jid").unwrap_or_default();
    let user = jid.split(['@', ':']).next().unwrap_or_default().to_string();
    let Some(lid) = reg.find_user(&user).map(|a| a.lid.clone()) else {
        return iq_error(id, "404", "item-not-found");
    };
    let Some(acc) = reg.accounts.get_mut(phone) else {
        return iq_error(id, "404", "item-not-found");
    };
    match attr(item, "action").as_deref() {
        Some("block") => {
            acc.blocked.insert(lid, now());
        }
        Some("unblock") => {
            acc.blocked.remove(&lid);
        }
        _ => return iq_error(id, "400", "bad-request"),
    }
    iq_result(id, vec![])
}
