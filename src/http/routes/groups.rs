//! Group listings: `GET /api/groups/:id` and `GET /api/groups/by-number/:phone`.
//! (Group sends run the one send path in `send.rs`.)

use super::{by_number, instance, ready, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::util::ok;
use crate::http::Shared;
use crate::runtime::InstanceHandle;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::path as p;
use warp::reply::Response;

pub(super) fn routes(api: &Shared) -> Vec<BoxedFilter<(Response,)>> {
    vec![
        authed_route!(
            api,
            p!("api" / "groups" / "by-number" / String),
            warp::get(),
            groups_by_number
        ),
        authed_route!(api, p!("api" / "groups" / String), warp::get(), groups),
    ]
}

async fn list(handle: &InstanceHandle) -> Result<Value, ApiError> {
    let groups = handle.list_groups().await?;
    Ok(json!({"total": groups.len(), "groups": groups}))
}

/// `GET /api/groups/:id`.
async fn groups(id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    Ok(ok("Groups", list(&handle).await?))
}

/// `GET /api/groups/by-number/:phone`.
async fn groups_by_number(phone: String, p: Principal, api: Shared) -> R {
    let (row, handle) = by_number(&api, &p, &phone).await?;
    let mut v = list(&handle).await?;
    v["from"] = json!(row.phone);
    v["instanceId"] = json!(row.id);
    Ok(ok("Groups", v))
}
