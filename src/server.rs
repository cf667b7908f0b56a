//! Running the server: open the database, bind, serve until Ctrl-C or SIGTERM.
//!
//! The listening address is printed on stdout (`listening on http://ADDR`) once the
//! socket is bound, so scripts and tests can use port 0 and read the real port.

use crate::config::Config;
use crate::http::auth::Auth;
use crate::http::ratelimit::{GovernorSettings, RateLimiter, SendGovernor};
use crate::http::{Api, DeliveryLog, Shared};
use crate::runtime::{Admission, InstanceRuntime, RuntimeConfig};
use crate::store::db;
use crate::store::instances::Instances;
use crate::store::journal::{Journal, Retention};
use crate::store::settings::{Settings, Tokens};
use crate::store::wa::spool::Spool;
use crate::webhook::{Outbox, WebhookWorker, WorkerSettings};
use actors::instance::{Durability, InstanceTiming, WaOptions};
use actors::RestartPolicy;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error("cannot start the instance supervisor: {0}")]
    Runtime(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What tests and the sandbox change about a server run.
#[derive(Default)]
pub struct Overrides {
    /// How instances reach WhatsApp, instead of what the config says (the mock network).
    pub wa: Option<WaOptions>,
    /// Builds extra routes once the API state exists (the sandbox's `/sandbox/...`).
    pub sandbox: Option<Box<dyn FnOnce(Shared) -> crate::http::SandboxRoutes + Send>>,
    /// Instance timing, instead of the config's (tests shorten deadlines).
    pub timing: Option<InstanceTiming>,
}

/// Serves until `shutdown` resolves, then stops accepting, finishes in-flight requests
/// and closes the database pool.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with(
        config,
        Overrides::default(),
        |local| println!("listening on http://{local}"),
        shutdown,
    )
    .await
}

/// [`run`] with overrides; `on_bound` gets the bound address (port 0 resolved).
pub async fn run_with(
    config: Config,
    overrides: Overrides,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let db = db::open(&config.database).await?;
    let cluster = match config.cluster.enabled() {
        true => Some(
            crate::cluster::Cluster::join(
                db.clone(),
                db::connect(&crate::config::DatabaseConfig {
                    max_connections: 2,
                    ..config.database.clone()
                })
                .await?,
                &config.cluster,
            )
            .await
            .map_err(|e| StartError::Runtime(format!("joining the cluster: {e}")))?,
        ),
        false => None,
    };
    // Everything an instance observes is committed to the journal (message log, event
    // log, webhook outbox) before anything else; the worker delivers the outbox.
    let outbox = match &config.cluster {
        c if c.enabled() => Outbox::for_node(db.clone(), &c.node_id),
        _ => Outbox::new(db.clone()),
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let journal = Journal::new(db.clone(), config.features.enable_webhook, wake.clone());
    journal.clone().spawn_pruner(
        Retention {
            days: config.messages.retention_days,
            max_rows_per_instance: config.messages.retention_max_rows,
            payload_ms: Some(config.webhook.payload_retention.as_millis() as i64),
        },
        idempotency_keys(&config, &db),
        config.messages.prune_interval,
    );
    let worker = config.features.enable_webhook.then(|| {
        WebhookWorker::spawn(
            outbox.clone(),
            WorkerSettings {
                retry_schedule: config.webhook.retry_schedule.clone(),
                timeout: config.webhook.timeout,
                allowed_targets: config.webhook.allowed_targets.clone(),
                allowed_ports: config.webhook.allowed_ports.clone(),
                poll_interval: std::time::Duration::from_secs(1),
                max_in_flight: 16,
                linger: std::time::Duration::from_millis(20),
            },
            wake,
        )
    });
    let runtime = start_runtime(
        &config,
        db.clone(),
        Arc::new(journal.clone()),
        overrides.wa,
        overrides.timing,
        cluster.clone(),
    )
    .await?;
    let mut api = build_api(
        &config,
        db.clone(),
        runtime.clone(),
        Some(Arc::new(outbox)),
        journal,
    )
    .await?;
    if let Some(c) = &cluster {
        if let Some(a) = Arc::get_mut(&mut api) {
            a.cluster = Some(c.clone());
        }
    }
    let listener = TcpListener::bind(config.server.addr())
        .await
        .map_err(|source| StartError::Bind {
            addr: config.server.addr(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.addr(),
        source,
    })?;
    on_bound(local);
    tracing::info!(%local, db = ?config.database.kind, "sudevwa started");

    let extra = overrides.sandbox.map(|build| build(api.clone()));
    crate::http::conn::serve(
        listener,
        crate::http::routes(api, extra),
        crate::http::conn::ConnLimits {
            header_read_timeout: config.server.header_read_timeout,
            max_connections: config.server.max_connections,
            max_connections_per_ip: config.server.max_connections_per_ip,
            shutdown_grace: config.server.shutdown_grace,
        },
        shutdown,
    )
    .await;

    tracing::info!("shutting down");
    if let Some(c) = &cluster {
        // Other nodes take this node's instances on their next round.
        c.shutdown().await;
    }
    // Every actor disconnects its client (flushing its session) before the pool closes.
    runtime.shutdown().await;
    if let Some(w) = worker {
        // Undelivered rows stay pending in the table for the next start.
        w.shutdown(config.server.shutdown_grace).await;
    }
    // A group transaction still open holds a pooled connection: commit it first.
    crate::store::db::settle().await;
    if let Err(e) = db.close().await {
        tracing::warn!(error = %e, "closing the database pool failed");
    }
    Ok(())
}

/// Connect admission from `[whatsapp]`.
/// The incoming-media directory of `[messages] media_dir`, if set.
fn media_dir(config: &Config) -> Option<Arc<actors::instance::MediaDir>> {
    let m = &config.messages;
    (!m.media_dir.as_os_str().is_empty()).then(|| {
        actors::instance::MediaDir::new(
            m.media_dir.clone(),
            m.media_dir_max_file_bytes,
            m.media_dir_max_total_bytes,
        )
    })
}

fn admission(config: &Config) -> Admission {
    Admission {
        max_concurrent: config.whatsapp.connect_concurrency,
        per_second: config.whatsapp.connects_per_second,
        ..Admission::default()
    }
}

/// The state the HTTP handlers share: auth (secrets loaded or generated), rate limiter,
/// the runtime and the webhook delivery log.
pub async fn build_api(
    config: &Config,
    db: sea_orm::DatabaseConnection,
    runtime: InstanceRuntime,
    webhooks: Option<Arc<dyn DeliveryLog>>,
    journal: Journal,
) -> Result<Shared, StartError> {
    let settings = Settings::new(db.clone());
    let auth = Auth::init(&config.auth, &settings, Tokens::new(db.clone()))
        .await
        .map_err(|e| StartError::Runtime(format!("loading auth settings: {e}")))?;
    crate::metrics::install(config.metrics.per_instance_labels);
    Ok(Arc::new(Api {
        db: db.clone(),
        config: Arc::new(config.clone()),
        instances: runtime.instances().clone(),
        runtime,
        auth,
        limiter: RateLimiter::new(
            f64::from(config.limits.rate_limit_per_sec),
            config.limits.rate_limit_burst,
        ),
        auth_failures: RateLimiter::new(
            f64::from(config.limits.auth_failures_per_min) / 60.0,
            config.limits.auth_failure_burst,
        ),
        login_backoff: Default::default(),
        sockets: Default::default(),
        media: crate::media::MediaBudget::new(config.limits.max_media_in_flight_bytes),
        governor: SendGovernor::new(GovernorSettings {
            per_sec: config.limits.send_per_sec,
            burst: config.limits.send_burst,
            per_min: config.limits.send_per_min,
            new_chats_per_hour: config.limits.new_chats_per_hour,
        }),
        webhooks,
        journal,
        idempotency: idempotency_keys(config, &db),
        cluster: None,
    }))
}

/// The idempotency-key table with the configured window.
fn idempotency_keys(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
) -> crate::store::idempotency::IdempotencyKeys {
    crate::store::idempotency::IdempotencyKeys::new(
        db.clone(),
        config.messages.idempotency_window,
        // A pending key older than the longest send (media, 300 s) was abandoned.
        std::time::Duration::from_secs(330),
    )
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Starts the instance runtime and brings stored instances back in the background,
/// under admission control.
async fn start_runtime(
    config: &Config,
    db: sea_orm::DatabaseConnection,
    sink: Arc<dyn actors::events::EventSink>,
    wa: Option<WaOptions>,
    timing: Option<InstanceTiming>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> Result<InstanceRuntime, StartError> {
    let instances = Instances::new(db).with_spool(Some(Arc::new(Spool::new(
        config.messages.spool_dir.clone(),
    ))));
    // (A cluster node leaves the rows alone: other nodes' instances are online.)
    if cluster.is_none() {
        if let Err(e) = instances.mark_restoring().await {
            tracing::warn!(error = %e, "marking stored instances as restoring failed");
        }
    }
    let options = wa;
    let wa = &config.whatsapp;
    let runtime = InstanceRuntime::start(
        instances,
        RuntimeConfig {
            options: options.unwrap_or_else(|| WaOptions {
                socket_url: wa.socket_url.clone(),
                version: wa.client_version,
                push_name: wa.device_name.clone(),
                http: None,
                force_active_receipts: false,
            }),
            timing: timing.unwrap_or(InstanceTiming {
                qr_timeout: wa.qr_timeout,
                presence_interval: wa.presence_interval,
                request_timeout: std::time::Duration::from_secs(30),
                number_cache_ttl: wa.number_cache_ttl,
                number_cache_negative_ttl: wa.number_cache_negative_ttl,
                max_ops: wa.max_ops_per_instance,
                ..InstanceTiming::default()
            }),
            restart: RestartPolicy::default(),
            sink,
            durability: Durability {
                ack_after_commit: config.messages.ack_after_commit,
                park_before_commit: park_fault(),
            },
            listener_capacity: config.websocket.buffer,
            lifecycle_capacity: 1024,
            admission: admission(config),
            media_dir: media_dir(config),
            cluster: cluster.clone(),
        },
    )
    .await
    .map_err(|e| StartError::Runtime(e.to_string()))?;
    if let Some(c) = cluster {
        c.start_relay(config.websocket.buffer)
            .await
            .map_err(|e| StartError::Runtime(format!("reading the event log: {e}")))?;
        // Instances come from leases: this node's own first, then a fair share of
        // the free ones, every round.
        c.attach(runtime.clone());
        c.spawn();
        return Ok(runtime);
    }
    let rt = runtime.clone();
    let limits = admission(config);
    tokio::spawn(async move {
        match rt.restore(limits).await {
            Ok(n) => {
                rt.mark_restored();
                tracing::info!(instances = n, "stored instances restored")
            }
            Err(e) => tracing::error!(error = %e, "restoring instances failed"),
        }
    });
    Ok(runtime)
}

/// Test-only fault (sandbox builds only): `SUDEVWA_FAULT_PARK_INBOUND_COMMIT=1` makes
/// the inbound durability hook park before committing, so a test can SIGKILL the
/// process between delivery and commit. Production builds never read it.
fn park_fault() -> bool {
    cfg!(feature = "sandbox")
        && std::env::var("SUDEVWA_FAULT_PARK_INBOUND_COMMIT").is_ok_and(|v| v == "1")
}
