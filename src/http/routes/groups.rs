//! Group listings: `GET /api/groups/:id` and `GET /api/groups/by-number/:phone`.
//! (Group sends run the one send path in `send.rs`.)

use super::table::Table;
use super::{by_number, instance, ready, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body, BY_NUMBER, GROUP_ERRORS};
use crate::http::util::ok;
use crate::http::Shared;
use crate::runtime::InstanceHandle;
use serde_json::{json, Value};

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/groups/by-number/{phone}",
            "groups",
            "Groups, by sender number",
            true,
            Body::None,
            BY_NUMBER
        ),
        groups_by_number
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/groups/{id}",
            "groups",
            "Groups the instance is in",
            true,
            Body::None,
            GROUP_ERRORS
        ),
        groups
    );
    t
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
