//! Profiles: a contact's about text and picture; this number's push name, about and
//! picture; blocking people and the block list. Each runs beside the actor like a send.

use super::groups::person;
use super::outbound::Ops;
use super::{InstanceError, InstanceState};
use ractor::RpcReplyPort;
use serde_json::{json, Value};

/// A profile operation. People are phone digits or JIDs (`…@s.whatsapp.net`, `…@lid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileOp {
    /// A contact's about text and picture.
    Contact(String),
    SetPushName(String),
    SetAbout(String),
    /// A JPEG; empty removes the picture.
    SetPicture(Vec<u8>),
    Block(String),
    Unblock(String),
    Blocklist,
}

impl InstanceState {
    /// `Profile`: runs `op`; answers its JSON result.
    pub(super) fn profile(
        &mut self,
        op: ProfileOp,
        reply: RpcReplyPort<Result<Value, InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            // Boxed: the futures of these client calls nest too deep to lay out inline.
            Box::pin(run(&ops, op)).await
        });
    }
}

async fn run(ops: &Ops, op: ProfileOp) -> Result<Value, InstanceError> {
    let c = &ops.client;
    let wait = ops.env.timing.request_timeout;
    macro_rules! call {
        ($fut:expr) => {
            tokio::time::timeout(wait, $fut)
                .await
                .map_err(|_| InstanceError::SendFailed)?
                .map_err(|e| {
                    tracing::warn!(instance_id = %ops.id, error = %e, "profile request failed");
                    InstanceError::SendFailed
                })?
        };
    }
    match op {
        ProfileOp::Contact(who) => {
            let jid = person(&who)?;
            let contacts = c.contacts();
            let info = call!(contacts.get_user_info(std::slice::from_ref(&jid)));
            let about = info.values().next().and_then(|u| u.status.clone());
            let picture = call!(contacts.get_profile_picture(&jid, false));
            Ok(json!({
                "jid": jid.to_string(),
                "about": about,
                "pictureUrl": picture.as_ref().map(|p| p.url.clone()),
                "pictureId": picture.map(|p| p.id),
            }))
        }
        ProfileOp::SetPushName(name) => {
            call!(c.profile().set_push_name(&name));
            Ok(json!({ "pushName": name }))
        }
        ProfileOp::SetAbout(text) => {
            call!(c.profile().set_status_text(&text));
            Ok(json!({ "about": text }))
        }
        ProfileOp::SetPicture(bytes) => {
            let removed = bytes.is_empty();
            let profile = c.profile();
            let r = if removed {
                call!(profile.remove_profile_picture())
            } else {
                call!(profile.set_profile_picture(bytes))
            };
            Ok(json!({ "pictureId": r.id, "removed": removed }))
        }
        ProfileOp::Block(who) => {
            let jid = person(&who)?;
            call!(c.blocking().block(&jid));
            Ok(json!({ "jid": jid.to_string(), "blocked": true }))
        }
        ProfileOp::Unblock(who) => {
            let jid = person(&who)?;
            call!(c.blocking().unblock(&jid));
            Ok(json!({ "jid": jid.to_string(), "blocked": false }))
        }
        ProfileOp::Blocklist => {
            let list = call!(c.blocking().get_blocklist());
            let mut out = Vec::with_capacity(list.len());
            for e in list {
                // Entries name people by LID; add the number when the client knows it.
                let phone = c
                    .get_lid_pn_entry(&e.jid)
                    .await
                    .ok()
                    .flatten()
                    .map(|m| m.phone_number.to_string());
                out.push(json!({"jid": e.jid.to_string(), "phone": phone, "since": e.timestamp}));
            }
            Ok(json!({ "blocked": out }))
        }
    }
}
