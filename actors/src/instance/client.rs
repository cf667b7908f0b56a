//! The whatsapp-rust client of one instance: building and starting it (a new
//! generation each time), stopping it, unlinking and wiping on logout. What the
//! connection events mean, and who reconnects, is in `reconnect.rs`.

use super::{Identity, InstanceError, InstanceMsg, InstanceState};
use crate::lifecycle::LifecycleEvent;
use crate::status::InstanceStatus;
use async_trait::async_trait;
use ractor::{ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use whatsapp_rust::bot::Bot;
use whatsapp_rust::Client;

/// Hands the client's events to the instance actor on the dispatch path itself, so
/// they reach its mailbox in the order the client dispatched them (closure handlers
/// each run on a task of their own: a delivery receipt could overtake the server ack
/// before it). A cast only queues, so nothing waits here.
struct ToActor {
    me: ActorRef<InstanceMsg>,
    generation: u64,
}

impl whatsapp_rust::wacore::types::events::EventHandler for ToActor {
    fn handle_event(&self, event: Arc<whatsapp_rust::wacore::types::events::Event>) {
        // The actor may be gone (stopping); then the event has no one to inform.
        let _ = self.me.cast(InstanceMsg::Wa(self.generation, event));
    }
}

impl InstanceState {
    /// Starts a fresh client (stopping any previous one); its events carry a new generation.
    pub(super) async fn start_client(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.stop_client().await;
        self.generation += 1;
        let generation = self.generation;
        let me = myself.clone();
        let opts = &self.env.options;
        let mut transport = whatsapp_rust::transport::TokioWebSocketTransportFactory::new();
        if let Some(url) = &opts.socket_url {
            transport = transport.with_url(url.clone());
        }
        let builder = Bot::builder()
            .with_backend_arc(self.env.store.backend(&self.id))
            .with_transport_factory(crate::admission::AdmittedTransport {
                inner: transport,
                gate: self.env.admission.clone(),
                permit: self
                    .env
                    .connect_permit
                    .clone()
                    .map(|p| (p, self.id.clone())),
            })
            .with_push_name(opts.push_name.clone())
            .with_device_props(
                whatsapp_rust::wacore::store::DevicePropsOverride::new()
                    .with_os(self.device_name.clone()),
            )
            .skip_history_sync();
        let builder = if self.env.durability.ack_after_commit {
            builder.with_inbound_durability_hook(crate::durability::CommitHook {
                instance_id: self.id.clone(),
                sink: self.env.sink.clone(),
                listeners: self.listeners.clone(),
                actor: myself.clone(),
                generation,
                park: self.env.durability.park_before_commit,
            })
        } else {
            builder
        };
        let builder = builder.with_event_handler(ToActor { me, generation });
        let builder = match opts.version {
            Some(v) => builder.with_version(v),
            None => builder,
        };
        let built = match &opts.http {
            Some(http) => {
                builder
                    .with_http_client(SharedHttp(http.clone()))
                    .build()
                    .await
            }
            None => builder.build().await,
        };
        match built {
            Ok(bot) => {
                let client = bot.client();
                if opts.force_active_receipts {
                    client.set_force_active_delivery_receipts(true);
                }
                self.client = Some(client);
                self.bot = Some(bot.spawn());
            }
            Err(e) => {
                tracing::error!(instance_id = %self.id, error = %e, "building the WhatsApp client failed");
                self.error("CLIENT_FAILED", "the WhatsApp client could not be started")
                    .await;
            }
        }
    }

    pub(super) async fn stop_client(&mut self) {
        self.client = None;
        if let Some(bot) = self.bot.take() {
            // Bounded: a wedged client must not wedge the actor.
            let client = bot.client();
            if tokio::time::timeout(Duration::from_secs(10), bot.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(instance_id = %self.id, "client did not stop in time");
                client.disconnect().await;
            }
        }
    }

    /// `POST /api/logout`: unlink on WhatsApp, wipe the keys; the instance stays.
    pub(super) async fn logout(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        reply: RpcReplyPort<Result<(), InstanceError>>,
    ) {
        self.apply(myself, LifecycleEvent::LogoutRequested).await;
        let _ = reply.send(Ok(()));
    }

    /// Process shutdown: stop the client cleanly, then answer.
    pub(super) async fn shutdown(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        reply: RpcReplyPort<()>,
    ) {
        self.apply(myself, LifecycleEvent::Shutdown).await;
        self.stop_client().await;
        let _ = reply.send(());
    }

    /// Tells WhatsApp to remove this companion device (bounded by the request timeout).
    pub(super) async fn unlink(&mut self) {
        if let Some(client) = &self.client {
            // logout() sends remove-companion-device and disconnects.
            let _ = tokio::time::timeout(self.env.timing.request_timeout, client.logout()).await;
        }
    }

    /// Stops the client and deletes every key of this instance.
    pub(super) async fn wipe_session(&mut self) {
        self.stop_client().await;
        self.qr = None;
        // The push name stays until a new pairing brings another (as before).
        self.identity = Identity {
            push_name: self.identity.push_name.take(),
            ..Default::default()
        };
        if let Err(e) = self.env.store.wipe_session(&self.id).await {
            tracing::error!(instance_id = %self.id, error = %e, "wiping the session failed");
            self.error("STORAGE_FAILED", "wiping the session failed")
                .await;
        }
    }

    pub(super) fn logged_in_client(&self) -> Result<Arc<Client>, InstanceError> {
        let client = self.client.clone().ok_or(InstanceError::NotConnected)?;
        if !client.is_connected() {
            return Err(InstanceError::NotConnected);
        }
        if !client.is_logged_in() || self.status != InstanceStatus::Online {
            return Err(InstanceError::NotLoggedIn);
        }
        Ok(client)
    }
}

/// Lets a shared `Arc<dyn HttpClient>` be handed to the bot builder, which wants a value.
struct SharedHttp(Arc<dyn whatsapp_rust::http::HttpClient>);

#[async_trait]
impl whatsapp_rust::http::HttpClient for SharedHttp {
    async fn execute(
        &self,
        request: whatsapp_rust::http::HttpRequest,
    ) -> anyhow::Result<whatsapp_rust::http::HttpResponse> {
        self.0.execute(request).await
    }
}
