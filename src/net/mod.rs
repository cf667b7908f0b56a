//! Outbound network safety: which addresses user-given URLs may reach
//! ([`ip_policy`]) and the fetcher that enforces it ([`fetch`]); link previews
//! fetched through it ([`preview`]).

pub mod fetch;
pub mod ip_policy;
pub mod preview;
