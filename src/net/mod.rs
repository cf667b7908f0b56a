//! Outbound network safety: which addresses user-given URLs may reach
//! ([`ip_policy`]) and the fetcher that enforces it ([`fetch`]).

pub mod fetch;
pub mod ip_policy;
