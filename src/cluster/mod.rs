//! Several nodes on one PostgreSQL database (`[cluster]`, `docs/cluster.md`).
//!
//! The database is the only coordinator:
//! - **Nodes** (`cluster_nodes`): each node beats a heartbeat every renew interval; a
//!   node is live while its heartbeat is younger than the lease.
//! - **Leases** (`instance_leases`): an instance is owned by at most one node — the
//!   lease's `node_id` while `expires_at` (PostgreSQL's clock, never a node's) lies
//!   ahead. The owner renews all its leases in one statement; a lease is taken over
//!   only once expired, and each take-over increments its fencing `token`.
//! - **The fence**: every connection of a node carries `sudevwa.node`; a trigger on
//!   the WhatsApp session tables and the message/event log refuses a write unless the
//!   writing node holds a live lease on the row's instance (and share-locks that lease
//!   row, so a take-over waits for writes made under the old lease to commit). A
//!   refused write is logged and stops the instance's client at once
//!   ([`crate::store::db::note_fenced`]). Every connect asks the lease first
//!   ([`actors::admission::ConnectPermit`]), and a node that could not renew for a
//!   whole lease (paused, cut off) stops all its clients before anything else, so two
//!   sockets on one device store do not happen.
//! - **Placement and failover**: each node takes free instances (never leased, or
//!   expired) up to its fair share, `ceil(instances / live nodes)`, every interval;
//!   new instances are created on the node owning fewest. A node shutting down stops
//!   its instances (flushing their sessions) and expires their leases at once, so the
//!   others take them on their next round.
//! - **One API**: a request naming an instance owned by another node is forwarded to
//!   that node's internal URL with the cluster secret (see [`forward`]); an instance
//!   nobody owns is adopted by the node the request reached.

pub mod forward;
pub mod relay;

use crate::config::ClusterConfig;
use crate::runtime::InstanceRuntime;
use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// This node's part in the cluster.
pub struct Cluster {
    db: DatabaseConnection,
    /// A small pool of its own for heartbeats, renewals and claims, so they never
    /// queue behind the workload's connections (a late renewal stops every client).
    lease_db: DatabaseConnection,
    node: String,
    url: String,
    secret: String,
    ttl: Duration,
    every: Duration,
    /// Instances this node holds, with the token of its lease.
    owned: Mutex<HashMap<String, i64>>,
    /// When each instance was last taken or let go here: a renewal that started
    /// before that does not undo it (a create or hand-over racing the renewal).
    changed: Mutex<HashMap<String, Instant>>,
    /// When the last successful renewal started (this process's clock).
    renewed: Mutex<Option<Instant>>,
    runtime: OnceLock<InstanceRuntime>,
    /// Set by shutdown and drain: nothing more is taken.
    draining: AtomicBool,
    stop: tokio::sync::Notify,
    /// For forwarded requests.
    pub(crate) http: reqwest::Client,
    /// Other nodes' events, for this node's sockets.
    relay: OnceLock<Arc<relay::Relay>>,
    /// The newest change of any instance row seen (settings changed on other nodes
    /// make this node's cached webhook settings stale).
    rows_changed: Mutex<Option<i64>>,
}

/// Where a request for an instance is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Here (this node holds the instance, or nobody can: not found).
    Local,
    /// On another node, reached at this internal URL.
    Remote { node: String, url: String },
}

/// The fence: a trigger on every table holding an instance's WhatsApp session or its
/// message and event log. Writes of a connection without `sudevwa.node` (single-node
/// servers, `sudevwa migrate`, operators' tools) pass.
const FENCE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION sudevwa_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    node TEXT := current_setting('sudevwa.node', true);
    iid TEXT;
BEGIN
    IF node IS NULL OR node = '' THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    IF TG_OP = 'DELETE' THEN iid := OLD.instance_id; ELSE iid := NEW.instance_id; END IF;
    PERFORM 1 FROM instance_leases
        WHERE instance_id = iid AND node_id = node AND expires_at > now()
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sudevwa fenced: node % holds no lease on instance %', node, iid
            USING ERRCODE = 'P0001';
    END IF;
    RETURN COALESCE(NEW, OLD);
END $$;
"#;

/// Tables whose writes are fenced, besides every `wa_*` table (all operations).
const FENCED_LOG_TABLES: &[&str] = &["messages", "message_status", "events"];

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn ms(d: Duration) -> Value {
    Value::from(d.as_millis() as i64)
}

impl Cluster {
    /// Joins the cluster: installs the fence (once per database) and registers this
    /// node. Takes no instance yet ([`Cluster::spawn`]).
    pub async fn join(
        db: DatabaseConnection,
        lease_db: DatabaseConnection,
        cfg: &ClusterConfig,
    ) -> Result<Arc<Self>, DbErr> {
        let c = Arc::new(Self {
            db,
            lease_db,
            node: cfg.node_id.clone(),
            url: cfg.internal_url.trim_end_matches('/').to_string(),
            secret: cfg.secret.clone().unwrap_or_default(),
            ttl: cfg.lease_ttl,
            every: cfg.renew_interval,
            owned: Mutex::default(),
            changed: Mutex::default(),
            renewed: Mutex::new(None),
            runtime: OnceLock::new(),
            draining: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| DbErr::Custom(format!("building the cluster HTTP client: {e}")))?,
            relay: OnceLock::new(),
            rows_changed: Mutex::new(None),
        });
        c.install_fence().await?;
        c.db.execute_raw(stmt(
            "INSERT INTO cluster_nodes (node_id, internal_url, heartbeat_at, started_at, draining) \
             VALUES ($1, $2, now(), now(), FALSE) \
             ON CONFLICT (node_id) DO UPDATE SET internal_url = EXCLUDED.internal_url, \
             heartbeat_at = now(), started_at = now(), draining = FALSE",
            vec![c.node.clone().into(), c.url.clone().into()],
        ))
        .await?;
        let weak = Arc::downgrade(&c);
        crate::store::db::on_fenced(move |id| {
            if let Some(c) = weak.upgrade() {
                c.lost(id);
            }
        });
        tracing::info!(node = %c.node, url = %c.url, "joined the cluster");
        Ok(c)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The secret forwarded requests carry.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    async fn install_fence(&self) -> Result<(), DbErr> {
        let tables: Vec<String> = self
            .db
            .query_all_raw(stmt(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() \
                 AND (tablename LIKE 'wa\\_%' OR tablename = ANY($1))",
                vec![Value::from(
                    FENCED_LOG_TABLES
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )],
            ))
            .await?
            .into_iter()
            .filter_map(|r| r.try_get_by_index::<String>(0).ok())
            .collect();
        let mut sql = String::from("SELECT pg_advisory_xact_lock(7349001);");
        sql.push_str(FENCE_FUNCTION);
        for t in tables {
            let ops = if t.starts_with("wa_") {
                "INSERT OR UPDATE OR DELETE"
            } else {
                "INSERT OR UPDATE"
            };
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS sudevwa_fence ON \"{t}\"; \
                 CREATE TRIGGER sudevwa_fence BEFORE {ops} ON \"{t}\" \
                 FOR EACH ROW EXECUTE FUNCTION sudevwa_fence();"
            ));
        }
        let txn = sea_orm::TransactionTrait::begin(&self.db).await?;
        txn.execute_unprepared(&sql).await?;
        txn.commit().await
    }

    /// Starts tailing the event log for other nodes' events (`capacity`: each listen
    /// socket's buffer).
    pub async fn start_relay(self: &Arc<Self>, capacity: usize) -> Result<(), DbErr> {
        let r = relay::Relay::start(self.db.clone(), self.clone(), capacity).await?;
        let _ = self.relay.set(r);
        Ok(())
    }

    /// Other nodes' events, once [`Cluster::start_relay`] ran.
    pub fn relay(&self) -> Option<&Arc<relay::Relay>> {
        self.relay.get()
    }

    /// Gives the cluster the runtime it starts and stops instances on.
    pub fn attach(&self, runtime: InstanceRuntime) {
        let _ = self.runtime.set(runtime);
    }

    fn runtime(&self) -> Option<&InstanceRuntime> {
        self.runtime.get()
    }

    /// Whether this node holds `instance_id` now (its lease renewed within the lease).
    pub fn holds(&self, instance_id: &str) -> bool {
        self.fresh() && self.owned_lock().contains_key(instance_id)
    }

    fn hold(&self, instance_id: impl Into<String>, token: i64) {
        let id = instance_id.into();
        self.changed_lock().insert(id.clone(), Instant::now());
        self.owned_lock().insert(id, token);
    }

    fn unhold(&self, instance_id: &str) {
        self.changed_lock()
            .insert(instance_id.to_string(), Instant::now());
        self.owned_lock().remove(instance_id);
    }

    fn changed_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.changed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owned_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last renewal is younger than the lease, less a tenth. The lease
    /// in the database runs from PostgreSQL's `now()` at the renewal, which is after
    /// the renewal started here, so this side's count ends first; the tenth covers
    /// clocks running at slightly different rates.
    fn fresh(&self) -> bool {
        let r = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        r.is_some_and(|t| t.elapsed() < self.ttl - self.ttl / 10)
    }

    /// Instances held now.
    pub fn owned_count(&self) -> usize {
        self.owned_lock().len()
    }

    /// Stops an instance this node no longer holds (lease lost, fenced write).
    fn lost(self: &Arc<Self>, instance_id: &str) {
        if instance_id.is_empty() {
            return;
        }
        self.unhold(instance_id);
        let me = self.clone();
        let id = instance_id.to_string();
        tokio::spawn(async move {
            if let Some(rt) = me.runtime() {
                if rt.actor(&id).is_some() {
                    tracing::warn!(instance_id = %id, node = %me.node, "lease lost: stopping the instance here");
                    let _ = rt.stop(&id).await;
                }
            }
        });
    }

    /// Takes (or re-takes) the lease of `instance_id` if it is free, expired, or ours;
    /// returns its new token.
    async fn claim(&self, instance_id: &str) -> Result<Option<i64>, DbErr> {
        let row = self
            .lease_db
            .query_one_raw(stmt(
                "INSERT INTO instance_leases (instance_id, node_id, expires_at, token) \
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond', 1) \
                 ON CONFLICT (instance_id) DO UPDATE SET node_id = EXCLUDED.node_id, \
                 expires_at = EXCLUDED.expires_at, token = instance_leases.token + 1 \
                 WHERE instance_leases.expires_at < now() \
                 OR instance_leases.node_id = EXCLUDED.node_id \
                 RETURNING token",
                vec![instance_id.into(), self.node.clone().into(), ms(self.ttl)],
            ))
            .await?;
        Ok(row.and_then(|r| r.try_get_by_index::<i64>(0).ok()))
    }

    /// Claims a just-created instance for this node and records it as held.
    pub async fn claim_new(&self, instance_id: &str) -> Result<(), DbErr> {
        match self.claim(instance_id).await? {
            Some(token) => {
                self.hold(instance_id.to_string(), token);
                Ok(())
            }
            None => Err(DbErr::Custom("the new instance is leased elsewhere".into())),
        }
    }

    /// The live owner of `instance_id` (node, internal URL), if any.
    async fn owner(&self, instance_id: &str) -> Result<Option<(String, String)>, DbErr> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT l.node_id, n.internal_url FROM instance_leases l \
                 JOIN cluster_nodes n ON n.node_id = l.node_id \
                 WHERE l.instance_id = $1 AND l.expires_at > now()",
                vec![instance_id.into()],
            ))
            .await?;
        Ok(row.and_then(|r| {
            Some((
                r.try_get_by_index::<String>(0).ok()?,
                r.try_get_by_index::<String>(1).ok()?,
            ))
        }))
    }

    /// Where a request for `instance_id` is served: here if this node holds it or
    /// adopts it now (nobody holds it), else on its owner.
    pub async fn place(self: &Arc<Self>, instance_id: &str) -> Result<Place, DbErr> {
        if self.holds(instance_id) {
            return Ok(Place::Local);
        }
        for _ in 0..2 {
            match self.owner(instance_id).await? {
                Some((node, url)) if node != self.node => {
                    return Ok(Place::Remote { node, url });
                }
                _ => {}
            }
            if self.draining.load(Ordering::SeqCst) || !self.fresh() {
                // A draining or cut-off node adopts nothing; the caller gets 503.
                return Ok(Place::Local);
            }
            let exists = self
                .db
                .query_one_raw(stmt(
                    "SELECT 1 FROM instances WHERE id = $1",
                    vec![instance_id.into()],
                ))
                .await?
                .is_some();
            if !exists {
                return Ok(Place::Local);
            }
            if let Some(token) = self.claim(instance_id).await? {
                self.hold(instance_id.to_string(), token);
                self.taken(instance_id).await;
                self.start_all(vec![instance_id.to_string()]);
                return Ok(Place::Local);
            }
            // Taken by another node meanwhile: look again.
        }
        Ok(Place::Local)
    }

    /// The live node owning the fewest instances (new instances go there).
    pub async fn least_loaded(&self) -> Result<Option<(String, String)>, DbErr> {
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT n.node_id, n.internal_url FROM cluster_nodes n \
                 LEFT JOIN instance_leases l ON l.node_id = n.node_id AND l.expires_at > now() \
                 WHERE n.heartbeat_at > now() - $1 * interval '1 millisecond' AND NOT n.draining \
                 GROUP BY n.node_id, n.internal_url \
                 ORDER BY count(l.instance_id), random() LIMIT 1",
                vec![ms(self.ttl)],
            ))
            .await?;
        Ok(row.and_then(|r| {
            Some((
                r.try_get_by_index::<String>(0).ok()?,
                r.try_get_by_index::<String>(1).ok()?,
            ))
        }))
    }

    /// Starts renewing, taking and handing over (until [`Cluster::shutdown`]).
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let started = Instant::now();
                if let Err(e) = me.round(first).await {
                    tracing::warn!(error = %e, node = %me.node, "cluster round failed");
                }
                if started.elapsed() > me.every {
                    tracing::warn!(node = %me.node, took_ms = started.elapsed().as_millis() as u64, "a cluster round took longer than the renew interval");
                }
                if first {
                    if let Some(rt) = me.runtime() {
                        rt.mark_restored();
                    }
                }
                first = false;
                let next = me.every.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(next) => {}
                    _ = me.stop.notified() => return,
                }
            }
        });
    }

    /// One round: heartbeat, self-fence if cut off too long, renew, take a fair share.
    async fn round(self: &Arc<Self>, first: bool) -> Result<(), DbErr> {
        let started = Instant::now();
        if !first && !self.fresh() && self.owned_count() > 0 {
            // Not renewed for a whole lease (paused, cut off from the database): other
            // nodes may own these instances by now. Stop every client before anything
            // else; the renewal below gives back what is still ours.
            let ids: Vec<String> = self.owned_lock().keys().cloned().collect();
            for id in &ids {
                self.unhold(id);
            }
            tracing::warn!(node = %self.node, instances = ids.len(), "leases not renewed in time: stopping every instance here");
            if let Some(rt) = self.runtime() {
                for id in ids {
                    let _ = rt.stop(&id).await;
                }
            }
        }
        let row = self
            .lease_db
            .query_one_raw(stmt(
                "UPDATE cluster_nodes SET heartbeat_at = now(), internal_url = $2 \
                 WHERE node_id = $1 RETURNING draining",
                vec![self.node.clone().into(), self.url.clone().into()],
            ))
            .await?;
        let draining = match row {
            Some(r) => r.try_get_by_index::<bool>(0).unwrap_or(false),
            None => {
                self.lease_db
                    .execute_raw(stmt(
                        "INSERT INTO cluster_nodes (node_id, internal_url, heartbeat_at, started_at) \
                         VALUES ($1, $2, now(), now()) ON CONFLICT (node_id) DO NOTHING",
                        vec![self.node.clone().into(), self.url.clone().into()],
                    ))
                    .await?;
                false
            }
        };
        self.watch_settings().await?;
        if draining && !self.draining.swap(true, Ordering::SeqCst) {
            tracing::info!(node = %self.node, "draining: handing every instance over");
            self.hand_over_all().await;
            return Ok(());
        }
        self.draining.store(draining, Ordering::SeqCst);
        if draining {
            return Ok(());
        }
        // A lease row is share-locked by every write of its instance in progress (the
        // fence): renewing it would wait for them, and every later write behind the
        // renewal. Rows busy now are skipped — renewed next round, well before they
        // expire — so a renewal never waits. What this node holds is then read as it
        // stands.
        self.lease_db
            .execute_raw(stmt(
                "UPDATE instance_leases SET expires_at = now() + $2 * interval '1 millisecond' \
                 WHERE instance_id IN (SELECT instance_id FROM instance_leases \
                   WHERE node_id = $1 FOR NO KEY UPDATE SKIP LOCKED)",
                vec![self.node.clone().into(), ms(self.ttl)],
            ))
            .await?;
        let renewed: HashMap<String, i64> = self
            .lease_db
            .query_all_raw(stmt(
                "SELECT instance_id, token FROM instance_leases \
                 WHERE node_id = $1 AND expires_at > now()",
                vec![self.node.clone().into()],
            ))
            .await?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.try_get_by_index::<String>(0).ok()?,
                    r.try_get_by_index::<i64>(1).ok()?,
                ))
            })
            .collect();
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        let (lost, gained): (Vec<String>, Vec<String>) = {
            let mut changed = self.changed_lock();
            let mut owned = self.owned_lock();
            // Taken or let go here after this renewal started: the renewal's answer
            // is older than that, so it decides nothing about them.
            let recent = |k: &str| changed.get(k).is_some_and(|t| *t >= started);
            let lost: Vec<String> = owned
                .keys()
                .filter(|k| !renewed.contains_key(*k) && !recent(k))
                .cloned()
                .collect();
            let gained: Vec<String> = renewed
                .keys()
                .filter(|k| !owned.contains_key(*k) && !recent(k))
                .cloned()
                .collect();
            for k in &lost {
                owned.remove(k);
            }
            for (k, token) in renewed {
                if owned.contains_key(&k) || gained.contains(&k) {
                    owned.insert(k, token);
                }
            }
            changed.retain(|_, t| *t >= started);
            (lost, gained)
        };
        for id in lost {
            self.lost(&id);
        }
        // Leases ours in the database but not running here: moved to this node, or
        // kept from a previous run of it.
        self.start_all(gained);
        if first {
            // Give nodes starting at the same moment one round to register, so the
            // first of them does not take everything.
            return Ok(());
        }
        self.take_share().await
    }

    /// Takes free instances up to this node's fair share.
    async fn take_share(self: &Arc<Self>) -> Result<(), DbErr> {
        let row = self
            .lease_db
            .query_one_raw(stmt(
                "SELECT (SELECT count(*) FROM cluster_nodes \
                   WHERE heartbeat_at > now() - $1 * interval '1 millisecond' AND NOT draining), \
                 (SELECT count(*) FROM instances WHERE status <> 'crashed')",
                vec![ms(self.ttl)],
            ))
            .await?;
        let (live, total) = row
            .and_then(|r| {
                Some((
                    r.try_get_by_index::<i64>(0).ok()?,
                    r.try_get_by_index::<i64>(1).ok()?,
                ))
            })
            .unwrap_or((1, 0));
        let share = (total + live.max(1) - 1) / live.max(1);
        let want = share - self.owned_count() as i64;
        if want <= 0 {
            return Ok(());
        }
        let free: Vec<String> = self
            .lease_db
            .query_all_raw(stmt(
                "SELECT i.id FROM instances i LEFT JOIN instance_leases l ON l.instance_id = i.id \
                 WHERE i.status <> 'crashed' AND (l.instance_id IS NULL OR l.expires_at < now()) \
                 ORDER BY random() LIMIT $1",
                vec![Value::from(want)],
            ))
            .await?
            .into_iter()
            .filter_map(|r| r.try_get_by_index::<String>(0).ok())
            .collect();
        let mut taken = Vec::new();
        for id in free {
            if let Some(token) = self.claim(&id).await? {
                self.hold(id.clone(), token);
                self.taken(&id).await;
                taken.push(id);
            }
        }
        if !taken.is_empty() {
            tracing::info!(node = %self.node, taken = taken.len(), "took over free instances");
        }
        self.start_all(taken);
        Ok(())
    }

    /// Webhook settings may change on any node: when any instance row changed since
    /// the last round, this node's cached copies are read again.
    async fn watch_settings(&self) -> Result<(), DbErr> {
        let row = self
            .lease_db
            .query_one_raw(stmt("SELECT MAX(updated_at) FROM instances", vec![]))
            .await?;
        let newest: Option<i64> = row.and_then(|r| r.try_get_by_index(0).ok());
        let mut seen = self.rows_changed.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != newest {
            *seen = newest;
            crate::store::instances::webhook_settings_changed();
        }
        Ok(())
    }

    /// A just-taken instance's stored status says what its previous node last saw
    /// ("online" after a crash): until its actor here connects it, it reconnects.
    async fn taken(&self, instance_id: &str) {
        // Its settings may have changed while another node held it.
        crate::store::instances::webhook_settings_changed();
        if let Err(e) = self
            .db
            .execute_raw(stmt(
                "UPDATE instances SET status = 'reconnecting' WHERE id = $1 AND status = 'online'",
                vec![instance_id.into()],
            ))
            .await
        {
            tracing::warn!(instance_id, error = %e, "marking a taken instance as reconnecting failed");
        }
    }

    /// Starts the actors of held instances (their connects pass the connect gate).
    fn start_all(self: &Arc<Self>, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let Some(rt) = me.runtime() else { return };
            for id in ids {
                if !me.holds(&id) {
                    continue;
                }
                if let Err(e) = rt.ensure_started(&id).await {
                    tracing::warn!(instance_id = %id, error = %e, "starting a taken-over instance failed");
                }
            }
        });
    }

    /// Stops every held instance (sessions flushed) and expires its lease at once, so
    /// other nodes take it on their next round.
    async fn hand_over_all(self: &Arc<Self>) {
        let ids: Vec<String> = self.owned_lock().keys().cloned().collect();
        let handovers = ids.into_iter().map(|id| {
            let me = self.clone();
            async move { me.hand_over(&id).await }
        });
        futures_util::future::join_all(handovers).await;
    }

    /// Stops `instance_id` here cleanly (its client flushes the session) and lets it go.
    async fn stop_here(&self, instance_id: &str) {
        if let Some(rt) = self.runtime() {
            if let Some(a) = rt.actor(instance_id) {
                let _ = ractor::call_t!(a, actors::instance::InstanceMsg::Shutdown, 15_000);
            }
            let _ = rt.stop(instance_id).await;
        }
        self.unhold(instance_id);
    }

    /// Stops `instance_id` here and releases its lease.
    pub async fn hand_over(&self, instance_id: &str) {
        self.stop_here(instance_id).await;
        if let Err(e) = self
            .db
            .execute_raw(stmt(
                "UPDATE instance_leases SET expires_at = now() - interval '1 second' \
                 WHERE instance_id = $1 AND node_id = $2",
                vec![instance_id.into(), self.node.clone().into()],
            ))
            .await
        {
            tracing::warn!(instance_id, error = %e, "releasing a lease failed (it expires by itself)");
        }
    }

    /// Drops the lease of a deleted instance.
    pub async fn forget(&self, instance_id: &str) -> Result<(), DbErr> {
        self.unhold(instance_id);
        self.db
            .execute_raw(stmt(
                "DELETE FROM instance_leases WHERE instance_id = $1",
                vec![instance_id.into()],
            ))
            .await?;
        Ok(())
    }

    /// Moves `instance_id` (held here) to `node`: stops it here and gives the lease
    /// to that node, which starts it on its next round.
    pub async fn move_to(&self, instance_id: &str, node: &str) -> Result<bool, DbErr> {
        let live = self
            .db
            .query_one_raw(stmt(
                "SELECT 1 FROM cluster_nodes WHERE node_id = $1 AND NOT draining \
                 AND heartbeat_at > now() - $2 * interval '1 millisecond'",
                vec![node.into(), ms(self.ttl)],
            ))
            .await?;
        if live.is_none() {
            return Ok(false);
        }
        self.stop_here(instance_id).await;
        let r = self
            .db
            .execute_raw(stmt(
                "UPDATE instance_leases SET node_id = $3, token = token + 1, \
                 expires_at = now() + $4 * interval '1 millisecond' \
                 WHERE instance_id = $1 AND node_id = $2 \
                 AND EXISTS (SELECT 1 FROM cluster_nodes WHERE node_id = $3 AND NOT draining \
                   AND heartbeat_at > now() - $4 * interval '1 millisecond')",
                vec![
                    instance_id.into(),
                    self.node.clone().into(),
                    node.into(),
                    ms(self.ttl),
                ],
            ))
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks `node` draining (it hands over all its instances on its next round).
    pub async fn drain(&self, node: &str, on: bool) -> Result<bool, DbErr> {
        let r = self
            .db
            .execute_raw(stmt(
                "UPDATE cluster_nodes SET draining = $2 WHERE node_id = $1",
                vec![node.into(), on.into()],
            ))
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The nodes, with their liveness and the instances each holds.
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>, DbErr> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT n.node_id, n.internal_url, n.draining, \
                 n.heartbeat_at > now() - $1 * interval '1 millisecond' AS live, \
                 (extract(epoch FROM n.heartbeat_at) * 1000)::BIGINT, \
                 count(l.instance_id) FROM cluster_nodes n \
                 LEFT JOIN instance_leases l ON l.node_id = n.node_id AND l.expires_at > now() \
                 GROUP BY n.node_id ORDER BY n.node_id",
                vec![ms(self.ttl)],
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let hb: i64 = r.try_get_by_index(4).ok()?;
                Some(serde_json::json!({
                    "nodeId": r.try_get_by_index::<String>(0).ok()?,
                    "internalUrl": r.try_get_by_index::<String>(1).ok()?,
                    "draining": r.try_get_by_index::<bool>(2).ok()?,
                    "live": r.try_get_by_index::<bool>(3).ok()?,
                    "heartbeatAt": chrono::DateTime::from_timestamp_millis(hb).map(|t| t.to_rfc3339()),
                    "instances": r.try_get_by_index::<i64>(5).ok()?,
                    "self": r.try_get_by_index::<String>(0).ok()? == self.node,
                }))
            })
            .collect())
    }

    /// Clean shutdown: stop taking, hand every instance over, leave the node table.
    pub async fn shutdown(self: &Arc<Self>) {
        self.draining.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        let _ = self.drain(&self.node, true).await;
        let started = Instant::now();
        let n = self.owned_count();
        self.hand_over_all().await;
        let _ = self
            .db
            .execute_raw(stmt(
                "DELETE FROM cluster_nodes WHERE node_id = $1",
                vec![self.node.clone().into()],
            ))
            .await;
        tracing::info!(node = %self.node, instances = n, took_ms = started.elapsed().as_millis() as u64, "handed every instance over");
    }

    /// Instances held here, for shutdown ordering and tests.
    pub fn held(&self) -> HashSet<String> {
        self.owned_lock().keys().cloned().collect()
    }
}

#[async_trait]
impl actors::admission::ConnectPermit for Cluster {
    async fn may_connect(&self, instance_id: &str) -> Result<(), String> {
        if !self.holds(instance_id) {
            return Err(format!("node {} does not hold this instance", self.node));
        }
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT 1 FROM instance_leases WHERE instance_id = $1 AND node_id = $2 \
                 AND expires_at > now()",
                vec![instance_id.into(), self.node.clone().into()],
            ))
            .await
            .map_err(|e| format!("reading the lease: {e}"))?;
        match row {
            Some(_) => Ok(()),
            None => Err(format!("node {} lost this instance's lease", self.node)),
        }
    }
}
