//! The cluster (`[cluster]`, `docs/cluster.md`): its nodes, draining a node, moving
//! an instance to another node. Admin only; a single node answers `CLUSTER_DISABLED`.

use super::table::Table;
use super::{admin_only, instance, json, parse, required, R};
use crate::cluster::Cluster;
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body};
use crate::http::schema;
use crate::http::util::ok;
use crate::http::Shared;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use utoipa::ToSchema;
use warp::http::StatusCode;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at0,
        doc(
            "get",
            "/api/cluster/nodes",
            "cluster",
            "The cluster's nodes: live or not, draining, instances held (admin)",
            true,
            Body::None,
            &["FORBIDDEN", "CLUSTER_DISABLED"]
        )
        .admin(),
        nodes
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/cluster/nodes/{node}/drain",
            "cluster",
            "Drain a node (it hands every instance over to the others) or undo it with {\"draining\": false} (admin)",
            true,
            Body::OptionalJson(schema::of::<DrainBody>()),
            &["FORBIDDEN", "CLUSTER_DISABLED", "VALIDATION_ERROR", "NODE_NOT_FOUND"]
        )
        .admin(),
        drain,
        json()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/move",
            "cluster",
            "Move an instance to another live node (admin); it reconnects there without a QR",
            true,
            Body::Json(schema::of::<MoveBody>()),
            &[
                "SESSION_NOT_FOUND",
                "FORBIDDEN",
                "CLUSTER_DISABLED",
                "VALIDATION_ERROR",
                "NODE_NOT_FOUND"
            ]
        )
        .admin(),
        move_instance,
        json()
    );
    t
}

fn cluster(api: &Shared) -> Result<Arc<Cluster>, ApiError> {
    api.cluster.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "CLUSTER_DISABLED",
            "This server is not a cluster node ([cluster] node_id is empty)",
        )
    })
}

fn node_not_found(node: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NODE_NOT_FOUND",
        format!("No live node {node:?} to take it"),
    )
}

/// `GET /api/cluster/nodes`.
async fn nodes(p: Principal, api: Shared) -> R {
    admin_only(&p)?;
    let c = cluster(&api)?;
    let nodes = c.nodes().await?;
    Ok(ok(
        "Cluster nodes",
        json!({"nodeId": c.node_id(), "nodes": nodes}),
    ))
}

/// `{"draining": true}` (the default) or `false`.
#[derive(Deserialize, Default, ToSchema)]
struct DrainBody {
    draining: Option<bool>,
}

/// `POST /api/cluster/nodes/:node/drain`.
async fn drain(node: String, p: Principal, body: Bytes, api: Shared) -> R {
    admin_only(&p)?;
    let c = cluster(&api)?;
    let on = parse::<DrainBody>(&body)?.draining.unwrap_or(true);
    if !c.drain(&node, on).await? {
        return Err(node_not_found(&node));
    }
    Ok(ok(
        if on {
            "Node draining"
        } else {
            "Node taking instances again"
        },
        json!({"nodeId": node, "draining": on}),
    ))
}

/// `{"node": "<node id>"}`.
#[derive(Deserialize, Default, ToSchema)]
struct MoveBody {
    #[schema(min_length = 1, max_length = 64)]
    node: Option<String>,
}

/// `POST /api/instances/:id/move` (served by the instance's owner: the request is
/// forwarded there).
async fn move_instance(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    admin_only(&p)?;
    let c = cluster(&api)?;
    instance(&api, &p, &id).await?;
    let node = required(&parse::<MoveBody>(&body)?.node, "node")?;
    if node == c.node_id() {
        return Ok(ok(
            "The instance is already on this node",
            json!({"instanceId": id, "nodeId": node}),
        ));
    }
    if !c.holds(&id) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The instance is changing nodes; try again shortly",
        ));
    }
    if !c.move_to(&id, &node).await? {
        return Err(node_not_found(&node));
    }
    Ok(ok(
        "Instance moved; it reconnects on its new node",
        json!({"instanceId": id, "nodeId": node}),
    ))
}
