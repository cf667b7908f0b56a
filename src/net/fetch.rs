//! Safe fetching of user-given URLs (media by URL; the webhook sender reuses the checks).
//!
//! Rules, each enforced before any byte is sent to the target:
//! - only `http` and `https`;
//! - the host is resolved here, and every resolved address must pass
//!   [`ip_policy::is_allowed`]; the connection is then pinned to the checked address,
//!   so a DNS answer that changes between check and connect (rebinding) cannot
//!   redirect it;
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
use std::time::Duration;

/// Limits for one fetch.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// CIDRs allowed although not public (config `webhook.allowed_targets`).
    pub allowed_targets: Vec<Cidr>,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Deadline for the whole fetch, redirects and body included.
    pub timeout: Duration,
    /// Deadline for each TCP connect.
    pub connect_timeout: Duration,
    /// Redirect hops followed.
    pub max_redirects: usize,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            allowed_targets: Vec::new(),
            max_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 3,
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
    #[error("URL target is not allowed (private, loopback or link-local address)")]
    TargetNotAllowed,
    #[error("URL host could not be resolved")]
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
pub async fn check_url(url: &Url, allow: &[Cidr]) -> Result<Vec<SocketAddr>, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::SchemeNotAllowed);
    }
    let port = url.port_or_known_default().ok_or(FetchError::InvalidUrl)?;
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

/// A client for one checked URL: no proxy, no automatic redirects, the connect
/// timeout, and the URL's host pinned to the addresses [`check_url`] approved.
async fn pinned_client(url: &Url, policy: &FetchPolicy) -> Result<reqwest::Client, FetchError> {
    let addrs = check_url(url, &policy.allowed_targets).await?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(policy.connect_timeout)
        .user_agent(concat!("sudevwa/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(d)) = url.host() {
        // Pin the name to the addresses we checked.
        builder = builder.resolve_to_addrs(d, &addrs);
    }
    builder.build().map_err(|_| FetchError::Transport)
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
        let client = pinned_client(&url, policy).await?;
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
        let client = pinned_client(&url, policy).await?;
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
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
            if bytes.len() as u64 + chunk.len() as u64 > policy.max_bytes {
                return Err(FetchError::TooLarge(policy.max_bytes));
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
        FetchError::Timeout
    } else {
        FetchError::Transport
    }
}
