//! The HTTP side of media sends: the multipart body and the media-URL JSON body,
//! handed to [`crate::media`] with this server's caps, memory budget and fetch policy.

use crate::http::error::ApiError;
use crate::http::Shared;
use crate::media::{self, fetch::UrlMedia, upload::Upload, MediaInput};
use utoipa::ToSchema;

/// A multipart upload and its announced length.
pub struct MediaForm {
    /// The request's `Content-Length` (absent with chunked bodies).
    pub len: Option<u64>,
    pub form: warp::multipart::FormData,
}

/// The media fields of a media-URL send's JSON body (beside its recipient).
#[derive(serde::Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MediaUrl {
    #[schema(value_type = String, required = true, format = "uri", pattern = "^https?://")]
    pub media_url: Option<String>,
    pub caption: Option<String>,
    /// The kind to send it as; blank or absent: from the file.
    #[schema(pattern = r"^ *(?:(?i:image|video|audio|document|file|voice|ptt|sticker) *)?$")]
    pub media_type: Option<String>,
    pub file_name: Option<String>,
}

// Only a description: `read_upload` reads the parts one by one as they stream.
/// The parts of a file upload to a number (parts of other names are refused).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a description of the multipart body, never built
pub(super) struct FileSend {
    #[schema(pattern = "{phone}")]
    to: String,
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    caption: Option<String>,
    #[schema(pattern = r"^ *(?:(?i:image|video|audio|document|file|voice|ptt|sticker) *)?$")]
    media_type: Option<String>,
}

/// The parts of a file upload to a group (parts of other names are refused).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // a description of the multipart body, never built
pub(super) struct GroupFileSend {
    #[schema(pattern = r"^[0-9]+(-[0-9]+)?@g\.us$")]
    group_jid: String,
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    caption: Option<String>,
    #[schema(pattern = r"^ *(?:(?i:image|video|audio|document|file|voice|ptt|sticker) *)?$")]
    media_type: Option<String>,
}

/// Reads an upload under the media caps.
pub(super) async fn read_upload(api: &Shared, form: MediaForm) -> Result<Upload, ApiError> {
    Ok(media::upload::read(form.form, form.len, &api.media_caps(), &api.media).await?)
}

/// The recipient field `target` and the checked file of an upload.
pub(super) fn upload_media(
    api: &Shared,
    up: Upload,
    target: &str,
) -> Result<(String, MediaInput), ApiError> {
    Ok(up.into_input(target, &api.media_caps())?)
}

/// The kind a `mediaType` value names, if any.
pub(super) fn media_type_field(
    v: &Option<String>,
) -> Result<Option<actors::instance::MediaKind>, ApiError> {
    Ok(media::media_type_field(v.as_deref())?)
}

/// Downloads the body's media URL under the SSRF policy and the caps.
pub(super) async fn url_media(api: &Shared, b: &MediaUrl) -> Result<MediaInput, ApiError> {
    let url = super::required(&b.media_url, "mediaUrl")?;
    let m = UrlMedia {
        url: &url,
        kind: media_type_field(&b.media_type)?,
        file_name: b.file_name.clone(),
        caption: b.caption.clone(),
    };
    let policy = |cap, hold: &media::Hold| api.fetch_policy(cap, hold);
    Ok(media::fetch::from_url(m, &api.media_caps(), &api.media, policy).await?)
}
