//! Who people are: the LID ↔ phone-number mapping WhatsApp gives the client (from
//! number checks, incoming messages, group metadata). Incoming messages that name only
//! one of the two get the other filled in from it, and the API can look either up.

use super::{InstanceError, InstanceState};
use crate::events::IncomingMessage;
use ractor::RpcReplyPort;
use whatsapp_rust::{Client, Jid};

/// A person's phone number and LID, as far as the instance knows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LidMapping {
    /// Digits of the phone number.
    pub phone: String,
    /// `<digits>@lid`.
    pub lid: String,
}

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The LID of a phone number (digits); asks WhatsApp when not known yet.
    Phone(String),
    /// The phone number of a LID (`<digits>@lid`); only what the instance was told.
    Lid(String),
}

impl InstanceState {
    /// `LookupLid`.
    pub(super) fn lookup(
        &mut self,
        what: Lookup,
        reply: RpcReplyPort<Result<Option<LidMapping>, InstanceError>>,
    ) {
        self.run_op(reply, None, move |ops, _| async move {
            let client = &ops.client;
            let known = |jid: Jid| async move {
                client
                    .get_lid_pn_entry(&jid)
                    .await
                    .map_err(|_| InstanceError::Storage)
                    .map(|e| {
                        e.map(|e| LidMapping {
                            phone: e.phone_number.to_string(),
                            lid: format!("{}@lid", e.lid),
                        })
                    })
            };
            match what {
                Lookup::Lid(lid) => {
                    let user = lid.strip_suffix("@lid").unwrap_or(&lid).to_string();
                    known(Jid::lid(user)).await
                }
                Lookup::Phone(phone) => {
                    if let Some(m) = known(Jid::pn(phone.as_str())).await? {
                        return Ok(Some(m));
                    }
                    // Not met yet: WhatsApp's number check answers the LID (and the
                    // client keeps the mapping).
                    let checked = ops.check_numbers(std::slice::from_ref(&phone)).await?;
                    Ok(checked.into_iter().find_map(|c| {
                        c.lid.map(|lid| LidMapping {
                            phone: c.phone,
                            lid,
                        })
                    }))
                }
            }
        });
    }
}

/// Fills in `from_phone` / `from_lid` where the message named only one of them and the
/// client knows the other.
pub async fn fill_ids(client: &Client, msgs: &mut [IncomingMessage]) {
    for m in msgs.iter_mut() {
        let jid = match (&m.from_phone, &m.from_lid) {
            (None, Some(lid)) => lid.parse::<Jid>().ok(),
            (Some(phone), None) => Some(Jid::pn(phone.as_str())),
            _ => None,
        };
        let Some(jid) = jid else { continue };
        if let Ok(Some(e)) = client.get_lid_pn_entry(&jid).await {
            if m.from_phone.is_none() {
                m.from_phone = Some(e.phone_number.to_string());
            }
            if m.from_lid.is_none() {
                m.from_lid = Some(format!("{}@lid", e.lid));
            }
        }
    }
}
