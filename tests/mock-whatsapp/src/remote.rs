//! A mock network running in another process (`cargo run -p mock-whatsapp --features insecure-clients`), reached
//! through its admin HTTP API: what a server's sandbox needs to outlive — or be
//! restarted beside — the network its instances are paired on.

use crate::contact::{Contact, Endpoint};
use crate::{AccountInfo, AckStats, MockHttpClient};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use whatsapp_rust::http::{HttpClient, HttpRequest, UreqHttpClient};

/// A handle on a mock network at `http://ADDR` (plain HTTP and WebSocket).
#[derive(Clone)]
pub struct RemoteNetwork {
    addr: SocketAddr,
    http: Arc<UreqHttpClient>,
}

impl RemoteNetwork {
    /// For the mock whose admin base URL is `url` (`http://HOST:PORT`, as the mock
    /// prints it; a trailing `/` is fine). Only plain `http://` to an IP address.
    pub fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("the mock URL must start with http:// (got {url:?})"))?;
        let host = rest.trim_end_matches('/');
        let addr: SocketAddr = host
            .parse()
            .map_err(|_| format!("the mock URL must be http://IP:PORT (got {url:?})"))?;
        Ok(Self {
            addr,
            http: Arc::new(UreqHttpClient::new()),
        })
    }

    /// `ws://ADDR/ws/chat`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The media client for whatsapp-rust (its `https://` media URLs go to the mock).
    pub fn http_client(&self) -> MockHttpClient {
        MockHttpClient::new(self.addr)
    }

    /// Where contacts connect.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            ws_url: self.ws_url(),
            connector: None,
            http: self.http_client(),
        }
    }

    /// One admin call; the mock answers JSON. A non-2xx answer is an error carrying
    /// the mock's `error` text.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base_url());
        let mut req = match method {
            "GET" => HttpRequest::get(url),
            _ => HttpRequest::post(url),
        };
        if let Some(b) = body {
            req = req
                .with_header("content-type", "application/json")
                .with_body(b.to_string().into_bytes());
        }
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| format!("the mock network is unreachable: {e}"))?;
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|_| format!("the mock answered {} without JSON", resp.status_code))?;
        if (200..300).contains(&resp.status_code) {
            Ok(v)
        } else {
            Err(v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the mock answered {}", resp.status_code)))
        }
    }

    /// The mock phone of `phone` scans `qr` (see [`crate::MockNetwork::scan_qr`]).
    pub async fn scan_qr(&self, qr: &str, phone: Option<&str>) -> Result<(), String> {
        self.call(
            "POST",
            "/admin/mock-phone/scan-qr",
            Some(json!({"qr": qr, "phone": phone})),
        )
        .await
        .map(|_| ())
    }

    /// The person types a pairing code on `phone` (see
    /// [`crate::MockNetwork::enter_pairing_code`]).
    pub async fn enter_pairing_code(&self, phone: &str, code: &str) -> Result<(), String> {
        self.call(
            "POST",
            "/admin/mock-phone/enter-code",
            Some(json!({"phone": phone, "code": code})),
        )
        .await
        .map(|_| ())
    }

    /// Every account.
    pub async fn accounts(&self) -> Result<Vec<AccountInfo>, String> {
        let v = self.call("GET", "/admin/accounts", None).await?;
        serde_json::from_value(v).map_err(|e| format!("unexpected accounts answer: {e}"))
    }

    /// The phone removes a companion device.
    pub async fn unlink(&self, phone: &str, device: u32) -> Result<bool, String> {
        let v = self
            .call(
                "POST",
                "/admin/unlink",
                Some(json!({"phone": phone, "device": device})),
            )
            .await?;
        Ok(v["unlinked"].as_bool().unwrap_or(false))
    }

    /// Drops the sockets of `phone`'s devices, or of every device.
    pub async fn drop_connections(&self, phone: Option<&str>) -> Result<usize, String> {
        let v = self
            .call("POST", "/admin/faults/drop", Some(json!({"phone": phone})))
            .await?;
        Ok(v["dropped"].as_u64().unwrap_or(0) as usize)
    }

    /// Sets a per-device fault (`hold-acks`, `drop-before-ack`) for every device of
    /// `phone` (or one). False when there is no such account or device.
    pub async fn device_fault(
        &self,
        name: &str,
        phone: &str,
        device: Option<u32>,
        on: bool,
    ) -> Result<bool, String> {
        let body = json!({"phone": phone, "device": device, "on": on});
        match self
            .call("POST", &format!("/admin/faults/{name}"), Some(body))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.contains("no such account") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One device's ack tracking; `None` for an unknown device.
    pub async fn ack_stats(&self, phone: &str, device: u32) -> Result<Option<AckStats>, String> {
        match self
            .call(
                "GET",
                &format!("/admin/devices/{phone}/{device}/acks"),
                None,
            )
            .await
        {
            Ok(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| format!("unexpected acks answer: {e}")),
            Err(e) if e.contains("no such account") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a group of existing accounts; returns its JID.
    pub async fn create_group(
        &self,
        name: &str,
        creator: &str,
        others: &[&str],
    ) -> Result<String, String> {
        let mut participants = vec![creator.to_string()];
        participants.extend(others.iter().map(|s| s.to_string()));
        let v = self
            .call(
                "POST",
                "/admin/groups",
                Some(json!({"name": name, "creator": creator, "participants": participants})),
            )
            .await?;
        v["jid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "unexpected groups answer".to_string())
    }

    /// A new simulated contact on this network, paired by QR to `phone`, connected.
    pub async fn add_contact(&self, phone: &str, push_name: &str) -> Result<Contact, String> {
        let (mut c, qr) = Contact::start_for_qr(self.endpoint(), phone, push_name).await?;
        self.scan_qr(&qr, Some(phone)).await?;
        c.connected().await?;
        Ok(c)
    }
}
