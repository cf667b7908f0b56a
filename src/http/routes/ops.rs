//! Operations: `GET /metrics` (Prometheus text format, admin auth). The readiness
//! check `GET /ready` sits beside the health check, without auth (see [`crate::http`]).

use super::table::Table;
use super::{admin_only, R};
use crate::http::auth::Principal;
use crate::http::openapi::{doc, Body};
use crate::http::Shared;
use crate::webhook::outbox::{entity as outbox, DEAD, PENDING};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use warp::http::HeaderValue;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at0,
        doc(
            "get",
            "/metrics",
            "operations",
            "Prometheus metrics (text format 0.0.4)",
            true,
            Body::None,
            &["FORBIDDEN"]
        )
        .admin(),
        metrics
    );
    t
}

/// `GET /metrics`: the recorded series plus what the database knows now.
async fn metrics(p: Principal, api: Shared) -> R {
    admin_only(&p)?;
    database_gauges(&api).await?;
    let mut r = warp::reply::Response::new(crate::metrics::render().into());
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

/// Instances by status, the webhook outbox (pending, oldest pending age, dead
/// letters) and the connection pool, read now.
async fn database_gauges(api: &Shared) -> Result<(), crate::http::error::ApiError> {
    use crate::store::instances::entity as instance;
    let db = &api.db;
    let by_status: Vec<(String, i64)> = instance::Entity::find()
        .select_only()
        .column(instance::Column::Status)
        .column_as(Expr::col(instance::Column::Id).count(), "n")
        .group_by(instance::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    for status in actors::InstanceStatus::ALL {
        let word = status.as_str();
        let n = by_status
            .iter()
            .find(|(s, _)| s == word)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("sudevwa_instances", "status" => word).set(n as f64);
    }
    let count = |status: &'static str| {
        outbox::Entity::find()
            .filter(outbox::Column::Status.eq(status))
            .select_only()
            .column_as(Expr::col(outbox::Column::Id).count(), "n")
            .into_tuple::<i64>()
            .one(db)
    };
    let pending = count(PENDING).await?.unwrap_or(0);
    let dead = count(DEAD).await?.unwrap_or(0);
    let oldest: Option<Option<i64>> = outbox::Entity::find()
        .filter(outbox::Column::Status.eq(PENDING))
        .select_only()
        .column_as(Expr::col(outbox::Column::CreatedAt).min(), "m")
        .into_tuple()
        .one(db)
        .await?;
    let age = oldest.flatten().map_or(0.0, |m| {
        Ord::max(chrono::Utc::now().timestamp_millis() - m, 0) as f64 / 1000.0
    });
    metrics::gauge!("sudevwa_outbox_pending").set(pending as f64);
    metrics::gauge!("sudevwa_outbox_dead_lettered").set(dead as f64);
    metrics::gauge!("sudevwa_outbox_oldest_pending_seconds").set(age);
    let (size, idle) = match api.config.database.kind {
        crate::config::DbKind::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        crate::config::DbKind::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    metrics::gauge!("sudevwa_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("sudevwa_db_pool_connections", "state" => "in_use")
        .set(f64::from(size).max(idle as f64) - idle as f64);
    Ok(())
}
