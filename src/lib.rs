//! sudevwa: a self-hosted server that runs many WhatsApp accounts ("instances") and
//! exposes them through REST, WebSockets and signed webhooks.
//!
//! Layout:
//! - [`config`]: embedded defaults → file → environment, validated at start.
//! - [`store`]: the database pool and migrations ([`store::db`]) and whatsapp-rust's
//!   session storage on sea-orm ([`store::wa`]), every row keyed by instance.
//! - [`http`]: warp routes and the one JSON error envelope.
//! - [`net`]: SSRF-safe fetching of user-given URLs (media URLs, webhooks).
//! - [`webhook`]: durable, signed webhook delivery (outbox table, worker, signatures).
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).
//! - [`runtime`]: the instance supervisor on this database, start-up recovery with
//!   admission control, shutdown.
//! - [`server`]: start-up, serving, graceful shutdown.
//! - [`cluster`]: several nodes on one PostgreSQL (leases, fencing, forwarding).
//!
//! The instance actors live in the `actors` crate; the migrations in `migration`.

pub mod alloc;
pub mod cluster;
pub mod config;
pub mod http;
pub mod media;
pub mod metrics;
pub mod net;
pub mod runtime;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod server;
pub mod store;
pub mod webhook;
