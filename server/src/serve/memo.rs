//! This second's resolutions of static targets, per worker: the raw request target and its
//! Accept-Encoding fields → the mount, the path under it, the open-file cache's resource and
//! the coding negotiation chose.
//!
//! A hot asset is asked for with the same target and the same Accept-Encoding over and over,
//! and resolving it (percent-decoding and checking the path, routing, the open-file cache's
//! hash lookup, negotiation, the content cache's key) was about a third of a cache hit's user
//! time. Resolution is a pure function of those bytes, of the mounts (fixed at start) and of
//! the open-file cache's view of the files, which is itself renewed once a second; so a
//! resolution is kept only for the second it was made in, and skipping it can never make an
//! answer staler than the open-file cache already may. Everything after resolution (the
//! manifest check, the content cache with its stamp check and its counters, conditionals,
//! ranges) still runs on every request.
//!
//! The table is direct-mapped: a colliding request replaces a slot, nothing chains, so crafted
//! targets can cost a miss and no more. It holds resources weakly: the open-file cache alone
//! decides how many descriptors stay open, and a resource it let go of is a miss here too.

use std::rc::{Rc, Weak};

use super::negotiate::Encoding;
use super::static_files::Resource;

/// Slots in the table: more than a page's worth of hot assets.
const SLOTS: usize = 64;
/// Longest request key (target and Accept-Encoding fields) worth keeping.
const MAX_KEY: usize = 512;
/// Most Accept-Encoding fields a memoised request may carry.
const MAX_FIELDS: usize = 4;

/// What resolving a static target found.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub mount: usize,
    pub rel: Rc<str>,
    pub resource: Rc<Resource>,
    pub encoding: Encoding,
    /// The content cache's key for this representation.
    pub cache_key: u64,
}

#[derive(Debug)]
struct Slot {
    second: u64,
    hash: u64,
    key: Vec<u8>,
    mount: usize,
    rel: Rc<str>,
    resource: Weak<Resource>,
    encoding: Encoding,
    cache_key: u64,
}

/// A request's memo key, prepared by [`Memo::prepare`]; good until the next `prepare`.
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    hash: u64,
}

#[derive(Debug)]
pub struct Memo {
    slots: Vec<Option<Slot>>,
    /// The key last prepared: each part length-prefixed, so no two requests share one.
    scratch: Vec<u8>,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            slots: (0..SLOTS).map(|_| None).collect(),
            scratch: Vec::with_capacity(MAX_KEY),
        }
    }
}

impl Memo {
    /// Builds the key of a request for `target` with these Accept-Encoding field values;
    /// `None` when it is too long or has too many fields to be worth keeping.
    pub fn prepare<'a>(
        &mut self,
        target: &[u8],
        accept_encoding: impl Iterator<Item = &'a [u8]>,
    ) -> Option<Prepared> {
        self.scratch.clear();
        push_part(&mut self.scratch, target)?;
        for (n, value) in accept_encoding.enumerate() {
            if n == MAX_FIELDS {
                return None;
            }
            push_part(&mut self.scratch, value)?;
        }
        Some(Prepared {
            hash: hash(&self.scratch),
        })
    }

    /// The resolution made during second `now` for the request `key` was prepared from.
    pub fn get(&self, key: Prepared, now: u64) -> Option<Resolution> {
        let slot = self.slots[slot_of(key.hash)].as_ref()?;
        if slot.second != now || slot.hash != key.hash || slot.key != self.scratch {
            return None;
        }
        Some(Resolution {
            mount: slot.mount,
            rel: Rc::clone(&slot.rel),
            resource: slot.resource.upgrade()?,
            encoding: slot.encoding,
            cache_key: slot.cache_key,
        })
    }

    /// Keeps `resolution` for the rest of second `now`, under the key last prepared (`key`).
    pub fn put(&mut self, key: Prepared, now: u64, resolution: Resolution) {
        let slot = &mut self.slots[slot_of(key.hash)];
        // Reuse the slot's key buffer: once the table is warm, keeping a resolution copies
        // the key and allocates nothing for it.
        let mut key_bytes = slot.take().map(|s| s.key).unwrap_or_default();
        key_bytes.clear();
        key_bytes.extend_from_slice(&self.scratch);
        *slot = Some(Slot {
            second: now,
            hash: key.hash,
            key: key_bytes,
            mount: resolution.mount,
            rel: resolution.rel,
            resource: Rc::downgrade(&resolution.resource),
            encoding: resolution.encoding,
            cache_key: resolution.cache_key,
        });
    }
}

fn push_part(key: &mut Vec<u8>, part: &[u8]) -> Option<()> {
    if key.len() + 2 + part.len() > MAX_KEY {
        return None;
    }
    key.extend_from_slice(&(part.len() as u16).to_le_bytes());
    key.extend_from_slice(part);
    Some(())
}

fn slot_of(hash: u64) -> usize {
    (hash >> 58) as usize % SLOTS
}

/// A fast, word-at-a-time hash; only picks a slot, so it need not resist crafted input.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        h = (h.rotate_left(23) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static RESOURCE: Rc<Resource> = Rc::new(Resource::for_tests());
    }

    fn resolution(mount: usize) -> Resolution {
        Resolution {
            mount,
            rel: Rc::from("css/site.css"),
            resource: RESOURCE.with(Rc::clone),
            encoding: Encoding::Identity,
            cache_key: 7,
        }
    }

    #[test]
    fn a_resource_the_open_file_cache_let_go_of_is_a_miss() {
        let mut memo = Memo::default();
        let resource = Rc::new(Resource::for_tests());
        let key = memo.prepare(b"/static/a.css", std::iter::empty()).unwrap();
        memo.put(
            key,
            1,
            Resolution {
                resource: Rc::clone(&resource),
                ..resolution(2)
            },
        );
        assert!(memo.get(key, 1).is_some());
        drop(resource);
        assert!(
            memo.get(key, 1).is_none(),
            "the memo kept a dropped resource alive"
        );
    }

    #[test]
    fn a_resolution_is_found_by_the_same_bytes_in_the_same_second_only() {
        let mut memo = Memo::default();
        let br: &[u8] = b"br, gzip";
        let key = memo
            .prepare(b"/static/css/site.css", [br].into_iter())
            .unwrap();
        assert!(memo.get(key, 100).is_none());
        memo.put(key, 100, resolution(3));

        let key = memo
            .prepare(b"/static/css/site.css", [br].into_iter())
            .unwrap();
        assert_eq!(memo.get(key, 100).map(|r| r.mount), Some(3));
        // The next second the open-file cache looks at the disk again: so must we.
        assert!(memo.get(key, 101).is_none());

        let gzip: &[u8] = b"gzip";
        let other_coding = memo
            .prepare(b"/static/css/site.css", [gzip].into_iter())
            .unwrap();
        assert!(memo.get(other_coding, 100).is_none());
        let no_header = memo
            .prepare(b"/static/css/site.css", std::iter::empty())
            .unwrap();
        assert!(memo.get(no_header, 100).is_none());
        let other_target = memo
            .prepare(b"/static/css/site.cs", [br].into_iter())
            .unwrap();
        assert!(memo.get(other_target, 100).is_none());
    }

    #[test]
    fn field_boundaries_are_part_of_the_key() {
        let mut memo = Memo::default();
        let (a, b): (&[u8], &[u8]) = (b"br, ", b"gzip");
        let two = memo.prepare(b"/s/a.css", [a, b].into_iter()).unwrap();
        memo.put(two, 5, resolution(1));
        let joined: &[u8] = b"br, gzip";
        let one = memo.prepare(b"/s/a.css", [joined].into_iter()).unwrap();
        assert!(memo.get(one, 5).is_none());
        let moved = memo.prepare(b"/s/a.cssbr, ", [b].into_iter()).unwrap();
        assert!(memo.get(moved, 5).is_none());
    }

    #[test]
    fn long_or_many_field_requests_are_not_kept() {
        let mut memo = Memo::default();
        let long = vec![b'a'; MAX_KEY];
        assert!(memo.prepare(&long, std::iter::empty()).is_none());
        let gzip: &[u8] = b"gzip";
        assert!(
            memo.prepare(b"/s/a.css", [gzip; MAX_FIELDS + 1].into_iter())
                .is_none()
        );
        assert!(
            memo.prepare(b"/s/a.css", [gzip; MAX_FIELDS].into_iter())
                .is_some()
        );
    }

    #[test]
    fn a_colliding_request_replaces_the_slot() {
        let mut memo = Memo::default();
        let mut seen: Vec<(Vec<u8>, Prepared)> = Vec::new();
        // Fill the table past its size: every key still finds either its own resolution or
        // nothing, never another's.
        for i in 0..(SLOTS * 4) {
            let target = format!("/static/f{i}.css").into_bytes();
            let key = memo.prepare(&target, std::iter::empty()).unwrap();
            memo.put(key, 9, resolution(i));
            seen.push((target, key));
        }
        let mut found = 0;
        for (i, (target, _)) in seen.iter().enumerate() {
            let key = memo.prepare(target, std::iter::empty()).unwrap();
            if let Some(r) = memo.get(key, 9) {
                assert_eq!(r.mount, i);
                found += 1;
            }
        }
        assert!(found > 0 && found <= SLOTS, "{found} found");
    }
}
