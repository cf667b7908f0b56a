//! Persistence: the database connection, the application tables, and
//! whatsapp-rust's session storage on sea-orm (`wa`).

pub mod db;
pub mod idempotency;
pub mod instances;
pub mod journal;
pub mod queue;
pub mod settings;
mod sync_sqlite;
pub mod wa;
