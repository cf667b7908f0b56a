//! Safe fetching of user-given URLs (media by URL; the webhook sender reuses the checks).
//!
//! Rules, each enforced before any byte is sent to the target:
//! - only `http` and `https`, and only the ports of `webhook.allowed_ports` when set;
//! - one pooled client per policy (keep-alive per host, certificates read once); its
//!   DNS resolver checks every resolved address against [`ip_policy::is_allowed`] and
//!   hands the connector only checked answers, so a DNS answer that changes between
//!   check and connect (rebinding) cannot redirect it; IP-literal hosts, which no
//!   resolver sees, are checked before the request;
//! - redirects are followed by hand, at most `max_redirects`, each hop checked again;
//! - no proxy from the environment, a connect timeout, a whole-request deadline, and a
//!   body cap enforced while streaming (a lying or absent Content-Length cannot
//!   exceed it).
//!
//! IP literals in odd notations (decimal `2130706433`, octal `0177.0.0.1`, hex) are
//! normalised by the URL parser (WHATWG rules) before the check, so they are judged
//! as the address they denote.

use super::ip_policy;
use crate::config::Cidr;
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits for one fetch.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// CIDRs allowed although not public (config `webhook.allowed_targets`).
    pub allowed_targets: Vec<Cidr>,
    /// Ports a URL may use (config `webhook.allowed_ports`); empty: any.
    pub allowed_ports: Vec<u16>,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Deadline for the whole fetch, redirects and body included.
    pub timeout: Duration,
    /// Deadline for each TCP connect.
    pub connect_timeout: Duration,
    /// Redirect hops followed.
    pub max_redirects: usize,
    /// Asked before each body chunk is kept (the server's media memory cap); a `false`
    /// ends the fetch with [`FetchError::Busy`].
    pub gate: Option<ByteGate>,
}

/// A check on bytes about to be held (see [`FetchPolicy::gate`]).
#[derive(Clone)]
pub struct ByteGate(pub Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl std::fmt::Debug for ByteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteGate")
    }
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allowed_targets: Vec::new(),
            allowed_ports: Vec::new(),
            max_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 3,
            gate: None,
        }
    }
}

/// A fetched body.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `Content-Type` as sent, if any.
    pub content_type: Option<String>,
    /// The URL the body came from, after redirects.
    pub final_url: Url,
}

/// Why a fetch was refused or failed. `Display` is safe to show to the API client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    #[error("URL is not valid")]
    InvalidUrl,
    #[error("only http and https URLs are allowed")]
    SchemeNotAllowed,
    // One text for both: an answer that told them apart would let a caller map the
    // server's internal DNS names.
    #[error("URL target is not allowed or could not be resolved")]
    TargetNotAllowed,
    #[error("URL target is not allowed or could not be resolved")]
    Dns,
    #[error("too many redirects")]
    TooManyRedirects,
    #[error("file is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("download timed out")]
    Timeout,
    #[error("remote server answered HTTP {0}")]
    Status(u16),
    #[error("download failed")]
    Transport,
    #[error("the server is holding as much media as it may; retry shortly")]
    Busy,
}

impl FetchError {
    /// The API error code (API.md): `FILE_TOO_LARGE` or `DOWNLOAD_FAILED`.
    pub fn api_code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "FILE_TOO_LARGE",
            _ => "DOWNLOAD_FAILED",
        }
    }
}

/// Checks a URL and resolves it to the addresses it may connect to (all allowed).
pub async fn check_url(
    url: &Url,
    allow: &[Cidr],
    ports: &[u16],
) -> Result<Vec<SocketAddr>, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::SchemeNotAllowed);
    }
    let port = url.port_or_known_default().ok_or(FetchError::InvalidUrl)?;
    if !ports.is_empty() && !ports.contains(&port) {
        return Err(FetchError::TargetNotAllowed);
    }
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        Some(url::Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|_| FetchError::Dns)?
            .collect(),
        None => return Err(FetchError::InvalidUrl),
    };
    if addrs.is_empty() {
        return Err(FetchError::Dns);
    }
    // Every answer must pass: otherwise a name resolving to one public and one private
    // address would let the connector pick the private one.
    if addrs.iter().any(|a| !ip_policy::is_allowed(a.ip(), allow)) {
        return Err(FetchError::TargetNotAllowed);
    }
    Ok(addrs)
}

/// Fetches `url` under `policy`.
pub async fn fetch(url: &str, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    let url = Url::parse(url).map_err(|_| FetchError::InvalidUrl)?;
    match tokio::time::timeout(policy.timeout, fetch_inner(url, policy)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout),
    }
}

/// How many HTTP clients this process has built (one per distinct policy; a test and
/// the benchmarks read it to show deliveries reuse one pooled client).
pub fn clients_built() -> usize {
    CLIENTS_BUILT.load(Ordering::Relaxed)
}

static CLIENTS_BUILT: AtomicUsize = AtomicUsize::new(0);

type PoolKey = (Vec<Cidr>, Duration);

/// Pooled clients, one per (allow-list, connect timeout): in practice one per process.
static CLIENTS: Mutex<Vec<(PoolKey, reqwest::Client)>> = Mutex::new(Vec::new());

/// Resolves host names and refuses the whole answer if any address is not allowed, so
/// the connector only ever sees checked addresses (a rebinding answer cannot slip in
/// between a check and the connect: the check is the resolution the connect uses).
struct CheckingResolver {
    allow: Vec<Cidr>,
}

/// The resolver's refusal, found again in the error chain by [`map_reqwest`].
#[derive(Debug, thiserror::Error)]
#[error("resolved address is not an allowed target")]
struct Refused;

/// The resolver's lookup failure, told apart from a refusal.
#[derive(Debug, thiserror::Error)]
#[error("host could not be resolved")]
struct NotResolved;

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| Box::new(NotResolved) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(NotResolved) as _);
            }
            // Every answer must pass: otherwise a name resolving to one public and one
            // private address would let the connector pick the private one.
            if addrs.iter().any(|a| !ip_policy::is_allowed(a.ip(), &allow)) {
                return Err(Box::new(Refused) as _);
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The pooled client for `policy`: no proxy, no automatic redirects, the connect
/// timeout, keep-alive per host, and every host name resolved through
/// [`CheckingResolver`]. Built once per policy; the root certificates are read once.
fn pooled_client(policy: &FetchPolicy) -> Result<reqwest::Client, FetchError> {
    let key = (policy.allowed_targets.clone(), policy.connect_timeout);
    // A poisoned lock only means a panic elsewhere while holding it; the list of
    // built clients is still valid.
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = clients.iter().find(|(k, _)| *k == key) {
        return Ok(c.clone());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(policy.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .dns_resolver(Arc::new(CheckingResolver {
            allow: policy.allowed_targets.clone(),
        }))
        .user_agent(concat!("sudevwa/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| FetchError::Transport)?;
    CLIENTS_BUILT.fetch_add(1, Ordering::Relaxed);
    clients.push((key, client.clone()));
    Ok(client)
}

/// Checks what can be checked before a request: the scheme, and an IP-literal host
/// (which no resolver sees). Host names are checked by [`CheckingResolver`].
fn precheck(url: &Url, allow: &[Cidr], ports: &[u16]) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::SchemeNotAllowed);
    }
    let port = url.port_or_known_default().ok_or(FetchError::InvalidUrl)?;
    if !ports.is_empty() && !ports.contains(&port) {
        return Err(FetchError::TargetNotAllowed);
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(FetchError::InvalidUrl),
    };
    if ip_policy::is_allowed(ip, allow) {
        Ok(())
    } else {
        Err(FetchError::TargetNotAllowed)
    }
}

/// POSTs `body` to `url` under the same rules as [`fetch`] (webhooks). Redirects are
/// not followed (a redirect is an answer like any other non-2xx). Returns the status
/// code; the response body is read and discarded, at most `policy.max_bytes`.
pub async fn post(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    policy: &FetchPolicy,
) -> Result<u16, FetchError> {
    let url = Url::parse(url).map_err(|_| FetchError::InvalidUrl)?;
    let attempt = async {
        precheck(&url, &policy.allowed_targets, &policy.allowed_ports)?;
        let client = pooled_client(policy)?;
        let mut req = client.post(url.clone()).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut resp = req.send().await.map_err(map_reqwest)?;
        let status = resp.status().as_u16();
        let mut read = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
            read += chunk.len() as u64;
            if read > policy.max_bytes {
                break;
            }
        }
        Ok(status)
    };
    match tokio::time::timeout(policy.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout),
    }
}

async fn fetch_inner(mut url: Url, policy: &FetchPolicy) -> Result<Fetched, FetchError> {
    let mut hops = 0;
    loop {
        precheck(&url, &policy.allowed_targets, &policy.allowed_ports)?;
        let client = pooled_client(policy)?;
        let mut resp = client.get(url.clone()).send().await.map_err(map_reqwest)?;
        let status = resp.status();
        if status.is_redirection() {
            hops += 1;
            if hops > policy.max_redirects {
                return Err(FetchError::TooManyRedirects);
            }
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::Status(status.as_u16()))?;
            url = url.join(location).map_err(|_| FetchError::InvalidUrl)?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > policy.max_bytes) {
            return Err(FetchError::TooLarge(policy.max_bytes));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Sized once when the length is announced (no doubling copies on the way).
        let mut bytes = Vec::with_capacity(
            resp.content_length()
                .unwrap_or(0)
                .min(policy.max_bytes)
                .min(64 * 1024 * 1024) as usize,
        );
        // An announced length is asked of the gate once, before the body is read (so
        // concurrent fetches cannot each hold part of the room and all be refused);
        // bytes beyond it, or every chunk of an unannounced body, as they come.
        let prepaid = resp.content_length().unwrap_or(0).min(policy.max_bytes);
        if let Some(gate) = &policy.gate {
            if prepaid > 0 && !(gate.0)(prepaid) {
                return Err(FetchError::Busy);
            }
        }
        while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
            let (have, n) = (bytes.len() as u64, chunk.len() as u64);
            if have + n > policy.max_bytes {
                return Err(FetchError::TooLarge(policy.max_bytes));
            }
            if let Some(gate) = &policy.gate {
                let beyond = (have + n).saturating_sub(prepaid.max(have));
                if beyond > 0 && !(gate.0)(beyond) {
                    return Err(FetchError::Busy);
                }
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok(Fetched {
            bytes,
            content_type,
            final_url: url,
        });
    }
}

fn map_reqwest(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if c.is::<Refused>() {
            return FetchError::TargetNotAllowed;
        }
        if c.is::<NotResolved>() {
            return FetchError::Dns;
        }
        cause = c.source();
    }
    FetchError::Transport
}
