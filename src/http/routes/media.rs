//! Media read from a request before it is sent: a multipart upload (streamed, under
//! the media memory cap, refused early by size) or a URL fetched under the SSRF
//! policy; kinds, per-kind size caps, MIME types and file names.

use super::required;
use crate::http::budget::{self, Hold};
use crate::http::error::{capitalize, ApiError};
use crate::http::{util, Shared};
use crate::net::fetch;
use actors::instance::{MediaKind, OutgoingMedia};
use futures_util::TryStreamExt;
use std::collections::HashMap;

/// Media read from a request, before sending.
pub(super) struct MediaInput {
    pub kind: MediaKind,
    pub bytes: Vec<u8>,
    pub mimetype: String,
    pub file_name: String,
    pub caption: Option<String>,
    /// The file's room under the media cap, held until the send ends.
    hold: Hold,
}

fn cap_for(api: &Shared, kind: MediaKind) -> u64 {
    let l = &api.config.limits;
    match kind {
        MediaKind::Image => l.max_image_bytes,
        MediaKind::Video => l.max_video_bytes,
        MediaKind::Audio => l.max_audio_bytes,
        MediaKind::Document => l.max_document_bytes,
    }
}

fn too_large(kind: MediaKind, cap: u64) -> ApiError {
    ApiError::bad_request(
        "FILE_TOO_LARGE",
        format!(
            "{} files may be at most {cap} bytes",
            util::media_kind_word(kind)
        ),
    )
}

pub(super) fn media_type_field(v: &Option<String>) -> Result<Option<MediaKind>, ApiError> {
    match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => util::parse_media_type(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "VALIDATION_ERROR",
                "mediaType must be image, video, audio or document",
            )
        }),
    }
}

/// Fields of a multipart media upload.
pub(super) struct Upload {
    fields: HashMap<String, String>,
    file: Option<(String, Option<String>, Vec<u8>)>,
    hold: Hold,
}

/// A multipart upload and its announced length.
pub struct MediaForm {
    /// The request's `Content-Length` (absent with chunked bodies).
    pub len: Option<u64>,
    pub form: warp::multipart::FormData,
}

pub(super) async fn read_upload(api: &Shared, form: MediaForm) -> Result<Upload, ApiError> {
    let MediaForm {
        len: announced,
        form,
    } = form;
    use bytes::Buf;
    let max_cap = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Audio,
        MediaKind::Document,
    ]
    .into_iter()
    .map(|k| cap_for(api, k))
    .max()
    .unwrap_or(0);
    let mut up = Upload {
        fields: HashMap::new(),
        file: None,
        hold: api.media.hold(),
    };
    let bad = || ApiError::bad_request("INVALID_REQUEST", "Multipart body could not be read");
    // With a length announced, the whole room is taken (or refused) before the first
    // byte is read: concurrent uploads cannot each take a part and starve together.
    let prepaid = announced.unwrap_or(0).min(max_cap);
    if prepaid > 0 && !up.hold.take(prepaid) {
        return Err(budget::busy());
    }
    let mut file_bytes = 0u64;
    let mut form = std::pin::pin!(form);
    while let Some(part) = form.try_next().await.map_err(|_| bad())? {
        let name = part.name().to_string();
        let file_name = part.filename().map(str::to_string);
        let ctype = part.content_type().map(str::to_string);
        // Chunks are kept as they come and joined once (no doubling copies).
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut len = 0usize;
        let mut stream = std::pin::pin!(part.stream());
        let limit = if name == "file" { max_cap } else { MAX_FIELD };
        while let Some(mut chunk) = stream.try_next().await.map_err(|_| bad())? {
            if (len + chunk.remaining()) as u64 > limit {
                return Err(if name == "file" {
                    ApiError::bad_request(
                        "FILE_TOO_LARGE",
                        format!("files may be at most {max_cap} bytes"),
                    )
                } else {
                    ApiError::bad_request("VALIDATION_ERROR", format!("field {name} is too long"))
                });
            }
            if name == "file" {
                let n = chunk.remaining() as u64;
                // Only bytes beyond the prepaid room are taken now.
                let beyond = (file_bytes + n).saturating_sub(prepaid.max(file_bytes));
                if beyond > 0 && !up.hold.take(beyond) {
                    return Err(budget::busy());
                }
                file_bytes += n;
            }
            len += chunk.remaining();
            chunks.push(chunk.copy_to_bytes(chunk.remaining()));
        }
        let mut data = Vec::with_capacity(len);
        for c in chunks.drain(..) {
            data.extend_from_slice(&c);
        }
        if name == "file" {
            up.file = Some((file_name.unwrap_or_else(|| "file".to_string()), ctype, data));
        } else {
            let v = String::from_utf8(data).map_err(|_| {
                ApiError::bad_request("VALIDATION_ERROR", format!("field {name} is not UTF-8"))
            })?;
            up.fields.insert(name, v);
        }
    }
    Ok(up)
}

const MAX_FIELD: u64 = 64 * 1024;

/// Validates an upload: the target field (`to` or `groupJid`) and the file.
pub(super) fn upload_media(
    api: &Shared,
    up: Upload,
    target: &str,
) -> Result<(String, MediaInput), ApiError> {
    let to = required(&up.fields.get(target).cloned(), target)?;
    let (file_name, ctype, bytes) = up.file.ok_or_else(|| {
        ApiError::bad_request(
            "FILE_REQUIRED",
            "A file is required (multipart field \"file\")",
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("FILE_REQUIRED", "The file is empty"));
    }
    let kind = media_type_field(&up.fields.get("mediaType").cloned())?
        .unwrap_or_else(|| util::media_kind_for(&file_name));
    let cap = cap_for(api, kind);
    if bytes.len() as u64 > cap {
        return Err(too_large(kind, cap));
    }
    let mimetype = util::mimetype_for(&file_name, ctype.as_deref());
    let caption = up.fields.get("caption").cloned().filter(|c| !c.is_empty());
    Ok((
        to,
        MediaInput {
            kind,
            bytes,
            mimetype,
            file_name,
            caption,
            hold: up.hold,
        },
    ))
}

/// Downloads a media URL under the SSRF policy and the size cap of its type.
pub(super) async fn url_media(api: &Shared, b: &MediaUrl) -> Result<MediaInput, ApiError> {
    let raw = required(&b.media_url, "mediaUrl")?;
    let url = url::Url::parse(&raw)
        .map_err(|_| ApiError::bad_request("VALIDATION_ERROR", "mediaUrl is not a valid URL"))?;
    let declared = media_type_field(&b.media_type)?;
    let url_name = b
        .file_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| util::file_name_from_url(&url));
    let kind = declared.unwrap_or_else(|| util::media_kind_for(&url_name));
    let cap = cap_for(api, kind);
    let hold = api.media.hold();
    let fetched = fetch::fetch(url.as_str(), &api.fetch_policy(cap, &hold))
        .await
        .map_err(|e| match e {
            fetch::FetchError::TooLarge(_) => too_large(kind, cap),
            fetch::FetchError::Busy => budget::busy(),
            other => ApiError::bad_request(other.api_code(), capitalize(&other.to_string())),
        })?;
    let mimetype = util::mimetype_for(&url_name, fetched.content_type.as_deref());
    Ok(MediaInput {
        kind,
        bytes: fetched.bytes,
        mimetype,
        file_name: url_name,
        caption: b.caption.clone().filter(|c| !c.is_empty()),
        hold,
    })
}

/// The JSON body of a media-URL send.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct MediaUrl {
    pub to: Option<String>,
    pub group_jid: Option<String>,
    pub media_url: Option<String>,
    pub caption: Option<String>,
    pub media_type: Option<String>,
    pub file_name: Option<String>,
}

impl MediaInput {
    /// What the actor sends, and the room this file holds under the media cap (to be
    /// kept until the actor answers: the upload holds the bytes until then).
    pub(super) fn into_outgoing(self) -> (OutgoingMedia, Hold) {
        let media = OutgoingMedia {
            kind: self.kind,
            bytes: self.bytes,
            mimetype: self.mimetype,
            file_name: Some(self.file_name),
            caption: self.caption,
        };
        (media, self.hold)
    }
}
