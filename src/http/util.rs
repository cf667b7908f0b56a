//! Small pure helpers of the API: phone numbers, media types, the success envelope.

use super::error::ApiError;
use actors::instance::MediaKind;
use serde_json::{json, Value};
use warp::http::StatusCode;

/// `{"success": true, "message": ..., "data": ...}`.
pub fn ok(message: &str, data: Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::json(&json!({"success": true, "message": message, "data": data})).into_response()
}

/// Normalises a phone number as SUDEVWA does: formatting characters (`+`, spaces,
/// `-`, `.`, parentheses) are dropped, a leading `0` becomes `country_code`, and the
/// result must be 10 to 15 digits.
pub fn normalize_phone(raw: &str, country_code: &str) -> Result<String, ApiError> {
    let mut digits = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(invalid_phone()),
        }
    }
    if let Some(rest) = digits.strip_prefix('0') {
        digits = format!("{country_code}{rest}");
    }
    if digits.len() < 10 || digits.len() > 15 {
        return Err(invalid_phone());
    }
    Ok(digits)
}

fn invalid_phone() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_PHONE",
        "Invalid phone number: digits only, at least 10 (country code included)",
    )
}

/// Is `jid` a group JID (`<digits>@g.us` or `<digits>-<digits>@g.us`)?
pub fn is_group_jid(jid: &str) -> bool {
    let Some(user) = jid.strip_suffix("@g.us") else {
        return false;
    };
    let mut parts = user.split('-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let first = parts.next();
    match (first, parts.next(), parts.next()) {
        (f, None, None) => ok(f),
        (f, s, None) => ok(f) && ok(s),
        _ => false,
    }
}

/// The media kind named by a `mediaType` field.
pub fn parse_media_type(s: &str) -> Option<MediaKind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "image" => Some(MediaKind::Image),
        "video" => Some(MediaKind::Video),
        "audio" => Some(MediaKind::Audio),
        "document" | "file" => Some(MediaKind::Document),
        _ => None,
    }
}

fn extension(file_name: &str) -> String {
    file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Media kind from the file extension (API.md's table); anything else is a document.
pub fn media_kind_for(file_name: &str) -> MediaKind {
    match extension(file_name).as_str() {
        "jpg" | "jpeg" | "png" | "gif" | "webp" => MediaKind::Image,
        "mp4" | "mov" | "avi" | "mkv" => MediaKind::Video,
        "mp3" | "ogg" | "m4a" | "opus" => MediaKind::Audio,
        _ => MediaKind::Document,
    }
}

/// A MIME type for a file: the declared one when it is specific, else from the extension.
pub fn mimetype_for(file_name: &str, declared: Option<&str>) -> String {
    if let Some(d) = declared.map(|d| d.split(';').next().unwrap_or(d).trim()) {
        if !d.is_empty() && d != "application/octet-stream" && d.contains('/') {
            return d.to_string();
        }
    }
    match extension(file_name).as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "avi" => "video/x-msvideo",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg; codecs=opus",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
    .to_string()
}

/// The lowercase word of a media kind.
pub fn media_kind_word(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Image => "image",
        MediaKind::Video => "video",
        MediaKind::Audio => "audio",
        MediaKind::Document => "document",
    }
}

/// A file name from the last path segment of a URL (or `file` when there is none).
pub fn file_name_from_url(url: &url::Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "file".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert_eq!(
            normalize_phone("081234567890", "62").unwrap(),
            "6281234567890"
        );
        assert_eq!(
            normalize_phone("+1 (555) 010-0000", "62").unwrap(),
            "15550100000"
        );
        assert!(normalize_phone("12345", "62").is_err());
        assert!(normalize_phone("1234567890a", "62").is_err());
        assert!(normalize_phone("1234567890123456", "62").is_err());
        assert_eq!(normalize_phone("1234567890", "62").unwrap(), "1234567890");
    }

    #[test]
    fn groups_and_media() {
        assert!(is_group_jid("120363021234567890@g.us"));
        assert!(is_group_jid("6281-1600000000@g.us"));
        assert!(!is_group_jid("abc@g.us"));
        assert!(!is_group_jid("123@s.whatsapp.net"));
        assert!(!is_group_jid("1-2-3@g.us"));
        assert!(!is_group_jid("@g.us"));
        assert_eq!(media_kind_for("a.JPG"), MediaKind::Image);
        assert_eq!(media_kind_for("a.mkv"), MediaKind::Video);
        assert_eq!(media_kind_for("a.opus"), MediaKind::Audio);
        assert_eq!(media_kind_for("a.pdf"), MediaKind::Document);
        assert_eq!(media_kind_for("noext"), MediaKind::Document);
        assert_eq!(
            mimetype_for("x.png", Some("application/octet-stream")),
            "image/png"
        );
        assert_eq!(mimetype_for("x.bin", Some("image/gif")), "image/gif");
    }
}
