//! Login by pairing code, the alternative to the QR: the caller gives the phone
//! number, WhatsApp issues an 8-character code, the person types it on that phone
//! (Linked devices → Link with phone number instead). It rides on the QR flow — the
//! same `qr_pending` state, window, timeout and cancel, and whichever of the QR scan or
//! the code completes first pairs the device.
//!
//! WhatsApp hands out codes only to a device that is registering (showing QR codes),
//! so a request waits for the flow's first QR code before asking. One code is
//! outstanding at a time; asking again for the same number joins it.

use super::{InstanceError, InstanceMsg, InstanceState, PairCode};
use crate::events::{rfc3339, LifecycleNotice};
use crate::lifecycle::{self, LifecycleError, LifecycleEvent};
use chrono::Utc;
use ractor::{ActorRef, RpcReplyPort};
use whatsapp_rust::wacore::pair_code::PairCodeOptions;

/// The reply port of a `StartPairCode` request.
pub(super) type PairReply = RpcReplyPort<Result<PairCode, InstanceError>>;

/// A pairing-code request of the running flow.
#[derive(Default)]
pub(super) struct PairState {
    /// The number the code is (being) asked for.
    phone: Option<String>,
    /// Callers waiting for the code.
    waiters: Vec<PairReply>,
    /// Asked WhatsApp already (the answer comes as `PairCodeDone`).
    asked: bool,
    /// The code on offer.
    code: Option<PairCode>,
}

impl InstanceState {
    /// `StartPairCode`: starts (or joins) the login flow and asks for a code for `phone`.
    pub(super) async fn start_pair_code(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        phone: String,
        reply: PairReply,
    ) {
        match lifecycle::transition(self.status, LifecycleEvent::QrRequested) {
            Ok(_) => self.apply(myself, LifecycleEvent::QrRequested).await,
            Err(LifecycleError::QrInProgress) => {}
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        }
        let p = &mut self.pairing;
        match &p.phone {
            Some(other) if *other != phone => {
                // One code at a time: another number's code is outstanding.
                let _ = reply.send(Err(LifecycleError::QrInProgress.into()));
                return;
            }
            _ => {}
        }
        if let Some(code) = p.code.clone().filter(|c| c.expires_at > Utc::now()) {
            let _ = reply.send(Ok(code));
            return;
        }
        p.phone = Some(phone);
        p.waiters.push(reply);
        if self.qr.is_some() {
            self.ask_pair_code(myself);
        }
    }

    /// Asks WhatsApp for the code once the device is registering (a QR is on offer).
    pub(super) fn ask_pair_code(&mut self, myself: &ActorRef<InstanceMsg>) {
        let (Some(phone), false) = (self.pairing.phone.clone(), self.pairing.asked) else {
            return;
        };
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.pairing.waiters.is_empty() {
            return;
        }
        self.pairing.asked = true;
        let (me, flow, wait) = (
            myself.clone(),
            self.qr_flow,
            self.env.timing.request_timeout,
        );
        let id = self.id.clone();
        self.ops.track(async move {
            let options = PairCodeOptions {
                phone_number: phone.clone(),
                ..Default::default()
            };
            let r = match tokio::time::timeout(wait, client.pair_with_code(options)).await {
                Ok(Ok(code)) => Ok(PairCode {
                    code,
                    phone,
                    // WhatsApp keeps a code valid for about three minutes.
                    expires_at: Utc::now() + chrono::Duration::seconds(180),
                }),
                Ok(Err(e)) => {
                    tracing::warn!(instance_id = %id, error = %e, "pairing-code request refused");
                    Err(InstanceError::PairCodeFailed)
                }
                Err(_) => Err(InstanceError::PairCodeFailed),
            };
            let _ = me.cast(InstanceMsg::PairCodeDone(flow, r));
        });
    }

    /// The answer to the request of flow `flow`.
    pub(super) async fn pair_code_done(&mut self, flow: u64, r: Result<PairCode, InstanceError>) {
        let waiters = std::mem::take(&mut self.pairing.waiters);
        self.pairing.asked = false;
        if flow != self.qr_flow {
            for w in waiters {
                let _ = w.send(Err(InstanceError::PairCodeFailed));
            }
            return;
        }
        match &r {
            Ok(code) => {
                self.pairing.code = Some(code.clone());
                self.notify(LifecycleNotice::PairCode {
                    instance_id: self.id.clone(),
                    phone_number: code.phone.clone(),
                    code: code.code.clone(),
                    expires_at: rfc3339(code.expires_at),
                })
                .await;
            }
            Err(_) => self.pairing = PairState::default(),
        }
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }

    /// WhatsApp ended the outstanding code: refused at its last step (a wrong code was
    /// typed), or expired (`refresh`). A new code may be asked for.
    pub(super) async fn pair_code_ended(&mut self, refresh: bool, why: &str) {
        if self.pairing.phone.is_none() {
            return;
        }
        self.pairing = PairState::default();
        let (code, message) = if refresh {
            (
                "PAIR_CODE_EXPIRED",
                "The pairing code expired; ask for a new one".to_string(),
            )
        } else {
            ("PAIR_CODE_FAILED", format!("Pairing by code failed: {why}"))
        };
        self.error(code, &message).await;
    }

    /// The flow ended (paired, timed out, cancelled): waiting callers get an error.
    pub(super) fn end_pairing(&mut self) {
        for w in std::mem::take(&mut self.pairing.waiters) {
            let _ = w.send(Err(InstanceError::PairCodeFailed));
        }
        self.pairing = PairState::default();
    }
}
