//! The global cap on media bytes held by requests (`limits.max_media_in_flight_bytes`).
//!
//! A media send holds its file in memory (whatsapp-rust encrypts it from a buffer) and,
//! while it uploads, an encrypted copy of the same size: each byte of a file is counted
//! twice. Room is taken as the bytes arrive (upload chunks, download chunks) and never
//! waited for: a request that would pass the cap is answered 503 `SERVER_BUSY` with
//! (via [`super::MediaError::Busy`])
//! `Retry-After` at once, so requests holding part of the room never wait on each other
//! (no deadlock), and memory stays bounded whatever the number of clients. The room is
//! given back when the request ends (its [`Hold`] drops).

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Copies of each media byte in memory while it is sent.
const COPIES: u64 = 2;

/// The shared room, counted in KiB.
pub struct MediaBudget {
    room: Arc<Semaphore>,
}

/// Room held by one request; grows with [`Hold::take`], given back on drop.
#[derive(Clone)]
pub struct Hold {
    room: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// Bytes counted so far, and how much of them is covered by `held` (in KiB).
    bytes: Arc<Mutex<u64>>,
}

impl MediaBudget {
    pub fn new(max_bytes: u64) -> Self {
        let kib = (max_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            room: Arc::new(Semaphore::new(kib)),
        }
    }

    /// An empty hold for one request.
    pub fn hold(&self) -> Hold {
        Hold {
            room: self.room.clone(),
            held: Arc::default(),
            bytes: Arc::default(),
        }
    }

    /// Room left, in bytes (tests and metrics).
    pub fn available_bytes(&self) -> u64 {
        self.room.available_permits() as u64 * 1024
    }
}

/// 503 for a request that would pass the cap.

impl Hold {
    /// Counts `n` more media bytes; `false` when the cap has no room for them.
    pub fn take(&self, n: u64) -> bool {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let have = held.as_ref().map_or(0, |p| p.num_permits() as u64);
        let need = ((*bytes + n) * COPIES).div_ceil(1024);
        if need > have {
            let more = need - have;
            let Ok(more) = u32::try_from(more) else {
                return false;
            };
            match self.room.clone().try_acquire_many_owned(more) {
                Ok(p) => match held.as_mut() {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                },
                Err(_) => return false,
            }
        }
        *bytes += n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_taken_as_bytes_arrive_and_given_back_on_drop() {
        let b = MediaBudget::new(10 * 1024 * 1024);
        let a = b.hold();
        assert!(a.take(3 * 1024 * 1024), "6 MiB of 10 counted");
        let c = b.hold();
        assert!(!c.take(3 * 1024 * 1024), "another 6 MiB would pass the cap");
        assert!(c.take(1024 * 1024), "2 MiB more fit");
        assert_eq!(b.available_bytes(), 2 * 1024 * 1024);
        drop(a);
        assert_eq!(b.available_bytes(), 8 * 1024 * 1024, "a's room is back");
        drop(c);
        assert_eq!(b.available_bytes(), 10 * 1024 * 1024);
    }
}
