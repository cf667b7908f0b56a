//! HTTP surface (warp): filters, handlers and the error envelope.
//!
//! Handlers are thin: parse, authorize, send one message to an actor or make one store
//! call, map the reply. This module owns no per-instance state.

pub mod error;

use serde_json::json;
use warp::{Filter, Rejection, Reply};

/// Version reported by the health check.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET /`: the public health check (no auth), SUDEVWA's shape.
pub fn health() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(|| {
        warp::reply::json(&json!({
            "success": true,
            "message": "WhatsApp API is running",
            "version": VERSION,
        }))
    })
}

/// Every route of the server, with the error envelope for anything that fails.
pub fn routes() -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    health().recover(error::recover)
}
