//! Media to send: what kinds there are and what a file is ([`kinds`]), how large each
//! kind may be ([`Caps`]), the memory cap on media bytes held by requests
//! ([`budget`]), reading an uploaded file ([`upload`]) and fetching one from a URL
//! under the SSRF policy ([`fetch`]). The HTTP layer parses requests and maps
//! [`MediaError`]s to the envelope; everything about the files themselves is here.

pub mod budget;
pub mod fetch;
pub mod kinds;
pub mod upload;

pub use budget::{Hold, MediaBudget};
pub use kinds::{
    file_name_from_url, media_kind_for, media_kind_word, mimetype_for, parse_media_type,
};

use actors::instance::{MediaKind, OutgoingMedia};

/// Largest size of each kind (`limits.max_*_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub image: u64,
    pub video: u64,
    pub audio: u64,
    pub document: u64,
}

impl Caps {
    /// The cap of `kind`.
    pub fn of(&self, kind: MediaKind) -> u64 {
        match kind {
            MediaKind::Image | MediaKind::Sticker => self.image,
            MediaKind::Video => self.video,
            MediaKind::Audio | MediaKind::Voice => self.audio,
            MediaKind::Document => self.document,
        }
    }

    /// The largest cap (a file of unknown kind may be at most this).
    pub fn largest(&self) -> u64 {
        self.image
            .max(self.video)
            .max(self.audio)
            .max(self.document)
    }
}

/// A file ready to send.
pub struct MediaInput {
    pub kind: MediaKind,
    pub bytes: Vec<u8>,
    pub mimetype: String,
    pub file_name: String,
    pub caption: Option<String>,
    /// The file's room under the media cap, held until the send ends.
    pub hold: Hold,
}

impl MediaInput {
    /// What the actor sends, and the room this file holds under the media cap (to be
    /// kept until the actor answers: the upload holds the bytes until then).
    pub fn into_outgoing(self) -> (OutgoingMedia, Hold) {
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

/// Why media could not be taken (each maps to one API code).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// `FILE_TOO_LARGE`: `what` ("image files", "files") may be at most `cap` bytes.
    #[error("{what} may be at most {cap} bytes")]
    TooLarge { what: String, cap: u64 },
    /// `VALIDATION_ERROR`.
    #[error("{0}")]
    Invalid(String),
    /// `INVALID_REQUEST`: the multipart body could not be read.
    #[error("Multipart body could not be read")]
    Unreadable,
    /// `FILE_REQUIRED`.
    #[error("{0}")]
    FileRequired(&'static str),
    /// `SERVER_BUSY`: the media memory cap has no room now.
    #[error("The server is holding as much media as it is allowed to (limits.max_media_in_flight_bytes); retry shortly")]
    Busy,
    /// The URL could not be fetched (its own code: `DOWNLOAD_FAILED`, `INVALID_URL`, ...).
    #[error(transparent)]
    Fetch(crate::net::fetch::FetchError),
}

impl MediaError {
    /// `FILE_TOO_LARGE` for `kind`.
    pub fn too_large(kind: MediaKind, cap: u64) -> Self {
        Self::TooLarge {
            what: format!("{} files", media_kind_word(kind)),
            cap,
        }
    }
}

/// The kind named by a `mediaType` value (blank: none named).
pub fn media_type_field(v: Option<&str>) -> Result<Option<MediaKind>, MediaError> {
    match v.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => parse_media_type(s).map(Some).ok_or_else(|| {
            MediaError::Invalid("mediaType must be image, video, audio or document".into())
        }),
    }
}
