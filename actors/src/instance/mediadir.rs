//! Incoming media saved to a local directory (optional, `[messages] media_dir`): each
//! media message an instance receives is downloaded and decrypted beside the actor and
//! written to `<dir>/<instance id>/<message id>.<ext>` (written to a temporary name,
//! then renamed, so a reader never sees half a file). Files over the per-file cap are
//! skipped, and nothing more is written once the directory holds the total cap.

use super::{InstanceState, MediaKind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
use whatsapp_rust::wacore::types::events::MessageBatch;
use whatsapp_rust::waproto::whatsapp as wa;

/// Where incoming media goes, and its caps.
#[derive(Debug)]
pub struct MediaDir {
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    /// Bytes written so far (started from what the directory held at start-up).
    used: AtomicU64,
    /// Downloads in flight, server-wide (each holds its file in memory).
    slots: tokio::sync::Semaphore,
}

/// Media downloads to the directory at once, server-wide.
const PARALLEL_SAVES: usize = 4;

impl MediaDir {
    /// A media directory; `used` counts the bytes already in it.
    pub fn new(dir: PathBuf, max_file_bytes: u64, max_total_bytes: u64) -> Arc<Self> {
        let used = dir_size(&dir);
        Arc::new(Self {
            dir,
            max_file_bytes,
            max_total_bytes,
            used: AtomicU64::new(used),
            slots: tokio::sync::Semaphore::new(PARALLEL_SAVES),
        })
    }

    /// Takes room for `n` bytes under the total cap.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                (u + n <= self.max_total_bytes).then_some(u + n)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Total size of the files under `dir` (two levels: instance directories).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => std::fs::read_dir(e.path())
                .map(|f| {
                    f.flatten()
                        .filter_map(|x| x.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A file-name extension for a mimetype.
fn extension(mimetype: &str, kind: MediaKind) -> &'static str {
    match mimetype.split(';').next().unwrap_or("").trim() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "video/mp4" => "mp4",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "application/pdf" => "pdf",
        _ => match kind {
            MediaKind::Image => "img",
            MediaKind::Video => "video",
            MediaKind::Audio | MediaKind::Voice => "audio",
            MediaKind::Sticker => "webp",
            MediaKind::Document => "bin",
        },
    }
}

/// The media of a message: kind, mimetype, declared length, and its download handle.
fn media_of(
    m: &wa::Message,
) -> Option<(
    MediaKind,
    String,
    u64,
    Box<dyn whatsapp_rust::download::Downloadable + Send + Sync>,
)> {
    let b = m.get_base_message();
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    if let Some(x) = b.image_message.as_option() {
        return Some((
            MediaKind::Image,
            opt(&x.mimetype),
            x.file_length.unwrap_or(0),
            Box::new(x.clone()),
        ));
    }
    if let Some(x) = b.video_message.as_option() {
        return Some((
            MediaKind::Video,
            opt(&x.mimetype),
            x.file_length.unwrap_or(0),
            Box::new(x.clone()),
        ));
    }
    if let Some(x) = b.audio_message.as_option() {
        return Some((
            MediaKind::Audio,
            opt(&x.mimetype),
            x.file_length.unwrap_or(0),
            Box::new(x.clone()),
        ));
    }
    if let Some(x) = b.document_message.as_option() {
        return Some((
            MediaKind::Document,
            opt(&x.mimetype),
            x.file_length.unwrap_or(0),
            Box::new(x.clone()),
        ));
    }
    if let Some(x) = b.sticker_message.as_option() {
        return Some((
            MediaKind::Sticker,
            opt(&x.mimetype),
            x.file_length.unwrap_or(0),
            Box::new(x.clone()),
        ));
    }
    None
}

impl InstanceState {
    /// Saves the media of a received batch to the media directory, if one is set.
    pub(super) fn save_media(&mut self, batch: &MessageBatch) {
        let (Some(dir), Some(client)) = (self.env.media_dir.clone(), self.client.clone()) else {
            return;
        };
        for m in batch.messages.iter() {
            let Some((kind, mimetype, declared, media)) = media_of(&m.message) else {
                continue;
            };
            if declared > dir.max_file_bytes {
                tracing::info!(instance_id = %self.id, "incoming media over the per-file cap: not saved");
                continue;
            }
            if !dir.take(declared) {
                tracing::warn!(instance_id = %self.id, "media directory full: incoming media not saved");
                continue;
            }
            let folder = dir.dir.join(&self.id);
            // Message ids are WhatsApp's (hex/alphanumeric); anything else is replaced.
            let name: String = m
                .info
                .id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let path = folder.join(format!("{name}.{}", extension(&mimetype, kind)));
            let (id, client, dir) = (self.id.clone(), client.clone(), dir.clone());
            self.ops.track(async move {
                let written = async {
                    let _slot = dir.slots.acquire().await.map_err(|e| e.to_string())?;
                    let bytes = client.download(media.as_ref()).await.map_err(|e| e.to_string())?;
                    tokio::fs::create_dir_all(&folder).await.map_err(|e| e.to_string())?;
                    let tmp = path.with_extension("part");
                    tokio::fs::write(&tmp, &bytes).await.map_err(|e| e.to_string())?;
                    tokio::fs::rename(&tmp, &path).await.map_err(|e| e.to_string())?;
                    Ok::<u64, String>(bytes.len() as u64)
                }
                .await;
                match written {
                    // Keep the count true to what was written.
                    Ok(n) if n < declared => dir.give_back(declared - n),
                    Ok(_) => {}
                    Err(e) => {
                        dir.give_back(declared);
                        tracing::warn!(instance_id = %id, error = %e, "saving incoming media failed");
                    }
                }
            });
        }
    }
}
