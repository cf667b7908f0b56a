//! Group management (create, info, participants, invite links, join, leave,
//! settings) and group events: each operation runs beside the actor like a send, and
//! the group notifications WhatsApp pushes become `group_update` events.

use super::outbound::{group_jid_of, Ops};
use super::{InstanceError, InstanceState};
use crate::events::rfc3339;
use ractor::RpcReplyPort;
use serde_json::{json, Value};
use whatsapp_rust::features::{
    GroupCreateOptions, GroupDescription, GroupMetadata, GroupParticipantOptions, GroupSubject,
    ParticipantType, PreviousDescription,
};
use whatsapp_rust::wacore::stanza::groups::GroupNotificationAction as A;
use whatsapp_rust::wacore::types::events::GroupUpdate;
use whatsapp_rust::Jid;

/// What to do to participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantAction {
    Add,
    Remove,
    Promote,
    Demote,
}

/// Settings to change (each only when given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSettings {
    pub subject: Option<String>,
    /// `Some(None)` deletes the description.
    pub description: Option<Option<String>>,
    pub announce: Option<bool>,
    pub locked: Option<bool>,
}

/// A group operation. People are phone digits or JIDs (`…@s.whatsapp.net`,
/// `…@lid`); groups are group JIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOp {
    Create {
        name: String,
        participants: Vec<String>,
    },
    Info(String),
    Participants {
        group: String,
        action: ParticipantAction,
        participants: Vec<String>,
    },
    /// The invite link; `reset` revokes the old one first.
    InviteLink {
        group: String,
        reset: bool,
    },
    /// Join by an invite link or code.
    Join(String),
    Leave(String),
    Settings {
        group: String,
        settings: GroupSettings,
    },
}

impl InstanceState {
    /// `Group`: runs `op`; answers its JSON result.
    pub(super) fn group(&mut self, op: GroupOp, reply: RpcReplyPort<Result<Value, InstanceError>>) {
        self.run_op(
            reply,
            None,
            move |ops, _| async move { run(&ops, op).await },
        );
    }
}

/// A person as a JID: phone digits, `<digits>@s.whatsapp.net` or `<digits>@lid`.
pub(super) fn person(p: &str) -> Result<Jid, InstanceError> {
    let p = p.trim();
    if let Some(user) = p.strip_suffix("@lid") {
        if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Jid::lid(user));
        }
        return Err(InstanceError::InvalidPhone);
    }
    let digits = p.strip_suffix("@s.whatsapp.net").unwrap_or(p);
    if (10..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(Jid::pn(digits))
    } else {
        Err(InstanceError::InvalidPhone)
    }
}

fn people(list: &[String]) -> Result<Vec<Jid>, InstanceError> {
    list.iter().map(|p| person(p)).collect()
}

/// Maps a group call's failure: WhatsApp's refusal (not an admin, not a member, no
/// such group) is `GROUP_REQUEST_FAILED` with WhatsApp's reason in the log.
fn failed(ops: &Ops, e: impl std::fmt::Display) -> InstanceError {
    tracing::warn!(instance_id = %ops.id, error = %e, "group request failed");
    InstanceError::GroupRequestFailed
}

async fn run(ops: &Ops, op: GroupOp) -> Result<Value, InstanceError> {
    let g = ops.client.groups();
    let wait = ops.env.timing.request_timeout;
    macro_rules! call {
        ($fut:expr) => {
            tokio::time::timeout(wait, $fut)
                .await
                .map_err(|_| InstanceError::GroupRequestFailed)?
                .map_err(|e| failed(ops, e))?
        };
    }
    match op {
        GroupOp::Create { name, participants } => {
            let subject =
                GroupSubject::new(name).map_err(|_| InstanceError::InvalidGroupSettings)?;
            let options = GroupCreateOptions::builder()
                .subject(subject.as_str())
                .participants(
                    people(&participants)?
                        .into_iter()
                        .map(GroupParticipantOptions::new)
                        .collect(),
                )
                .finish();
            let created = call!(g.create_group(options));
            Ok(info(&created.metadata))
        }
        GroupOp::Info(group) => {
            let jid = group_jid_of(&group)?;
            let meta = call!(g.get_metadata(&jid));
            Ok(info(&meta))
        }
        GroupOp::Participants {
            group,
            action,
            participants,
        } => {
            let jid = group_jid_of(&group)?;
            let who = people(&participants)?;
            let answers = match action {
                ParticipantAction::Add => call!(g.add_participants(jid, &who)),
                ParticipantAction::Remove => call!(g.remove_participants(jid, &who)),
                ParticipantAction::Promote => call!(g.promote_participants(jid, &who)),
                ParticipantAction::Demote => call!(g.demote_participants(jid, &who)),
            };
            let list: Vec<Value> = answers
                .iter()
                .map(|r| {
                    json!({
                        "jid": r.jid.to_non_ad().to_string(),
                        "ok": r.is_ok(),
                        "error": r.error,
                    })
                })
                .collect();
            Ok(json!({ "participants": list }))
        }
        GroupOp::InviteLink { group, reset } => {
            let jid = group_jid_of(&group)?;
            let link = call!(g.get_invite_link(jid, reset));
            let code = link.rsplit('/').next().unwrap_or_default().to_string();
            Ok(json!({ "link": link, "code": code }))
        }
        GroupOp::Join(code) => {
            let joined = call!(g.join_with_invite_code(&code));
            let pending = matches!(
                joined,
                whatsapp_rust::features::JoinGroupResult::PendingApproval(_)
            );
            Ok(json!({ "jid": joined.group_jid().to_string(), "pendingApproval": pending }))
        }
        GroupOp::Leave(group) => {
            let jid = group_jid_of(&group)?;
            call!(g.leave(jid.clone()));
            Ok(json!({ "jid": jid.to_string(), "left": true }))
        }
        GroupOp::Settings { group, settings } => {
            let jid = group_jid_of(&group)?;
            if let Some(s) = settings.subject {
                let s = GroupSubject::new(s).map_err(|_| InstanceError::InvalidGroupSettings)?;
                call!(g.set_subject(jid.clone(), s));
            }
            if let Some(d) = settings.description {
                let d = match d {
                    Some(text) => Some(
                        GroupDescription::new(text)
                            .map_err(|_| InstanceError::InvalidGroupSettings)?,
                    ),
                    None => None,
                };
                call!(g.set_description(jid.clone(), d, PreviousDescription::Resolve));
            }
            if let Some(on) = settings.announce {
                call!(g.set_announce(jid.clone(), on));
            }
            if let Some(on) = settings.locked {
                call!(g.set_locked(jid.clone(), on));
            }
            let meta = call!(g.get_metadata(&jid));
            Ok(info(&meta))
        }
    }
}

/// A group as the API shows it.
fn info(m: &GroupMetadata) -> Value {
    let participants: Vec<Value> = m
        .participants
        .iter()
        .map(|p| {
            let role = match p.participant_type {
                ParticipantType::SuperAdmin => "superadmin",
                ParticipantType::Admin => "admin",
                ParticipantType::Member => "member",
            };
            json!({
                "jid": p.jid.to_non_ad().to_string(),
                "phone": p.phone_number.as_ref().map(|j| j.user.to_string())
                    .or_else(|| p.jid.is_pn().then(|| p.jid.user.to_string())),
                "lid": p.lid.as_ref().map(|j| j.to_non_ad().to_string())
                    .or_else(|| p.jid.is_lid().then(|| p.jid.to_non_ad().to_string())),
                "role": role,
            })
        })
        .collect();
    json!({
        "jid": m.id.to_string(),
        "name": m.subject,
        "topic": m.description,
        "ownerJid": m.creator.as_ref().map(|c| c.to_string()),
        "createdAt": m.creation_time,
        "announce": m.is_announcement,
        "locked": m.is_locked,
        "participants": participants,
    })
}

/// The `group_update` payload of a group notification, or `None` for changes this
/// API does not report.
pub fn group_event(instance_id: &str, u: &GroupUpdate) -> Option<Value> {
    let jids = |list: &[whatsapp_rust::wacore::stanza::groups::GroupParticipantInfo]| {
        list.iter()
            .map(|p| p.jid.to_non_ad().to_string())
            .collect::<Vec<_>>()
    };
    let mut data = json!({
        "instance_id": instance_id,
        "group": u.group_jid.to_string(),
        "author": u.participant.as_ref().map(|p| p.to_non_ad().to_string()),
        "timestamp": u.timestamp.timestamp(),
    });
    let (action, extra) = match &u.action {
        A::Add { participants, .. } => ("add", json!({"participants": jids(participants)})),
        A::Remove { participants, .. } => ("remove", json!({"participants": jids(participants)})),
        A::Promote { participants } => ("promote", json!({"participants": jids(participants)})),
        A::Demote { participants } => ("demote", json!({"participants": jids(participants)})),
        A::Subject { subject, .. } => ("subject", json!({"subject": subject})),
        A::Description { description, .. } => ("description", json!({"description": description})),
        A::Locked { .. } => ("locked", json!({})),
        A::Unlocked => ("unlocked", json!({})),
        A::Announce => ("announce", json!({})),
        A::NotAnnounce => ("not_announce", json!({})),
        A::Create { .. } => ("create", json!({})),
        _ => return None,
    };
    data["action"] = json!(action);
    if let (Some(d), Value::Object(x)) = (data.as_object_mut(), extra) {
        d.extend(x);
    }
    let at = chrono::DateTime::from_timestamp(u.timestamp.timestamp(), 0)
        .unwrap_or_else(chrono::Utc::now);
    Some(json!({"event": "group_update", "timestamp": rfc3339(at), "data": data}))
}
