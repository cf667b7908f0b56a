//! The server binary's memory allocator (`#[global_allocator]` in `main.rs`).
//!
//! Small blocks go to mimalloc: the send path allocates and frees many small blocks
//! on several threads, often freeing on one thread what another allocated (rows and
//! event JSON built in async tasks and dropped by the SQLite writer thread). glibc's
//! allocator then takes the allocating thread's arena lock on every such free, and
//! its arena locks and free-list upkeep were 10–15 % of the writer thread's time in
//! the send benchmark. mimalloc frees into per-thread pages without a shared lock.
//!
//! Large blocks ([`LARGE`] bytes and up: media buffers, uploads, big responses) go to
//! the system allocator, which maps each one on its own and unmaps it when freed, so
//! memory is returned as soon as a transfer ends. (mimalloc holds freed memory for a
//! while before returning it; with every block going to it, eight concurrent 90 MiB
//! uploads left the process's peak memory above the media budget.)
//!
//! Which allocator owns a block follows from its size alone: Rust hands `dealloc` and
//! `realloc` the layout the block was last given, so the same size test finds the
//! owner again; a `realloc` across [`LARGE`] moves the block to the other allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of this size and up go to the system allocator (glibc maps blocks from
/// 128 KiB on with `mmap` by default, and unmaps them on free).
pub const LARGE: usize = 256 * 1024;

/// mimalloc for small blocks, the system allocator for large ones (see the module).
pub struct SplitAlloc;

fn large(size: usize) -> bool {
    size >= LARGE
}

/// The allocator that owns blocks of `size` bytes.
fn owner(size: usize) -> &'static dyn GlobalAlloc {
    if large(size) {
        &System
    } else {
        &mimalloc::MiMalloc
    }
}

// SAFETY: each method forwards to exactly one of two allocators that implement
// `GlobalAlloc` soundly, chosen by a pure function of the block's size; a block is
// always freed or resized by the allocator that made it, because Rust passes the
// block's current layout to `dealloc`/`realloc`.
unsafe impl GlobalAlloc for SplitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract (non-zero size) is passed on unchanged.
        unsafe { owner(layout.size()).alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { owner(layout.size()).alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `layout` is the block's current layout, so its size picks the
        // allocator that made it.
        unsafe { owner(layout.size()).dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same owner before and after: that allocator's own realloc. Across
        // the boundary: a new block from the other allocator (same alignment, a size
        // the caller's contract makes valid), the smaller of the two sizes copied
        // (the blocks are distinct), then the old block freed by its owner.
        unsafe {
            if large(layout.size()) == large(new_size) {
                return owner(new_size).realloc(ptr, layout, new_size);
            }
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks grown and shrunk across the boundary keep their bytes, and each is freed
    /// by the allocator that owns it (a wrong owner would abort the test process).
    #[test]
    fn blocks_keep_their_bytes_across_the_boundary() {
        let a = SplitAlloc;
        for align in [1usize, 8, 64, 4096] {
            let small = Layout::from_size_align(1000, align).expect("valid layout");
            // SAFETY: non-zero sizes; each block is used within its size and freed
            // once with its current layout.
            unsafe {
                let p = a.alloc(small);
                assert!(!p.is_null());
                for i in 0..1000 {
                    *p.add(i) = (i % 251) as u8;
                }
                let big = a.realloc(p, small, LARGE * 2);
                assert!(!big.is_null());
                assert_eq!(big as usize % align, 0);
                for i in 0..1000 {
                    assert_eq!(*big.add(i), (i % 251) as u8);
                }
                *big.add(LARGE * 2 - 1) = 7;
                let big_layout = Layout::from_size_align(LARGE * 2, align).expect("valid");
                let back = a.realloc(big, big_layout, 500);
                assert!(!back.is_null());
                for i in 0..500 {
                    assert_eq!(*back.add(i), (i % 251) as u8);
                }
                a.dealloc(back, Layout::from_size_align(500, align).expect("valid"));
                let z = a.alloc_zeroed(big_layout);
                assert!(!z.is_null());
                assert!((0..LARGE * 2).all(|i| *z.add(i) == 0));
                a.dealloc(z, big_layout);
            }
        }
    }
}
