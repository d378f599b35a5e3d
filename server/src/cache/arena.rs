//! This second's frames: the whole `200` reply of a hot cached entry (head with today's
//! `Date`, then the body), written once into anonymous memory and sent by reference with
//! vmsplice(2) and splice(2) (see [`crate::engine::transmit::send_pinned`]).
//!
//! Why not a memfd and sendfile: on loopback, the cost of sending ~23 KB by reference is
//! dominated by taking and dropping a reference on every 4 KiB page (a page-cache lookup per
//! page for sendfile). Memory here comes in 2 MiB chunks, aligned and advised for a transparent
//! huge page, so a frame's pages are one folio: measured in the null responder on a 23 KB
//! answer, ~0.9x the server CPU per request of sendfile from a memfd (vmsplice from ordinary
//! pages: no better than sendfile). Where huge pages are off, chunks are ordinary pages and
//! cost what sendfile did. A frame needs no descriptor, either.
//!
//! Safety of sending memory by reference rests on two rules kept here: bytes are written once,
//! into a part of a chunk nothing has been handed out from, and never again; and a chunk's
//! memory is only ever returned to the kernel (munmap), never reused, so pages still queued on a
//! socket when their chunk is dropped keep their content (the kernel holds its own reference).
//! The memory is private and anonymous: nobody can truncate it, so no SIGBUS.
//!
//! Frames are only good for the second their `Date` names, so each second starts on new
//! chunks and the arena lets go of the previous second's: entries hold frames by [`Weak`]
//! reference ([`HotFrame`]), sends in progress by strong ([`Pinned`]), and a chunk goes back to
//! the kernel once neither the arena nor a send holds it. Memory is bounded by the arena's cap,
//! which counts the chunks of earlier seconds that a send still holds: a client that stops
//! reading keeps a 2 MiB chunk alive for a 23 KB frame, so without that a few hundred such
//! clients, each stalled in another second, could hold far more than the cache's budget. With
//! it they can only use up the arena, and hits are then served from the entries' memfds.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

use crate::http::date;

/// Bytes in a chunk: one transparent huge page on x86-64 and arm64 (4 KiB pages).
pub const CHUNK: usize = 2 << 20;

/// A chunk of private anonymous memory, filled from the front and never rewritten.
pub struct Chunk {
    base: NonNull<u8>,
    /// Bytes handed out: `[0, used)` is immutable.
    used: Cell<usize>,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("used", &self.used.get())
            .finish()
    }
}

impl Chunk {
    /// Maps a chunk, aligned to its size so that it can be one huge page.
    fn map() -> io::Result<Chunk> {
        // Map twice the size and trim, for the alignment mmap does not offer.
        let span = 2 * CHUNK;
        // SAFETY: a new private anonymous mapping; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = (start + CHUNK - 1) & !(CHUNK - 1);
        let (before, after) = (aligned - start, start + span - (aligned + CHUNK));
        // SAFETY: both ranges lie inside the mapping just made and outside the chunk kept;
        // unmapping them cannot touch memory anything else uses.
        unsafe {
            if before > 0 {
                libc::munmap(raw, before);
            }
            if after > 0 {
                libc::munmap((aligned + CHUNK) as *mut libc::c_void, after);
            }
            // Advice only: without huge pages the chunk works the same, at the cost of a
            // reference per 4 KiB page.
            libc::madvise(aligned as *mut libc::c_void, CHUNK, libc::MADV_HUGEPAGE);
        }
        Ok(Chunk {
            base: NonNull::new(aligned as *mut u8).expect("mmap never returns null"),
            used: Cell::new(0),
        })
    }

    fn room(&self) -> usize {
        CHUNK - self.used.get()
    }

    /// Hands out the next `len` bytes after `write` filled them; nothing if it fails.
    fn carve(
        self: &Rc<Chunk>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<Pinned> {
        let offset = self.used.get();
        assert!(len <= self.room(), "carve past the end of a chunk");
        // SAFETY: `[offset, offset + len)` lies inside the mapping and at or past `used`, so no
        // reference to it was ever handed out: this is the only one. It lives until `write`
        // returns; `used` moves past it only then, after which it is never written again.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) };
        write(slice)?;
        self.used.set(offset + len);
        Ok(Pinned {
            chunk: Rc::clone(self),
            offset,
            len,
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the chunk's own mapping, unmapped once; no `Pinned` outlives the `Rc` that
        // owns the chunk, so no slice into it remains. Pages a socket still holds survive in
        // the kernel, unchanged.
        unsafe { libc::munmap(self.base.as_ptr().cast(), CHUNK) };
    }
}

/// Immutable bytes in a chunk, kept alive by this handle (a send in progress holds one).
#[derive(Clone, Debug)]
pub struct Pinned {
    chunk: Rc<Chunk>,
    offset: usize,
    len: usize,
}

impl Pinned {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `[offset, offset + len)` was filled before this handle existed and is never
        // written again (see `Chunk::carve`); the chunk is mapped while `self.chunk` lives.
        unsafe { std::slice::from_raw_parts(self.chunk.base.as_ptr().add(self.offset), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes from `skip` on, `len` of them.
    pub fn slice(&self, skip: usize, len: usize) -> Pinned {
        assert!(skip + len <= self.len, "slice past the end of a frame");
        Pinned {
            chunk: Rc::clone(&self.chunk),
            offset: self.offset + skip,
            len,
        }
    }

    /// Drops the first `n` bytes (they were sent).
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        self.offset += n;
        self.len -= n;
    }

    /// A handle that does not keep the chunk alive.
    pub fn downgrade(&self, date: [u8; date::LEN]) -> HotFrame {
        HotFrame {
            chunk: Rc::downgrade(&self.chunk),
            offset: self.offset,
            len: self.len,
            date,
        }
    }
}

/// An entry's frame for one second, held weakly: gone when the arena moves on.
#[derive(Debug)]
pub struct HotFrame {
    chunk: Weak<Chunk>,
    offset: usize,
    len: usize,
    pub date: [u8; date::LEN],
}

impl HotFrame {
    /// The frame, if it is for `today` and its chunk is still held.
    pub fn get(&self, today: &[u8; date::LEN]) -> Option<Pinned> {
        if self.date != *today {
            return None;
        }
        Some(Pinned {
            chunk: self.chunk.upgrade()?,
            offset: self.offset,
            len: self.len,
        })
    }
}

/// A worker's frame memory for the current second.
#[derive(Debug)]
pub struct Arena {
    second: [u8; date::LEN],
    chunks: Vec<Rc<Chunk>>,
    /// Chunks of earlier seconds, alive while a send holds part of one.
    retired: Vec<Weak<Chunk>>,
    max_chunks: usize,
}

impl Arena {
    /// An arena of at most `cap` bytes (whole chunks; less than one chunk disables it).
    pub fn new(cap: u64) -> Arena {
        Arena {
            second: [0; date::LEN],
            chunks: Vec::new(),
            retired: Vec::new(),
            max_chunks: (cap / CHUNK as u64) as usize,
        }
    }

    /// What the arena may hold.
    pub fn capacity(&self) -> u64 {
        (self.max_chunks * CHUNK) as u64
    }

    /// Bytes mapped: this second's chunks, and earlier ones a send still holds.
    pub fn mapped(&self) -> u64 {
        let retired = self.retired.iter().filter(|c| c.strong_count() > 0).count();
        ((self.chunks.len() + retired) * CHUNK) as u64
    }

    /// A frame of `len` bytes for the second `today`, filled by `write`; `None` when this
    /// second's chunks are full (or cannot be mapped, or `write` fails).
    pub fn store(
        &mut self,
        today: [u8; date::LEN],
        len: usize,
        write: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> Option<Pinned> {
        if today != self.second {
            // Last second's frames are stale: let their chunks go (sends in progress keep
            // theirs until done, and they count against the cap until then).
            self.retired
                .extend(self.chunks.drain(..).map(|c| Rc::downgrade(&c)));
            self.second = today;
        }
        if len > CHUNK || len == 0 {
            return None;
        }
        if self.chunks.last().is_none_or(|c| c.room() < len) {
            self.retired.retain(|c| c.strong_count() > 0);
            if self.chunks.len() + self.retired.len() >= self.max_chunks {
                return None;
            }
            self.chunks.push(Rc::new(Chunk::map().ok()?));
        }
        let chunk = self.chunks.last().expect("a chunk with room");
        chunk.carve(len, write).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_kept_apart_and_read_back() {
        let mut arena = Arena::new(CHUNK as u64);
        let today = date::format(1_000_000_000);
        let a = arena
            .store(today, 5, |b| {
                b.copy_from_slice(b"hello");
                Ok(())
            })
            .unwrap();
        let b = arena
            .store(today, 3, |b| {
                b.copy_from_slice(b"abc");
                Ok(())
            })
            .unwrap();
        assert_eq!(a.bytes(), b"hello");
        assert_eq!(b.bytes(), b"abc");
        assert_eq!(a.slice(1, 3).bytes(), b"ell");
        // A failed write hands nothing out and the space is used by the next frame.
        assert!(
            arena
                .store(today, 4, |_| Err(io::ErrorKind::Other.into()))
                .is_none()
        );
        let c = arena
            .store(today, 2, |b| {
                b.copy_from_slice(b"xy");
                Ok(())
            })
            .unwrap();
        assert_eq!(c.offset, a.len() + b.len());
        assert_eq!(arena.mapped(), CHUNK as u64);
        // The chunk is aligned for a huge page.
        assert_eq!(a.chunk.base.as_ptr() as usize % CHUNK, 0);
    }

    #[test]
    fn the_cap_holds_and_a_new_second_lets_go_of_the_last() {
        let mut arena = Arena::new(CHUNK as u64);
        let today = date::format(1_000_000_000);
        let big = CHUNK / 2 + 1;
        let first = arena.store(today, big, |_| Ok(())).unwrap();
        // One chunk allowed and half of it used: no room for another.
        assert!(arena.store(today, big, |_| Ok(())).is_none());
        let hot = first.downgrade(today);
        assert!(hot.get(&today).is_some());
        assert!(hot.get(&date::format(1_000_000_001)).is_none());

        // The next second: the old chunk lives while `first` does, and fills the cap.
        let tomorrow = date::format(1_000_000_001);
        assert!(arena.store(tomorrow, big, |_| Ok(())).is_none());
        assert!(
            hot.get(&today).is_some(),
            "a send in progress keeps its chunk"
        );
        drop(first);
        assert!(hot.get(&today).is_none());
        assert_eq!(arena.mapped(), 0);
        assert!(arena.store(tomorrow, big, |_| Ok(())).is_some());
        assert_eq!(arena.mapped(), CHUNK as u64);
    }

    #[test]
    fn chunks_held_past_their_second_count_against_the_cap() {
        let mut arena = Arena::new(2 * CHUNK as u64);
        let second = |n: u64| date::format(1_000_000_000 + n);
        // A send that never finishes holds a frame of each of two seconds.
        let stalled: Vec<Pinned> = (0..2)
            .map(|n| arena.store(second(n), 100, |_| Ok(())).unwrap())
            .collect();
        // The third second finds its room taken: no frames, and the memory stays at the cap.
        assert!(arena.store(second(2), 100, |_| Ok(())).is_none());
        assert_eq!(arena.mapped(), 2 * CHUNK as u64);
        // Once the sends let go, the room is back.
        drop(stalled);
        assert_eq!(arena.mapped(), 0);
        assert!(arena.store(second(2), 100, |_| Ok(())).is_some());
        assert_eq!(arena.mapped(), CHUNK as u64);
    }

    #[test]
    fn an_arena_under_one_chunk_stores_nothing() {
        let mut arena = Arena::new(CHUNK as u64 - 1);
        assert_eq!(arena.capacity(), 0);
        assert!(
            arena
                .store(date::format(1_000_000_000), 10, |_| Ok(()))
                .is_none()
        );
    }
}
