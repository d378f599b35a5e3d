//! A provided buffer ring (IORING_REGISTER_PBUF_RING): receive buffers the kernel picks from
//! when data arrives, so idle connections hold no receive memory of their own. Public so that
//! the bench suite's null responder measures the same receive path.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

pub struct BufRing {
    /// The ring of entries, shared with the kernel: page-aligned anonymous memory.
    entries: *mut BufRingEntry,
    entries_len: usize,
    /// The buffers themselves, `count` of `size` bytes.
    memory: Box<[u8]>,
    size: u32,
    mask: u16,
    /// Our producer index; published to the kernel by [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    /// Registers a ring of `count` buffers (a power of two) of `size` bytes as group `group`.
    pub fn new(ring: &IoUring, count: u16, size: u32, group: u16) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut this = BufRing {
            entries: addr.cast(),
            entries_len,
            memory: vec![0u8; usize::from(count) * size as usize].into_boxed_slice(),
            size,
            mask: count - 1,
            tail: 0,
        };
        // SAFETY: the entries stay mapped until drop, which happens after the ring that uses
        // them is gone (the worker drops its IoUring before this, see field order there) or
        // after unregistering on failure below.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr as u64, count, group, 0)?
        };
        for bid in 0..count {
            this.recycle(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The memory of buffer `bid`, as the kernel filled it.
    pub fn buffer(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * self.size as usize;
        &self.memory[start..start + self.size as usize]
    }

    /// Hands buffer `bid` back to the kernel (visible after the next [`BufRing::publish`]).
    pub fn recycle(&mut self, bid: u16) {
        let index = usize::from(self.tail & self.mask);
        let addr = self.memory.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `index` is within the mapped ring; the kernel does not read an entry past the
        // published tail, so writing it here races with nothing.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of our mapped ring; the kernel
        // reads it with acquire semantics, so a release store orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`.
        unsafe { libc::munmap(self.entries.cast(), self.entries_len) };
    }
}
