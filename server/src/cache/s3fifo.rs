//! S3-FIFO (Yang et al., SOSP 2023), weighted by bytes: a small FIFO that new objects enter
//! (10% of the budget), a main FIFO for objects that were hit while small, and a ghost FIFO of
//! keys recently evicted from the small queue.
//!
//! Why this policy: most objects of a scan or of a one-hit-wonder burst are never hit again
//! and leave through the small queue without disturbing the main queue, so the hot set
//! survives scans; it needs no lock-protected LRU list, only FIFO queues and a 2-bit counter
//! per object, so a hit is one hash lookup and one counter update. Each worker owns one, so
//! hits take no lock at all.
//!
//! Keys are 64-bit hashes; the caller keeps whatever it needs to verify a hit in the value.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for keys that already are well-mixed 64-bit hashes.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this; fold anything else in, for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Node<V> {
    value: V,
    weight: u64,
    freq: u8,
    queue: Queue,
    /// Distinguishes this node from an earlier one at the same key still listed in a queue.
    stamp: u64,
}

/// What an insertion did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Objects evicted to make room.
    pub evicted: u64,
    /// The object was stored (false: heavier than the whole budget).
    pub stored: bool,
}

pub struct S3Fifo<V> {
    capacity: u64,
    small_capacity: u64,
    map: Map<Node<V>>,
    /// (key, stamp) in insertion order, front = oldest. Entries whose node was removed or
    /// re-queued are skipped when they reach the front.
    small: VecDeque<(u64, u64)>,
    main: VecDeque<(u64, u64)>,
    small_weight: u64,
    main_weight: u64,
    ghost: VecDeque<(u64, u64)>,
    ghost_set: Map<u32>,
    ghost_weight: u64,
    next_stamp: u64,
}

impl<V> S3Fifo<V> {
    pub fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small_capacity: (capacity / 10).max(1),
            map: Map::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_weight: 0,
            main_weight: 0,
            ghost: VecDeque::new(),
            ghost_set: Map::default(),
            ghost_weight: 0,
            next_stamp: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of the objects held.
    pub fn weight(&self) -> u64 {
        self.small_weight + self.main_weight
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The object at `key`, counted as accessed.
    pub fn get(&mut self, key: u64) -> Option<&V> {
        let node = self.map.get_mut(&key)?;
        node.freq = (node.freq + 1).min(3);
        Some(&node.value)
    }

    /// The object at `key`, not counted as an access.
    pub fn peek(&self, key: u64) -> Option<&V> {
        self.map.get(&key).map(|n| &n.value)
    }

    /// Whether `key` was evicted from the small queue recently: a second chance to be
    /// admitted straight into the main queue.
    pub fn in_ghost(&self, key: u64) -> bool {
        self.ghost_set.contains_key(&key)
    }

    /// Stores `value` at `key` (replacing any object there), evicting as needed.
    pub fn insert(&mut self, key: u64, weight: u64, value: V) -> Inserted {
        let mut result = Inserted::default();
        self.remove(key);
        if weight > self.capacity {
            return result;
        }
        let to_main = self.forget_ghost(key);
        while self.weight() + weight > self.capacity {
            if !self.evict_one() {
                break;
            }
            result.evicted += 1;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let queue = if to_main { Queue::Main } else { Queue::Small };
        match queue {
            Queue::Small => {
                self.small.push_back((key, stamp));
                self.small_weight += weight;
            }
            Queue::Main => {
                self.main.push_back((key, stamp));
                self.main_weight += weight;
            }
        }
        self.map.insert(
            key,
            Node {
                value,
                weight,
                freq: 0,
                queue,
                stamp,
            },
        );
        result.stored = true;
        result
    }

    /// Remembers `key` as if it had just left the small queue: used for objects too large to
    /// admit on their first miss, so that a second miss admits them.
    pub fn note_ghost(&mut self, key: u64, weight: u64) {
        if !self.map.contains_key(&key) && !self.in_ghost(key) {
            self.push_ghost(key, weight);
        }
    }

    /// Drops the object at `key`; returns it.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let node = self.map.remove(&key)?;
        match node.queue {
            Queue::Small => self.small_weight -= node.weight,
            Queue::Main => self.main_weight -= node.weight,
        }
        self.compact();
        Some(node.value)
    }

    /// Drops every object for which `drop` is true; returns how many.
    pub fn remove_if(&mut self, mut drop: impl FnMut(&V) -> bool) -> usize {
        let keys: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, n)| drop(&n.value))
            .map(|(&k, _)| k)
            .collect();
        for &k in &keys {
            self.remove(k);
        }
        keys.len()
    }

    /// Every object held, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = (u64, &V)> {
        self.map.iter().map(|(&k, n)| (k, &n.value))
    }

    /// Evicts one object (moving survivors along); false when nothing is left to evict.
    fn evict_one(&mut self) -> bool {
        loop {
            if self.small_weight >= self.small_capacity || self.main_weight == 0 {
                let Some((key, stamp)) = self.small.pop_front() else {
                    if self.main_weight == 0 {
                        return false;
                    }
                    return self.evict_main();
                };
                let Some(node) = self.map.get_mut(&key) else {
                    continue;
                };
                if node.stamp != stamp || node.queue != Queue::Small {
                    continue;
                }
                if node.freq > 0 {
                    // Hit while in the small queue: it earned a place in the main one.
                    node.queue = Queue::Main;
                    node.freq = 0;
                    let w = node.weight;
                    self.small_weight -= w;
                    self.main_weight += w;
                    self.main.push_back((key, stamp));
                    continue;
                }
                let node = self.map.remove(&key).expect("found above");
                self.small_weight -= node.weight;
                self.push_ghost(key, node.weight);
                return true;
            }
            return self.evict_main();
        }
    }

    fn evict_main(&mut self) -> bool {
        while let Some((key, stamp)) = self.main.pop_front() {
            let Some(node) = self.map.get_mut(&key) else {
                continue;
            };
            if node.stamp != stamp || node.queue != Queue::Main {
                continue;
            }
            if node.freq > 0 {
                node.freq -= 1;
                self.main.push_back((key, stamp));
                continue;
            }
            let node = self.map.remove(&key).expect("found above");
            self.main_weight -= node.weight;
            return true;
        }
        false
    }

    fn push_ghost(&mut self, key: u64, weight: u64) {
        // The ghost remembers about as many bytes as the main queue holds.
        let limit = self.capacity - self.small_capacity.min(self.capacity);
        self.ghost.push_back((key, weight));
        *self.ghost_set.entry(key).or_insert(0) += 1;
        self.ghost_weight += weight;
        while self.ghost_weight > limit {
            let Some((k, w)) = self.ghost.pop_front() else {
                break;
            };
            self.ghost_weight -= w;
            self.unref_ghost(k);
        }
    }

    /// Takes `key` out of the ghost set; true if it was there.
    fn forget_ghost(&mut self, key: u64) -> bool {
        // The queue entry stays and is discounted when it reaches the front.
        self.ghost_set.remove(&key).is_some()
    }

    fn unref_ghost(&mut self, key: u64) {
        if let Some(n) = self.ghost_set.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.ghost_set.remove(&key);
            }
        }
    }

    /// Queues keep stale (removed) entries until they reach the front; after many removals
    /// without evictions, rebuild them so they stay proportional to what is held.
    fn compact(&mut self) {
        let live = self.map.len();
        if self.small.len() + self.main.len() <= 2 * live + 64 {
            return;
        }
        let map = &self.map;
        let keep = |(k, s): &(u64, u64), q: Queue| {
            map.get(k).is_some_and(|n| n.stamp == *s && n.queue == q)
        };
        self.small.retain(|e| keep(e, Queue::Small));
        self.main.retain(|e| keep(e, Queue::Main));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_capacity_and_evicts_fifo() {
        let mut c = S3Fifo::new(1000);
        for k in 0..20 {
            c.insert(k, 100, k);
            assert!(c.weight() <= 1000);
        }
        assert_eq!(c.len(), 10);
        assert!(c.peek(19).is_some());
        assert!(c.peek(0).is_none());
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let mut c = S3Fifo::new(100 * 100);
        // A hot set of 50 objects, each hit a few times: it reaches the main queue.
        for round in 0..4 {
            for k in 0..50u64 {
                if c.get(k).is_none() {
                    c.insert(k, 100, k);
                }
                let _ = round;
            }
        }
        // A scan of 10,000 one-hit wonders.
        for k in 1000..11_000u64 {
            if c.get(k).is_none() {
                c.insert(k, 100, k);
            }
        }
        let kept = (0..50u64).filter(|&k| c.peek(k).is_some()).count();
        assert!(
            kept >= 45,
            "only {kept} of 50 hot objects survived the scan"
        );
        assert!(c.weight() <= c.capacity());
    }

    #[test]
    fn ghost_hits_go_to_main() {
        let mut c = S3Fifo::new(1000);
        c.insert(1, 50, 1);
        for k in 2..22 {
            c.insert(k, 50, k);
        }
        assert!(c.peek(1).is_none());
        assert!(c.in_ghost(1));
        c.insert(1, 50, 1);
        assert!(!c.in_ghost(1));
        // Now in main: a burst of new objects through the small queue leaves it alone.
        for k in 100..130 {
            c.insert(k, 50, k);
        }
        assert!(c.peek(1).is_some());
    }

    #[test]
    fn removal_and_oversize() {
        let mut c = S3Fifo::new(1000);
        assert!(!c.insert(1, 2000, 1).stored);
        c.insert(2, 10, 2);
        c.insert(3, 10, 3);
        assert_eq!(c.remove(2), Some(2));
        assert_eq!(c.weight(), 10);
        assert_eq!(c.remove_if(|&v| v == 3), 1);
        assert!(c.is_empty() && c.weight() == 0);
        // Many insert/remove cycles keep the queues bounded.
        for k in 0..10_000 {
            c.insert(k, 10, k);
            c.remove(k);
        }
        assert!(c.small.len() + c.main.len() <= 64 + 2);
    }
}
