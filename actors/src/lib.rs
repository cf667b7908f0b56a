//! Actors: the instance supervisor and one actor per WhatsApp number (DESIGN.md).
//!
//! - [`status`]: the lifecycle words used on every surface.
//! - [`backoff`]: jittered exponential backoff and the restart-intensity window.
//! - [`lifecycle`]: the state machine, `(status, event) → (status, actions)`.
//! - [`events`]: lifecycle notices and `incoming_message` payloads.
//! - [`instance`]: `InstanceActor`, the owner of one whatsapp-rust client.
//! - [`durability`]: its inbound durability hook (ack only after commit).
//! - [`supervisor`]: `InstanceSupervisor`, one_for_one restarts, parking as crashed.
//!
//! This crate never depends on warp or the database: storage and event sinks reach it
//! through small traits.

// whatsapp-rust's profile calls nest futures deeper than the default limit allows to lay out.
#![recursion_limit = "256"]

pub mod admission;
pub mod backoff;
pub mod durability;
pub mod events;
pub mod instance;
pub mod lifecycle;
mod receipts;
pub mod status;
pub mod supervisor;

pub use status::InstanceStatus;
pub use supervisor::{
    actor_name, ChildState, InstanceFactory, InstanceSupervisor, RestartPolicy, SupervisorArgs,
    SupervisorError, SupervisorEvent, SupervisorMsg,
};
