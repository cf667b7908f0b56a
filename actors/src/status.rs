//! The instance lifecycle words, one enum used on every surface (REST, /ws, webhooks,
//! database). DESIGN.md's state machine:
//!
//! ```text
//! created → qr_pending → online ⇄ reconnecting → ...
//!                      ↘ logged_out (store wiped; instance reusable with a new QR)
//! terminal, never retried automatically: logged_out, stream_replaced, temp_banned,
//! client_outdated, crashed (restart intensity exceeded)
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an instance is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Created, never asked for a QR code.
    Created,
    /// Needs a QR scan (SUDEVWA's `qr_required`); a QR flow may or may not be running.
    QrRequired,
    /// A QR flow is running: codes are being shown and rotated.
    QrPending,
    /// Logged in with a live, answering socket.
    Online,
    /// Lost the socket; reconnecting with backoff.
    Reconnecting,
    /// Not connected and not trying (e.g. stopped for shutdown).
    Disconnected,
    /// Unlinked (API logout or from the phone). Keys wiped; a new QR can be scanned.
    LoggedOut,
    /// Another client took over this session; we do not fight back.
    StreamReplaced,
    /// WhatsApp banned the number temporarily.
    TempBanned,
    /// WhatsApp refused the client version.
    ClientOutdated,
    /// The actor kept crashing; parked with its reason until resumed.
    Crashed,
}

impl InstanceStatus {
    /// Every status, for documentation and exhaustive tests.
    pub const ALL: [InstanceStatus; 11] = [
        Self::Created,
        Self::QrRequired,
        Self::QrPending,
        Self::Online,
        Self::Reconnecting,
        Self::Disconnected,
        Self::LoggedOut,
        Self::StreamReplaced,
        Self::TempBanned,
        Self::ClientOutdated,
        Self::Crashed,
    ];

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::QrRequired => "qr_required",
            Self::QrPending => "qr_pending",
            Self::Online => "online",
            Self::Reconnecting => "reconnecting",
            Self::Disconnected => "disconnected",
            Self::LoggedOut => "logged_out",
            Self::StreamReplaced => "stream_replaced",
            Self::TempBanned => "temp_banned",
            Self::ClientOutdated => "client_outdated",
            Self::Crashed => "crashed",
        }
    }

    /// Terminal states are never left by an automatic retry, only by an operator's action.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::LoggedOut
                | Self::StreamReplaced
                | Self::TempBanned
                | Self::ClientOutdated
                | Self::Crashed
        )
    }

    /// Whether the socket is up and logged in.
    pub fn is_connected(self) -> bool {
        self == Self::Online
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instance status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for InstanceStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_match_serde() {
        for st in InstanceStatus::ALL {
            assert_eq!(st.as_str().parse::<InstanceStatus>(), Ok(st));
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                serde_json::json!(st.as_str())
            );
        }
        assert!("nope".parse::<InstanceStatus>().is_err());
    }

    #[test]
    fn terminal_states_are_the_documented_ones() {
        let terminal: Vec<_> = InstanceStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                InstanceStatus::LoggedOut,
                InstanceStatus::StreamReplaced,
                InstanceStatus::TempBanned,
                InstanceStatus::ClientOutdated,
                InstanceStatus::Crashed
            ]
        );
    }
}
