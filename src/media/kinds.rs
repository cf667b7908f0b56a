//! Media kinds and names: the `mediaType` words, the kind a file name implies (API.md's
//! table), MIME types, and file names from URLs.

use actors::instance::MediaKind;

/// The media kind named by a `mediaType` field.
pub fn parse_media_type(s: &str) -> Option<MediaKind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "image" => Some(MediaKind::Image),
        "video" => Some(MediaKind::Video),
        "audio" => Some(MediaKind::Audio),
        "document" | "file" => Some(MediaKind::Document),
        "voice" | "ptt" => Some(MediaKind::Voice),
        "sticker" => Some(MediaKind::Sticker),
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
        MediaKind::Voice => "voice",
        MediaKind::Sticker => "sticker",
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
    fn kinds_and_mime_types() {
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
        assert_eq!(parse_media_type(" File "), Some(MediaKind::Document));
        assert_eq!(parse_media_type("gif"), None);
    }
}
