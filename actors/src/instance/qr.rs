//! The QR login flow of one instance: a request starts (or joins) a flow, the client
//! shows codes as WhatsApp rotates them, the flow has one deadline however many
//! clients it takes, and a scan pairs the device. A request that starts a flow is
//! answered with the first code when it comes (at most `first_qr_wait` later), so
//! callers need not watch the notices for it.

use super::{InstanceError, InstanceMsg, InstanceState, QrCode};
use crate::events::{rfc3339, LifecycleNotice};
use crate::lifecycle::{self, LifecycleError, LifecycleEvent};
use crate::status::InstanceStatus;
use chrono::Utc;
use ractor::{ActorRef, RpcReplyPort};
use whatsapp_rust::wacore::types::events::{PairSuccess, PairingQrCode};

/// The reply port of a `StartQr` request.
pub(super) type QrReply = RpcReplyPort<Result<Option<QrCode>, InstanceError>>;

impl InstanceState {
    /// `StartQr`: starts a flow, or joins the running one; answers the code on offer,
    /// or waits for the first one.
    pub(super) async fn start_qr(&mut self, myself: &ActorRef<InstanceMsg>, reply: QrReply) {
        match lifecycle::transition(self.status, LifecycleEvent::QrRequested) {
            Ok(_) => self.apply(myself, LifecycleEvent::QrRequested).await,
            // Joining a running flow is not an error for the caller who just wants the code.
            Err(LifecycleError::QrInProgress) => {}
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        }
        match &self.qr {
            Some(code) => drop(reply.send(Ok(Some(code.clone())))),
            None if self.status == InstanceStatus::QrPending => {
                let wait = self.env.timing.first_qr_wait;
                self.qr_waiters
                    .push((tokio::time::Instant::now() + wait, reply));
                myself.send_after(wait, || InstanceMsg::QrWaitOver);
            }
            None => drop(reply.send(Ok(None))),
        }
    }

    /// Answers the waiting `StartQr` requests whose wait is over, without a code.
    pub(super) fn qr_wait_over(&mut self) {
        let now = tokio::time::Instant::now();
        let (over, waiting) = std::mem::take(&mut self.qr_waiters)
            .into_iter()
            .partition(|(until, _)| *until <= now);
        self.qr_waiters = waiting;
        for (_, reply) in over {
            let _ = reply.send(Ok(None));
        }
    }

    /// Answers every waiting `StartQr` request with the code on offer (or none).
    pub(super) fn answer_qr_waiters(&mut self) {
        for (_, reply) in self.qr_waiters.drain(..) {
            let _ = reply.send(Ok(self.qr.clone()));
        }
    }

    /// `CancelQr`: ends the running flow.
    pub(super) async fn cancel_qr(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    ) {
        let r = match lifecycle::transition(self.status, LifecycleEvent::QrCancelled) {
            Ok(_) => {
                self.apply(myself, LifecycleEvent::QrCancelled).await;
                self.notify(LifecycleNotice::QrCancelled {
                    instance_id: self.id.clone(),
                    status: "cancelled",
                    message: "QR login cancelled".into(),
                })
                .await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        };
        let _ = reply.send(r);
    }

    /// Action `StartQrFlow`: a client for the flow, and the flow's deadline.
    pub(super) async fn start_qr_flow(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.qr = None;
        self.start_client(myself).await;
        // The deadline belongs to the flow, not to one client: a client restarted
        // for fresh codes keeps the original window.
        self.qr_flow += 1;
        let flow = self.qr_flow;
        myself.send_after(self.env.timing.qr_timeout, move || {
            InstanceMsg::QrDeadline(flow)
        });
    }

    /// Action `StopQrFlow`.
    pub(super) async fn stop_qr_flow(&mut self) {
        self.qr = None;
        self.end_pairing();
        self.stop_client().await;
    }

    /// The window of flow `flow` ended; if that flow is still waiting, it times out.
    pub(super) async fn qr_deadline(&mut self, myself: &ActorRef<InstanceMsg>, flow: u64) {
        if flow == self.qr_flow && self.status == InstanceStatus::QrPending {
            self.apply(myself, LifecycleEvent::QrTimedOut).await;
            self.notify(LifecycleNotice::QrTimeout {
                instance_id: self.id.clone(),
                status: "timeout",
            })
            .await;
        }
    }

    /// The client offers a (new) code.
    pub(super) async fn qr_code(&mut self, qr: &PairingQrCode) {
        let expires_at = Utc::now() + chrono::Duration::from_std(qr.timeout).unwrap_or_default();
        self.qr = Some(QrCode {
            code: qr.code.clone(),
            expires_at,
        });
        self.answer_qr_waiters();
        self.notify(LifecycleNotice::QrGenerated {
            instance_id: self.id.clone(),
            phone_number: None,
            qr_data: qr.code.clone(),
            expires_at: rfc3339(expires_at),
        })
        .await;
    }

    /// The client ran out of refs before our own timeout: start a new one for fresh
    /// codes while the window is open.
    pub(super) async fn qr_codes_exhausted(&mut self, myself: &ActorRef<InstanceMsg>) {
        if self.status == InstanceStatus::QrPending {
            self.start_client(myself).await;
        }
    }

    /// The phone scanned a code: the device is paired (online follows on `Connected`).
    pub(super) async fn pair_success(&mut self, p: &PairSuccess) {
        self.qr = None;
        self.end_pairing();
        self.identity.phone = Some(p.id.user.to_string());
        self.identity.jid = Some(p.id.to_non_ad().to_string());
        self.identity.lid = Some(p.lid.to_non_ad().to_string());
        self.notify(LifecycleNotice::QrSuccess {
            instance_id: self.id.clone(),
            status: "connected",
        })
        .await;
    }
}
