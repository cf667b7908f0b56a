//! The instance lifecycle as one pure transition function: `(status, event) → (status,
//! actions)`. The instance actor feeds it every connection event and every request and
//! carries out the actions; nothing else decides a status, so REST, /ws, webhooks and the
//! database can never disagree about what a word means.
//!
//! Invariants (checked exhaustively by the tests below):
//! - terminal states ([`InstanceStatus::is_terminal`]) are left only by an operator's
//!   request (`QrRequested`, `Resume`), never by a connection event;
//! - `Online` is entered only by `Connected` (the socket's truth, not a cached flag);
//! - a logout, from the API or from the phone, always wipes the store.

use crate::status::InstanceStatus;

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// An operator asked for a QR code (`GET /api/qr/:id`).
    QrRequested,
    /// The QR window ended without a scan.
    QrTimedOut,
    /// An operator cancelled the QR flow.
    QrCancelled,
    /// The socket logged in (whatsapp-rust `Connected`).
    Connected,
    /// The socket dropped for a reason worth retrying.
    Disconnected,
    /// WhatsApp says the device is logged out (phone-side unlink, 401).
    LoggedOutByPhone,
    /// The operator asked for a logout.
    LogoutRequested,
    /// Another client took over the session.
    StreamReplaced,
    /// WhatsApp banned the number for a while.
    TempBanned,
    /// WhatsApp refused the client version.
    ClientOutdated,
    /// The process is stopping.
    Shutdown,
    /// Start-up of a stored instance: `paired` tells whether it has a session.
    Restored { paired: bool },
}

/// What the actor must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the client in pairing mode and forward QR codes.
    StartQrFlow,
    /// Stop the QR flow's client.
    StopQrFlow,
    /// Connect with the stored session.
    Connect,
    /// A reconnect is due. Nothing for the actor to run: whatsapp-rust's client
    /// reconnects by itself (its own jittered Fibonacci backoff), through the
    /// process's connect gate; the actor only records `reconnecting` and waits for
    /// the client's `Connected` or a terminal event.
    ScheduleReconnect,
    /// Start the presence heartbeat (and send "available" now).
    StartHeartbeat,
    /// Stop the presence heartbeat.
    StopHeartbeat,
    /// Unlink the device on WhatsApp (API logout only; the phone already did it otherwise).
    UnlinkOnWhatsapp,
    /// Delete every whatsapp-rust row of this instance.
    WipeStore,
    /// Disconnect the client and do not reconnect.
    Disconnect,
}

/// Outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new status (may equal the old one).
    pub status: InstanceStatus,
    /// What to do, in order.
    pub actions: Vec<Action>,
}

/// A request that makes no sense in the current state, answered as an error value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// A QR flow is already running.
    #[error("a QR login is already in progress")]
    QrInProgress,
    /// Already online: no QR needed.
    #[error("instance is already connected")]
    AlreadyConnected,
    /// No QR flow to cancel.
    #[error("no QR login in progress")]
    NoQrSession,
}

/// The transition function.
pub fn transition(
    from: InstanceStatus,
    event: LifecycleEvent,
) -> Result<Transition, LifecycleError> {
    use Action::*;
    use InstanceStatus as S;
    use LifecycleEvent as E;
    let t = |status, actions: &[Action]| {
        Ok(Transition {
            status,
            actions: actions.to_vec(),
        })
    };
    match (from, event) {
        // --- operator requests ---
        (S::QrPending, E::QrRequested) => Err(LifecycleError::QrInProgress),
        (S::Online, E::QrRequested) => Err(LifecycleError::AlreadyConnected),
        // A paired instance that is reconnecting does not need a QR either.
        (S::Reconnecting, E::QrRequested) => Err(LifecycleError::AlreadyConnected),
        (_, E::QrRequested) => t(S::QrPending, &[StartQrFlow]),
        (S::QrPending, E::QrCancelled) => t(S::QrRequired, &[StopQrFlow]),
        (_, E::QrCancelled) => Err(LifecycleError::NoQrSession),
        (S::QrPending, E::QrTimedOut) => t(S::QrRequired, &[StopQrFlow]),
        (s, E::QrTimedOut) => t(s, &[]),
        (S::QrPending, E::LogoutRequested) => t(S::LoggedOut, &[StopQrFlow, WipeStore]),
        (S::Online | S::Reconnecting, E::LogoutRequested) => t(
            S::LoggedOut,
            &[StopHeartbeat, UnlinkOnWhatsapp, Disconnect, WipeStore],
        ),
        (s, E::LogoutRequested) => t(
            if s == S::Created {
                S::Created
            } else {
                S::LoggedOut
            },
            &[WipeStore],
        ),

        // --- connection events ---
        (
            S::QrPending | S::Reconnecting | S::Disconnected | S::QrRequired | S::Created,
            E::Connected,
        ) => t(S::Online, &[StartHeartbeat]),
        (S::Online, E::Connected) => t(S::Online, &[]),
        // A late event from a client we already gave up on changes nothing.
        (s, E::Connected) => t(s, &[Disconnect]),
        (S::Online, E::Disconnected) => t(S::Reconnecting, &[StopHeartbeat, ScheduleReconnect]),
        (S::Reconnecting, E::Disconnected) => t(S::Reconnecting, &[ScheduleReconnect]),
        (s, E::Disconnected) => t(s, &[]),
        (s, E::LoggedOutByPhone) if s != S::LoggedOut => {
            t(S::LoggedOut, &[StopHeartbeat, Disconnect, WipeStore])
        }
        (s, E::LoggedOutByPhone) => t(s, &[]),
        (_, E::StreamReplaced) => t(S::StreamReplaced, &[StopHeartbeat, Disconnect]),
        (_, E::TempBanned) => t(S::TempBanned, &[StopHeartbeat, Disconnect]),
        (_, E::ClientOutdated) => t(S::ClientOutdated, &[StopHeartbeat, Disconnect]),

        // --- process ---
        (S::Online | S::Reconnecting, E::Shutdown) => {
            t(S::Disconnected, &[StopHeartbeat, Disconnect])
        }
        (S::QrPending, E::Shutdown) => t(S::QrRequired, &[StopQrFlow]),
        (s, E::Shutdown) => t(s, &[]),
        (s, E::Restored { .. }) if s.is_terminal() => t(s, &[]),
        (_, E::Restored { paired: true }) => t(S::Reconnecting, &[Connect]),
        // Waiting for a QR survives a restart: ready for a new QR (API.md).
        (S::Created, E::Restored { paired: false }) => t(S::Created, &[]),
        (_, E::Restored { paired: false }) => t(S::QrRequired, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus as S;
    use LifecycleEvent as E;

    const EVENTS: [LifecycleEvent; 13] = [
        E::QrRequested,
        E::QrTimedOut,
        E::QrCancelled,
        E::Connected,
        E::Disconnected,
        E::LoggedOutByPhone,
        E::LogoutRequested,
        E::StreamReplaced,
        E::TempBanned,
        E::ClientOutdated,
        E::Shutdown,
        E::Restored { paired: true },
        E::Restored { paired: false },
    ];

    #[test]
    fn terminal_states_are_only_left_by_operator_requests() {
        for from in S::ALL.into_iter().filter(|s| s.is_terminal()) {
            for ev in EVENTS {
                let Ok(tr) = transition(from, ev) else {
                    continue;
                };
                if tr.status != from && !tr.status.is_terminal() {
                    assert!(
                        matches!(ev, E::QrRequested),
                        "{from} left by {ev:?} to {}",
                        tr.status
                    );
                }
                assert!(
                    !tr.actions.contains(&Action::Connect),
                    "{from} + {ev:?} reconnects"
                );
                assert!(
                    !tr.actions.contains(&Action::ScheduleReconnect),
                    "{from} + {ev:?} reconnects"
                );
            }
        }
    }

    #[test]
    fn online_is_entered_only_by_connected() {
        for from in S::ALL {
            for ev in EVENTS {
                if let Ok(tr) = transition(from, ev) {
                    if tr.status == S::Online && from != S::Online {
                        assert_eq!(ev, E::Connected, "{from} → online by {ev:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_logout_wipes_the_store() {
        for from in S::ALL {
            for ev in [E::LogoutRequested, E::LoggedOutByPhone] {
                let tr = transition(from, ev).unwrap();
                if tr.status == S::LoggedOut && from != S::LoggedOut {
                    assert!(tr.actions.contains(&Action::WipeStore), "{from} + {ev:?}");
                }
            }
        }
        assert!(transition(S::Online, E::LogoutRequested)
            .unwrap()
            .actions
            .contains(&Action::UnlinkOnWhatsapp));
    }

    #[test]
    fn qr_flow_rules() {
        assert_eq!(
            transition(S::QrPending, E::QrRequested),
            Err(LifecycleError::QrInProgress)
        );
        assert_eq!(
            transition(S::Online, E::QrRequested),
            Err(LifecycleError::AlreadyConnected)
        );
        assert_eq!(
            transition(S::Online, E::QrCancelled),
            Err(LifecycleError::NoQrSession)
        );
        assert_eq!(
            transition(S::QrPending, E::QrTimedOut).unwrap().status,
            S::QrRequired
        );
        // A logged-out instance is reusable: a new QR.
        assert_eq!(
            transition(S::LoggedOut, E::QrRequested).unwrap().status,
            S::QrPending
        );
        assert_eq!(
            transition(S::QrPending, E::Connected).unwrap().status,
            S::Online
        );
    }

    #[test]
    fn disconnects_reconnect_but_replacement_does_not_fight_back() {
        let tr = transition(S::Online, E::Disconnected).unwrap();
        assert_eq!(tr.status, S::Reconnecting);
        assert!(tr.actions.contains(&Action::ScheduleReconnect));
        let tr = transition(S::Online, E::StreamReplaced).unwrap();
        assert_eq!(tr.status, S::StreamReplaced);
        assert!(!tr.actions.contains(&Action::ScheduleReconnect));
        assert_eq!(
            transition(S::StreamReplaced, E::Disconnected)
                .unwrap()
                .actions,
            vec![]
        );
    }

    #[test]
    fn restart_restores_paired_and_qr_waiting_instances() {
        assert_eq!(
            transition(S::Online, E::Restored { paired: true })
                .unwrap()
                .actions,
            vec![Action::Connect]
        );
        assert_eq!(
            transition(S::QrPending, E::Restored { paired: false })
                .unwrap()
                .status,
            S::QrRequired
        );
        assert_eq!(
            transition(S::LoggedOut, E::Restored { paired: false })
                .unwrap()
                .status,
            S::LoggedOut
        );
    }
}
