//! One client connection: handshake, then the stanza loop — pairing, login, the
//! post-login queries, device lists, prekey bundles, message and receipt routing,
//! media connection, logout.
//!
//! Outbound stanzas go through a bounded queue to a writer task that owns the write
//! cipher; the reader owns the read cipher, so the two counters never race.

use crate::noise::{Established, Hello, Responder};
use crate::registry::{ConnHandle, DeviceKeys, Outbound, PendingRegistration};
use crate::Shared;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use warp::ws::{Message as WsMessage, WebSocket};
use whatsapp_rust::wacore::framing::{encode_frame, FrameDecoder};
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::consts::WA_CONN_HEADER;
use whatsapp_rust::wacore_binary::{marshal, util, Node, NodeContent};

pub(crate) const SERVER: &str = "s.whatsapp.net";

/// Unix seconds.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Attribute as a string (JID-valued attributes are rendered).
pub(crate) fn attr(n: &Node, k: &str) -> Option<String> {
    n.attrs.get(k).map(|v| v.to_string())
}

fn bytes_of(n: &Node) -> Vec<u8> {
    match &n.content {
        Some(NodeContent::Bytes(b)) => b.clone(),
        Some(NodeContent::String(s)) => s.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

pub(crate) fn child_bytes(n: &Node, tag: &str) -> Vec<u8> {
    n.get_optional_child(tag).map(bytes_of).unwrap_or_default()
}

/// `<iq type="error"><error code text/></iq>` answering request `id`.
pub(crate) fn iq_error(id: &str, code: &str, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "error")
        .attr("id", id.to_string())
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text.to_string())
            .build()])
        .build()
}

pub(crate) fn iq_result(id: &str, children: Vec<Node>) -> Node {
    let b = NodeBuilder::new("iq")
        .attr("from", SERVER)
        .attr("type", "result")
        .attr("id", id.to_string());
    if children.is_empty() {
        b.build()
    } else {
        b.children(children).build()
    }
}

/// Serves one WebSocket until it closes.
pub async fn serve(shared: Shared, ws: WebSocket) {
    let (mut sink, mut stream) = ws.split();
    let mut decoder = FrameDecoder::new();
    let mut first = true;
    let mut established: Option<Established> = None;

    // --- handshake ---
    let next_frame = |decoder: &mut FrameDecoder| decoder.decode_frame().map(|b| b.to_vec());
    let hello = loop {
        if let Some(f) = next_frame(&mut decoder) {
            break f;
        }
        let Some(Ok(msg)) = stream.next().await else {
            return;
        };
        let mut data = msg.as_bytes();
        if first {
            first = false;
            if data.len() < 4 || data[..4] != WA_CONN_HEADER {
                return;
            }
            data = &data[4..];
        }
        decoder.feed(data);
    };
    let accept_ik = shared.accept_ik.load(Ordering::Relaxed);
    let (next, server_hello) = match Responder::hello(&shared.identity, &hello, accept_ik) {
        Ok(Hello::Continue(r, reply)) => (Some(r), reply),
        Ok(Hello::Done(done, reply)) => {
            shared.ik_accepted.fetch_add(1, Ordering::Relaxed);
            established = Some(*done);
            (None, reply)
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad client hello");
            return;
        }
    };
    let Ok(frame) = encode_frame(&server_hello, None) else {
        return;
    };
    if sink.send(WsMessage::binary(frame)).await.is_err() {
        return;
    }
    if let Some(responder) = next {
        let fallback = responder.fallback;
        let finish = loop {
            if let Some(f) = next_frame(&mut decoder) {
                break f;
            }
            let Some(Ok(msg)) = stream.next().await else {
                return;
            };
            decoder.feed(msg.as_bytes());
        };
        match responder.finish(&finish) {
            Ok(r) => {
                if fallback {
                    shared.xx_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                established = Some(r)
            }
            Err(e) => {
                tracing::debug!(error = %e, "bad client finish");
                return;
            }
        }
    }
    let Some(Established {
        client_static,
        payload,
        transport,
    }) = established
    else {
        return;
    };
    let (mut reader, mut writer) = transport.split();

    // --- writer ---
    let (tx, mut rx) = mpsc::channel::<Outbound>(1024);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let handle = ConnHandle {
        id: conn_id,
        tx: tx.clone(),
    };
    let delay = shared.frame_delay.clone();
    // The injected delay is latency, not a throughput cap: each frame is stamped when
    // it is queued and written `delay` after that, in order, so frames queued together
    // travel together (a delay line, like a long network path).
    let (stamped_tx, mut stamped) = mpsc::channel::<(tokio::time::Instant, Outbound)>(1024);
    tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if stamped_tx
                .send((tokio::time::Instant::now(), out))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let writer_task = tokio::spawn(async move {
        while let Some((queued, out)) = stamped.recv().await {
            match out {
                Outbound::Node(node) => {
                    let ms = delay.load(Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep_until(queued + std::time::Duration::from_millis(ms))
                            .await;
                    }
                    let Ok(plain) = marshal::marshal(&node) else {
                        continue;
                    };
                    let Ok(enc) = writer.encrypt(&plain) else {
                        break;
                    };
                    let Ok(frame) = encode_frame(&enc, None) else {
                        break;
                    };
                    if sink.send(WsMessage::binary(frame)).await.is_err() {
                        break;
                    }
                }
                Outbound::Close => {
                    let _ = sink.close().await;
                    break;
                }
            }
        }
    });

    let mut session = Session {
        shared: shared.clone(),
        conn: handle,
        me: None,
    };
    if let Some(reg) = payload.device_pairing_data.as_option() {
        let keys = DeviceKeys {
            registration_id: reg.e_regid.clone().unwrap_or_default(),
            identity: reg.e_ident.clone().unwrap_or_default(),
            signed_prekey_id: reg.e_skey_id.clone().unwrap_or_default(),
            signed_prekey: reg.e_skey_val.clone().unwrap_or_default(),
            signed_prekey_sig: reg.e_skey_sig.clone().unwrap_or_default(),
            prekeys: Default::default(),
        };
        session
            .offer_pairing(client_static, keys, payload.push_name.clone())
            .await;
    } else if let (Some(user), Some(device)) = (payload.username, payload.device) {
        session.login(user.to_string(), device, client_static).await;
    } else {
        session
            .send(Node::new("failure", Default::default(), None))
            .await;
        session.close().await;
    }

    // --- reader ---
    'outer: while let Some(Ok(msg)) = stream.next().await {
        if msg.is_close() {
            break;
        }
        decoder.feed(msg.as_bytes());
        while let Some(frame) = decoder.decode_frame() {
            let Ok(plain) = reader.decrypt(&frame) else {
                break 'outer;
            };
            let Ok(unpacked) = util::unpack(&plain) else {
                continue;
            };
            let Ok(node) = marshal::unmarshal_ref(&unpacked) else {
                continue;
            };
            let node = node.to_owned();
            session.handle(node).await;
        }
    }
    session.disconnected();
    drop(tx);
    writer_task.abort();
}

/// Per-connection state.
pub(crate) struct Session {
    shared: Shared,
    conn: ConnHandle,
    /// (phone, device id) once logged in.
    me: Option<(String, u32)>,
}

impl Session {
    async fn send(&self, node: Node) {
        let _ = self.conn.tx.send(Outbound::Node(node)).await;
    }

    async fn close(&self) {
        let _ = self.conn.tx.send(Outbound::Close).await;
    }

    fn disconnected(&self) {
        let mut reg = self.shared.registry.lock().expect("registry lock");
        reg.pending.retain(|_, p| p.conn.id != self.conn.id);
        if let Some((phone, dev)) = &self.me {
            if let Some(d) = reg
                .accounts
                .get_mut(phone)
                .and_then(|a| a.devices.get_mut(dev))
            {
                // Unacked messages stay unacked: redelivered at the next login.
                if d.conn.as_ref().is_some_and(|c| c.id == self.conn.id) {
                    d.conn = None;
                    d.draining = false;
                }
            }
        }
    }

    async fn offer_pairing(
        &self,
        noise_pub: [u8; 32],
        keys: DeviceKeys,
        push_name: Option<String>,
    ) {
        let refs: Vec<String> = (0..6)
            .map(|i| {
                format!(
                    "2@mock{}x{}x{:016x}",
                    self.conn.id,
                    i,
                    rand::random::<u64>()
                )
            })
            .collect();
        {
            let mut reg = self.shared.registry.lock().expect("registry lock");
            for r in &refs {
                reg.pending.insert(
                    r.clone(),
                    PendingRegistration {
                        conn: self.conn.clone(),
                        noise_pub,
                        keys: keys.clone(),
                        push_name: push_name.clone(),
                    },
                );
            }
        }
        let children = refs
            .iter()
            .map(|r| NodeBuilder::new("ref").bytes(r.as_bytes().to_vec()).build())
            .collect::<Vec<_>>();
        let iq = NodeBuilder::new("iq")
            .attr("from", SERVER)
            .attr("type", "set")
            .attr("id", format!("pd{}", self.conn.id))
            .attr("xmlns", "md")
            .children([NodeBuilder::new("pair-device").children(children).build()])
            .build();
        self.send(iq).await;
    }

    async fn login(&mut self, phone: String, device: u32, noise_pub: [u8; 32]) {
        let (lid, refused) = {
            let mut reg = self.shared.registry.lock().expect("registry lock");
            let refused = reg
                .faults
                .refuse_logins_until
                .is_some_and(|t| t > std::time::Instant::now());
            match reg.accounts.get_mut(&phone) {
                Some(acc) if !refused => {
                    let lid = acc.lid.clone();
                    match acc.devices.get_mut(&device) {
                        Some(d) if d.noise_pub == noise_pub => {
                            if let Some(old) = d.conn.replace(self.conn.clone()) {
                                if old.id != self.conn.id {
                                    let _ = old.tx.try_send(Outbound::Close);
                                }
                            }
                            // Until the backlog is out, new stanzas queue behind it.
                            d.draining = true;
                            (Some(lid), false)
                        }
                        _ => (None, false),
                    }
                }
                _ => (None, refused),
            }
        };
        if refused {
            let f = NodeBuilder::new("failure").attr("reason", "503").build();
            self.send(f).await;
            self.close().await;
            return;
        }
        let Some(lid) = lid else {
            let f = NodeBuilder::new("failure").attr("reason", "401").build();
            self.send(f).await;
            self.close().await;
            return;
        };
        self.me = Some((phone.clone(), device));
        let success = NodeBuilder::new("success")
            .attr("t", now().to_string())
            .attr("lid", format!("{lid}:{device}@lid"))
            .build();
        self.send(success).await;
        // The backlog: every still-unacked message (first pass only), then the offline
        // queue, drained until it stays empty; the connection goes live under the same
        // lock as the last (empty) drain, so nothing can overtake the backlog.
        let mut count = 0usize;
        let mut first = true;
        loop {
            let (batch, close) = {
                let mut reg = self.shared.registry.lock().expect("registry lock");
                let Some(d) = reg
                    .accounts
                    .get_mut(&phone)
                    .and_then(|a| a.devices.get_mut(&device))
                    .filter(|d| d.conn.as_ref().is_some_and(|c| c.id == self.conn.id))
                else {
                    // Unlinked or taken over by a newer connection meanwhile.
                    return;
                };
                let (batch, close) = take_backlog(d, first);
                if batch.is_empty() || close {
                    d.draining = false;
                }
                (batch, close)
            };
            first = false;
            if batch.is_empty() {
                break;
            }
            count += batch.len();
            for mut n in batch {
                n.attrs.insert("offline", "1");
                self.send(n).await;
            }
            if close {
                // Drop-before-ack fault: the socket goes before the client can ack.
                self.close().await;
                return;
            }
        }
        let ib = NodeBuilder::new("ib")
            .attr("from", SERVER)
            .children([NodeBuilder::new("offline")
                .attr("count", count.to_string())
                .build()])
            .build();
        self.send(ib).await;
    }

    async fn handle(&mut self, node: Node) {
        match node.tag.as_ref() {
            "iq" => self.iq(node).await,
            "message" => {
                crate::routing::route_message(&self.shared, self.me.as_ref(), &self.conn, node)
                    .await
            }
            "receipt" => crate::routing::route_receipt(&self.shared, self.me.as_ref(), node).await,
            "ack" => crate::routing::route_ack(&self.shared, self.me.as_ref(), &node),
            "presence" | "chatstate" => {
                crate::routing::route_presence(&self.shared, self.me.as_ref(), node).await
            }
            _ => {}
        }
    }

    async fn iq(&mut self, node: Node) {
        let id = attr(&node, "id").unwrap_or_default();
        let typ = attr(&node, "type").unwrap_or_default();
        if typ == "result" || typ == "error" {
            if let Some(sign) = node.get_optional_child("pair-device-sign") {
                self.finish_pairing(&id, sign).await;
            }
            return;
        }
        let xmlns = attr(&node, "xmlns").unwrap_or_default();
        let reply = match xmlns.as_str() {
            "encrypt" if node.get_optional_child("registration").is_some() => {
                let share = self.store_prekeys(&node);
                self.send(iq_result(&id, vec![])).await;
                if let (true, Some((phone, dev))) = (share, self.me.clone()) {
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            crate::phone::share_app_state_key(&shared, &phone, dev).await
                        {
                            tracing::warn!(error = %e, "app-state key share failed");
                        }
                    });
                }
                return;
            }
            "encrypt" if node.get_optional_child("digest").is_some() => {
                crate::keys::digest(&self.shared, self.me.as_ref(), &id)
            }
            "encrypt" if node.get_optional_child("rotate").is_some() => {
                self.rotate_skey(&node);
                iq_result(&id, vec![])
            }
            "encrypt"
                if node.get_optional_child("key").is_some()
                    && self
                        .shared
                        .registry
                        .lock()
                        .expect("registry lock")
                        .faults
                        .fail_prekey_fetch =>
            {
                iq_error(&id, "500", "internal-server-error")
            }
            "encrypt" if node.get_optional_child("key").is_some() => {
                let list =
                    crate::routing::prekey_bundles(&self.shared, node.get_optional_child("key"));
                iq_result(&id, vec![list])
            }
            "abt" => {
                // Code 9435 is `lid_one_on_one_migration_enabled`
                // (`wacore/src/iq/abprops.rs`), read by `is_lid_migrated`.
                // Code 10518 is `privacy_token_sending_on_all_1_on_1_messages`: clients
                // attach the privacy tokens they hold to 1:1 messages.
                let prop = |code: &str| {
                    NodeBuilder::new("prop")
                        .attr("config_code", code.to_string())
                        .attr("config_value", "1")
                        .build()
                };
                // 10518: privacy tokens on every 1:1 message; 24941: `cstoken`s from the
                // NCT salt when no token is held.
                let mut props = vec![prop("10518"), prop("24941")];
                if self.shared.lid_migrated.load(Ordering::Relaxed) {
                    props.push(prop("9435"));
                }
                iq_result(
                    &id,
                    vec![NodeBuilder::new("props")
                        .attr("protocol", "1")
                        .children(props)
                        .build()],
                )
            }
            "privacy" if node.get_optional_child("tokens").is_some() => {
                let Some((phone, _)) = self.me.clone() else {
                    self.send(iq_error(&id, "401", "not-authorized")).await;
                    return;
                };
                let (reply, out) = {
                    let mut reg = self.shared.registry.lock().expect("registry lock");
                    crate::privacy::issue(&mut reg, &phone, &node, &id)
                };
                self.send(reply).await;
                for d in out {
                    d.send().await;
                }
                return;
            }
            "privacy" if node.get_optional_child("privacy").is_some() => {
                iq_result(&id, vec![NodeBuilder::new("privacy").build()])
            }
            "usync" => match crate::routing::usync(&self.shared, &node) {
                Some(u) => iq_result(&id, vec![u]),
                None => iq_result(&id, vec![]),
            },
            "w:sync:app:state" => {
                let (reply, out) = {
                    let mut reg = self.shared.registry.lock().expect("registry lock");
                    crate::appstate::sync_iq(&mut reg, self.me.as_ref(), &node, &id)
                };
                self.send(reply).await;
                for d in out {
                    d.send().await;
                }
                return;
            }
            "w:m" => iq_result(&id, vec![self.shared.media_conn_node()]),
            // The profile "about" text (`SetStatusTextSpec`), read back through usync.
            "status" => {
                if let (Some((phone, _)), Some(status)) =
                    (&self.me, node.get_optional_child("status"))
                {
                    let text = crate::routing::text_of(status);
                    let mut reg = self.shared.registry.lock().expect("registry lock");
                    if let Some(acc) = reg.accounts.get_mut(phone) {
                        acc.about = Some((text, now()));
                    }
                }
                iq_result(&id, vec![])
            }
            "blocklist" => crate::privacy::blocklist_iq(&self.shared, self.me.as_ref(), &node, &id),
            "w:mex" => crate::mex::query(&self.shared, self.me.as_ref(), &node, &id),
            "newsletter" => crate::newsletters::iq(&self.shared, self.me.as_ref(), &node, &id),
            "w:profile:picture" => {
                crate::profile::picture_iq(&self.shared, self.me.as_ref(), &node, &id)
            }
            "w:g2" => match (crate::groups::action(&node), self.me.clone()) {
                (Some(action), Some((phone, _))) => {
                    let (reply, out) =
                        crate::groups::manage(&self.shared, &phone, &node, &action, &id);
                    self.send(reply).await;
                    for d in out {
                        d.send().await;
                    }
                    return;
                }
                _ => crate::routing::groups_iq(&self.shared, self.me.as_ref(), &node, &id),
            },
            "md" => {
                if let Some(r) = node.get_optional_child("link_code_companion_reg") {
                    let (reply, then) = crate::paircode::handle(&self.shared, self.conn.id, &id, r);
                    self.send(reply).await;
                    // pair-success strictly after the answer to companion_finish.
                    if let Some(n) = then {
                        self.send(n).await;
                    }
                    return;
                }
                if node.get_optional_child("remove-companion-device").is_some() {
                    if let Some((phone, dev)) = &self.me {
                        let mut reg = self.shared.registry.lock().expect("registry lock");
                        if let Some(acc) = reg.accounts.get_mut(phone) {
                            acc.devices.remove(dev);
                        }
                    }
                }
                iq_result(&id, vec![])
            }
            _ => iq_result(&id, vec![]),
        };
        self.send(reply).await;
    }

    /// Stores an uploaded bundle; true when this is a new companion's first upload
    /// (time for the phone's key share).
    fn store_prekeys(&self, node: &Node) -> bool {
        let Some((phone, dev)) = &self.me else {
            return false;
        };
        let mut keys = DeviceKeys {
            registration_id: child_bytes(node, "registration"),
            identity: child_bytes(node, "identity"),
            ..Default::default()
        };
        if let Some(skey) = node.get_optional_child("skey") {
            keys.signed_prekey_id = child_bytes(skey, "id");
            keys.signed_prekey = child_bytes(skey, "value");
            keys.signed_prekey_sig = child_bytes(skey, "signature");
        }
        if let Some(list) = node.get_optional_child("list") {
            for k in list.get_children_by_tag("key") {
                keys.prekeys
                    .push_back((child_bytes(k, "id"), child_bytes(k, "value")));
            }
        }
        let mut reg = self.shared.registry.lock().expect("registry lock");
        if let Some(d) = reg
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(dev))
        {
            d.keys = keys;
            return std::mem::take(&mut d.awaiting_key_share);
        }
        false
    }

    fn rotate_skey(&self, node: &Node) {
        let Some((phone, dev)) = &self.me else { return };
        let Some(skey) = node
            .get_optional_child("rotate")
            .and_then(|r| r.get_optional_child("skey"))
        else {
            return;
        };
        let mut reg = self.shared.registry.lock().expect("registry lock");
        if let Some(d) = reg
            .accounts
            .get_mut(phone)
            .and_then(|a| a.devices.get_mut(dev))
        {
            d.keys.signed_prekey_id = child_bytes(skey, "id");
            d.keys.signed_prekey = child_bytes(skey, "value");
            d.keys.signed_prekey_sig = child_bytes(skey, "signature");
        }
    }

    async fn finish_pairing(&self, id: &str, sign: &Node) {
        let done = {
            let mut reg = self.shared.registry.lock().expect("registry lock");
            let Some(p) = reg.signing.remove(id) else {
                return;
            };
            let identity = sign.get_optional_child("device-identity").map(bytes_of);
            let acc = reg.account_mut(&p.phone, None);
            acc.devices.insert(
                p.device_id,
                crate::registry::Device::new(
                    p.device_id,
                    p.noise_pub,
                    p.key_index,
                    p.keys,
                    identity,
                ),
            );
            true
        };
        if done {
            let err = NodeBuilder::new("stream:error").attr("code", "515").build();
            self.send(err).await;
            self.close().await;
        }
    }
}

/// The next part of a login's backlog for `d`: on the first pass every unacked
/// message again (counted as redelivered), then what the offline queue holds, its
/// messages becoming unacked (counted as delivered). With the drop-before-ack fault
/// armed the batch ends at its first message and `true` says to close after it.
fn take_backlog(d: &mut crate::registry::Device, first: bool) -> (Vec<Node>, bool) {
    let mut batch = Vec::new();
    if first {
        for u in &d.unacked {
            batch.push(u.node.clone());
            d.redelivered += 1;
            if std::mem::take(&mut d.drop_before_ack) {
                return (batch, true);
            }
        }
    }
    while let Some(n) = d.offline.pop_front() {
        let message = n.tag == "message";
        if message {
            d.delivered += 1;
            d.track(n.clone());
        }
        batch.push(n);
        if message && std::mem::take(&mut d.drop_before_ack) {
            return (batch, true);
        }
    }
    (batch, false)
}
