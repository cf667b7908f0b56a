//! Fetching a file to send from a URL: under the SSRF policy (the fetch policy the
//! caller gives), the cap of its kind and the media memory cap.

use super::{
    file_name_from_url, media_kind_for, mimetype_for, Caps, Hold, MediaBudget, MediaError,
    MediaInput,
};
use crate::net::fetch::{self, FetchError, FetchPolicy};
use actors::instance::MediaKind;

/// What to fetch: the URL and what the request said about the file.
pub struct UrlMedia<'a> {
    pub url: &'a str,
    /// The declared kind (else from the file name).
    pub kind: Option<MediaKind>,
    /// The declared file name (else the URL's last segment).
    pub file_name: Option<String>,
    pub caption: Option<String>,
}

/// Downloads `m`; `policy(cap, hold)` is the fetch policy for a file of at most `cap`
/// bytes counted against `hold`.
pub async fn from_url(
    m: UrlMedia<'_>,
    caps: &Caps,
    budget: &MediaBudget,
    policy: impl Fn(u64, &Hold) -> FetchPolicy,
) -> Result<MediaInput, MediaError> {
    let url = url::Url::parse(m.url)
        .map_err(|_| MediaError::Invalid("mediaUrl is not a valid URL".into()))?;
    let name = m
        .file_name
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| file_name_from_url(&url));
    let kind = m.kind.unwrap_or_else(|| media_kind_for(&name));
    let cap = caps.of(kind);
    let hold = budget.hold();
    let fetched = fetch::fetch(url.as_str(), &policy(cap, &hold))
        .await
        .map_err(|e| match e {
            FetchError::TooLarge(_) => MediaError::too_large(kind, cap),
            FetchError::Busy => MediaError::Busy,
            other => MediaError::Fetch(other),
        })?;
    let mimetype = mimetype_for(&name, fetched.content_type.as_deref());
    Ok(MediaInput {
        kind,
        bytes: fetched.bytes,
        mimetype,
        file_name: name,
        caption: m.caption.filter(|c| !c.is_empty()),
        hold,
    })
}
