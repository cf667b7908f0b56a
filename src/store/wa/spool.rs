//! The emergency buffer of whatsapp-rust's pending-inbound rows, on local disk.
//!
//! whatsapp-rust writes every decrypted inbound message to its pending-inbound buffer
//! before our durability hook runs, and skips the hook (and the ack) when that write
//! fails. With the buffer in the same database as everything else, a database outage
//! would fail that write while the Signal ratchet still advances in memory: when the
//! database comes back, the advance is flushed, WhatsApp's redelivery then cannot be
//! decrypted, finds no buffered copy and is acked as a duplicate — the message is lost.
//! So when the database refuses the buffer write, [`WaStore`](super::WaStore) writes
//! the rows here instead (one fsync'd file per message), reads them back on replay and
//! deletes them once the hook committed. Nothing is acknowledged to WhatsApp on the
//! strength of this file alone: the hook still has to commit to the database.
//!
//! Layout: `<dir>/<sha256(instance)[..16]>/<sha256(chat, sender, id)>.msg`, written to a
//! temporary name, synced and renamed, so a crash never leaves a half-written file
//! under a real name.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Spool files of every instance under one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn instance_dir(&self, instance: &str) -> PathBuf {
        self.dir.join(&hash(&[instance])[..32])
    }

    fn path(&self, instance: &str, chat: &str, sender: &str, id: &str) -> PathBuf {
        self.instance_dir(instance)
            .join(format!("{}.msg", hash(&[chat, sender, id])))
    }

    /// Writes one row durably.
    pub fn put(
        &self,
        instance: &str,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> std::io::Result<()> {
        let dir = self.instance_dir(instance);
        std::fs::create_dir_all(&dir)?;
        let path = self.path(instance, chat, sender, id);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(message)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    }

    /// The row, if spooled.
    pub fn get(
        &self,
        instance: &str,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(instance, chat, sender, id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the row (absent is fine).
    pub fn delete(
        &self,
        instance: &str,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(instance, chat, sender, id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Rows of `instance` spooled now.
    pub fn count(&self, instance: &str) -> usize {
        std::fs::read_dir(self.instance_dir(instance))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "msg"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Removes rows of `instance` written before `cutoff` (unix seconds); returns how many.
    pub fn expire(&self, instance: &str, cutoff: i64) -> u32 {
        let Ok(d) = std::fs::read_dir(self.instance_dir(instance)) else {
            return 0;
        };
        let mut n = 0;
        for e in d.filter_map(Result::ok) {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| (t.as_secs() as i64) < cutoff);
            if old && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Removes every row of `instance`.
    pub fn wipe(&self, instance: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.instance_dir(instance)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Makes the rename durable (POSIX); a no-op error on platforms that refuse it.
    match std::fs::File::open(dir) {
        Ok(d) => d.sync_all().or(Ok(())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::Spool;

    #[test]
    fn rows_round_trip_per_instance_and_key() {
        let dir = std::env::temp_dir().join(format!("sudevwa-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Spool::new(&dir);
        s.put("a", "c@s", "s@s", "M1", b"one").unwrap();
        s.put("b", "c@s", "s@s", "M1", b"other").unwrap();
        assert_eq!(
            s.get("a", "c@s", "s@s", "M1").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            s.get("b", "c@s", "s@s", "M1").unwrap().as_deref(),
            Some(&b"other"[..])
        );
        assert_eq!(s.get("a", "c@s", "s@s", "M2").unwrap(), None);
        assert_eq!(s.count("a"), 1);
        s.delete("a", "c@s", "s@s", "M1").unwrap();
        s.delete("a", "c@s", "s@s", "M1").unwrap();
        assert_eq!(s.get("a", "c@s", "s@s", "M1").unwrap(), None);
        assert_eq!(s.count("b"), 1);
        s.wipe("b").unwrap();
        assert_eq!(s.count("b"), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
