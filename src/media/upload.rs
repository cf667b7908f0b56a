//! Reading an uploaded file (multipart/form-data) under the media memory cap: with a
//! `Content-Length`, the whole room is taken (or refused) before the first byte is
//! read; chunks are kept as they come and joined once; a file over the largest cap or
//! a field over 64 KiB is refused while it streams.

use super::MediaInput;
use super::{media_kind_for, media_type_field, mimetype_for, Caps, Hold, MediaBudget, MediaError};
use bytes::Buf;
use futures_util::TryStreamExt;
use std::collections::HashMap;

/// Largest non-file field.
const MAX_FIELD: u64 = 64 * 1024;

/// A multipart upload read: its text fields and its file part.
pub struct Upload {
    fields: HashMap<String, String>,
    /// File name, declared content type, bytes.
    file: Option<(String, Option<String>, Vec<u8>)>,
    hold: Hold,
}

/// Reads `form` (`announced`: its `Content-Length`, if given).
pub async fn read(
    form: warp::multipart::FormData,
    announced: Option<u64>,
    caps: &Caps,
    budget: &MediaBudget,
) -> Result<Upload, MediaError> {
    let max_cap = caps.largest();
    let mut up = Upload {
        fields: HashMap::new(),
        file: None,
        hold: budget.hold(),
    };
    let prepaid = announced.unwrap_or(0).min(max_cap);
    if prepaid > 0 && !up.hold.take(prepaid) {
        return Err(MediaError::Busy);
    }
    let mut file_bytes = 0u64;
    let mut form = std::pin::pin!(form);
    while let Some(part) = form.try_next().await.map_err(|_| MediaError::Unreadable)? {
        let name = part.name().to_string();
        let file_name = part.filename().map(str::to_string);
        let ctype = part.content_type().map(str::to_string);
        let mut chunks: Vec<bytes::Bytes> = Vec::new();
        let mut len = 0usize;
        let mut stream = std::pin::pin!(part.stream());
        let limit = if name == "file" { max_cap } else { MAX_FIELD };
        while let Some(mut chunk) = stream
            .try_next()
            .await
            .map_err(|_| MediaError::Unreadable)?
        {
            if (len + chunk.remaining()) as u64 > limit {
                return Err(if name == "file" {
                    MediaError::TooLarge {
                        what: "files".into(),
                        cap: max_cap,
                    }
                } else {
                    MediaError::Invalid(format!("field {name} is too long"))
                });
            }
            if name == "file" {
                let n = chunk.remaining() as u64;
                // Only bytes beyond the prepaid room are taken now.
                let beyond = (file_bytes + n).saturating_sub(prepaid.max(file_bytes));
                if beyond > 0 && !up.hold.take(beyond) {
                    return Err(MediaError::Busy);
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
            let v = String::from_utf8(data)
                .map_err(|_| MediaError::Invalid(format!("field {name} is not UTF-8")))?;
            up.fields.insert(name, v);
        }
    }
    Ok(up)
}

impl Upload {
    /// The recipient field `target` (`to` or `groupJid`, required) and the file,
    /// checked: present, not empty, within its kind's cap.
    pub fn into_input(self, target: &str, caps: &Caps) -> Result<(String, MediaInput), MediaError> {
        let to = self
            .fields
            .get(target)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| MediaError::Invalid(format!("{target} is required")))?;
        let (file_name, ctype, bytes) = self.file.ok_or(MediaError::FileRequired(
            "A file is required (multipart field \"file\")",
        ))?;
        if bytes.is_empty() {
            return Err(MediaError::FileRequired("The file is empty"));
        }
        let kind = media_type_field(self.fields.get("mediaType").map(String::as_str))?
            .unwrap_or_else(|| media_kind_for(&file_name));
        let cap = caps.of(kind);
        if bytes.len() as u64 > cap {
            return Err(MediaError::too_large(kind, cap));
        }
        let mimetype = mimetype_for(&file_name, ctype.as_deref());
        let caption = self
            .fields
            .get("caption")
            .cloned()
            .filter(|c| !c.is_empty());
        let input = MediaInput {
            kind,
            bytes,
            mimetype,
            file_name,
            caption,
            hold: self.hold,
        };
        Ok((to, input))
    }
}
