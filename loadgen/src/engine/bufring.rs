//! A provided-buffer ring: receive buffers the kernel picks from itself, so a
//! multishot receive can stay armed and never needs a buffer per request.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

pub struct BufRing {
    /// `entries` descriptors in page-aligned memory shared with the kernel.
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    mem: Vec<u8>,
    buf_size: usize,
    mask: u16,
    /// Our copy of the tail; published to the kernel by [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    /// Registers `entries` (a power of two) buffers of `buf_size` bytes as group `bgid`.
    pub fn new(
        submitter: &Submitter<'_>,
        entries: u16,
        buf_size: usize,
        bgid: u16,
    ) -> io::Result<BufRing> {
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            mem: vec![0u8; usize::from(entries) * buf_size],
            buf_size,
            mask: entries - 1,
            tail: 0,
        };
        // SAFETY: the ring memory is page-aligned (mmap), sized for `entries`,
        // and lives until this BufRing is dropped, after the io_uring that
        // uses it (the engine declares the ring field first).
        unsafe { submitter.register_buf_ring_with_flags(br.ring as u64, entries, bgid, 0)? };
        for bid in 0..entries {
            br.recycle(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    #[inline]
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buf_size;
        &self.mem[start..start + len.min(self.buf_size)]
    }

    /// Gives buffer `bid` back; the kernel sees it after [`BufRing::publish`].
    #[inline]
    pub fn recycle(&mut self, bid: u16) {
        let slot = usize::from(self.tail & self.mask);
        let addr = self.mem.as_ptr() as u64 + (usize::from(bid) * self.buf_size) as u64;
        // SAFETY: slot < entries, inside the mapping; the kernel only reads
        // descriptors between its head and our published tail, and this slot
        // is past the published tail.
        let e = unsafe { &mut *self.ring.add(slot) };
        e.set_addr(addr);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel (one store per batch).
    #[inline]
    pub fn publish(&self) {
        // SAFETY: `ring` is the base of the registered ring; the tail field
        // overlays the first entry's reserved field, is u16-aligned and is
        // only written by us, with release ordering so the entries written
        // before are visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
