//! Working-set estimation: SHARDS (Waldspurger et al., FAST 2015), fixed-rate spatial sampling
//! of the reference stream with byte-weighted reuse distances.
//!
//! A reference is sampled when its key's hash falls under a threshold (rate R = 10%),
//! so every reference to a sampled object is seen and the sample is a random subset of
//! objects. For each sampled reference the reuse distance is the bytes of distinct sampled
//! objects referenced since this object's previous reference; scaled by 1/R it estimates the
//! LRU stack distance in bytes, i.e. the smallest cache that would have hit. A histogram of
//! those distances, weighted by the object's size, is the byte miss-ratio curve.
//!
//! Distances come from a Fenwick tree over "last access" times holding each sampled object's
//! size at its latest access time; the sum after a time is the bytes touched since then.
//! Cost: a hash mix and a compare per reference, O(log n) work on the 10% that are sampled.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::s3fifo::IdentityHasher;

/// Sampling rate: references whose hash modulo `MODULUS` is below `THRESHOLD` are sampled.
/// 10%: a Django static tree has hundreds to a few thousand files, and at 1% too few of them
/// would be sampled to say anything; the sampled path costs ~100-200 ns (a hash lookup and two
/// Fenwick walks), so ~10-20 ns per request on average.
pub const MODULUS: u64 = 1 << 24;
pub const THRESHOLD: u64 = MODULUS / 10;

/// Histogram buckets: bucket `i` holds distances in [2^(i/4), 2^((i+1)/4)) bytes (four per
/// octave), up to 2^48 bytes.
pub const BUCKETS: usize = 192;

/// Most sampled objects tracked; beyond it the least recently used are forgotten (their next
/// reference counts as a first one). With 10% sampling this covers ~40k hot objects.
const MAX_TRACKED: usize = 4096;

/// Bucket of a distance in bytes.
pub fn bucket(distance: u64) -> usize {
    if distance < 2 {
        return 0;
    }
    // log2 with two fractional bits, from the leading bit and the two after it.
    let log = 63 - u64::from(distance.leading_zeros());
    let frac = if log >= 2 {
        (distance >> (log - 2)) & 3
    } else {
        (distance << (2 - log)) & 3
    };
    ((log * 4 + frac) as usize).min(BUCKETS - 1)
}

/// The upper bound in bytes of bucket `i` (a cache this large hits every distance in it).
pub fn bucket_limit(i: usize) -> u64 {
    let log = (i / 4) as u32;
    let frac = (i % 4) as u64;
    let base = 1u64 << log.min(62);
    // Buckets are [base * (4 + frac) / 4, base * (5 + frac) / 4).
    (base.saturating_mul(5 + frac)) / 4
}

/// Whether a key hash is in the sample.
pub fn sampled(hash: u64) -> bool {
    // Mix so that a weak key hash still samples uniformly.
    mix(hash) % MODULUS < THRESHOLD
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What one sampled reference contributes to the histogram.
#[derive(Debug, PartialEq, Eq)]
pub enum Reference {
    /// Never seen before (or forgotten): a miss at any cache size.
    First,
    /// Seen before: estimated bytes of cache needed to hit.
    Reuse(u64),
}

/// The per-worker sampler.
pub struct Shards {
    /// key → (time of last access, size then). Keys are already mixed hashes.
    last: HashMap<u64, (usize, u64), BuildHasherDefault<IdentityHasher>>,
    /// Fenwick tree over access times.
    tree: Vec<u64>,
    time: usize,
}

impl Default for Shards {
    fn default() -> Self {
        Shards {
            last: HashMap::default(),
            tree: vec![0; 2 * MAX_TRACKED + 1],
            time: 0,
        }
    }
}

impl Shards {
    /// Records a reference to a sampled key of `size` bytes (call only when [`sampled`]).
    pub fn reference(&mut self, key: u64, size: u64) -> Reference {
        if self.time + 1 >= self.tree.len() {
            self.renumber();
        }
        let now = self.time + 1;
        let previous = self.last.insert(key, (now, size));
        let result = match previous {
            Some((t, old)) => {
                // Bytes of distinct sampled objects touched after t, this one excluded.
                let after = self.prefix(self.time) - self.prefix(t);
                self.add(t, old.wrapping_neg());
                Reference::Reuse(after.saturating_mul(MODULUS / THRESHOLD))
            }
            None => Reference::First,
        };
        self.time = now;
        self.add(now, size);
        result
    }

    /// Renumbers the live objects 1..n in access order (dropping the oldest beyond
    /// `MAX_TRACKED`), so the tree never grows.
    fn renumber(&mut self) {
        let mut live: Vec<(usize, u64, u64)> =
            self.last.iter().map(|(&k, &(t, s))| (t, k, s)).collect();
        live.sort_unstable();
        let skip = live.len().saturating_sub(MAX_TRACKED);
        self.tree.iter_mut().for_each(|x| *x = 0);
        self.last.clear();
        self.time = 0;
        for &(_, k, s) in &live[skip..] {
            self.time += 1;
            self.add(self.time, s);
            self.last.insert(k, (self.time, s));
        }
    }

    fn add(&mut self, mut i: usize, delta: u64) {
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add(delta);
            i += i & i.wrapping_neg();
        }
    }

    fn prefix(&self, mut i: usize) -> u64 {
        let mut sum = 0u64;
        while i > 0 {
            sum = sum.wrapping_add(self.tree[i]);
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

/// The smallest cache (bytes) whose byte hit ratio over re-references reaches `ratio`, from a
/// histogram of bytes referenced per distance bucket. First references are left out: they
/// miss at any size, and in the steady state they are the new content, not the working set.
/// `None` when there were no re-references.
pub fn working_set(hist: &[u64], ratio: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let target = (total as f64 * ratio).ceil() as u64;
    let mut acc = 0u64;
    for (i, &bytes) in hist.iter().enumerate() {
        acc += bytes;
        if acc >= target {
            return Some(bucket_limit(i));
        }
    }
    Some(bucket_limit(hist.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut prev = 0;
        for d in [
            1u64,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            1 << 20,
            3 << 30,
            u64::MAX,
        ] {
            let b = bucket(d);
            assert!(b >= prev);
            prev = b;
            assert!(
                bucket_limit(b) >= d.min(bucket_limit(BUCKETS - 1)),
                "{d} {b}"
            );
        }
        // A bucket's limit is within 25% above the distances in it.
        for d in [1000u64, 12345, 1 << 25] {
            assert!(bucket_limit(bucket(d)) <= d + d / 4 + 1);
        }
    }

    #[test]
    fn exact_distances_without_sampling_scale() {
        let mut s = Shards::default();
        assert_eq!(s.reference(1, 10), Reference::First);
        assert_eq!(s.reference(2, 20), Reference::First);
        assert_eq!(s.reference(3, 30), Reference::First);
        let scale = MODULUS / THRESHOLD;
        // Since 1: objects 2 and 3 were touched.
        assert_eq!(s.reference(1, 10), Reference::Reuse(50 * scale));
        assert_eq!(s.reference(1, 10), Reference::Reuse(0));
        assert_eq!(s.reference(2, 20), Reference::Reuse(40 * scale));
    }

    /// A cyclic trace over N objects of size S has LRU distance (N-1)*S for every reuse, so
    /// the working set for any ratio is about N*S; SHARDS must find it from a 1% sample.
    #[test]
    fn cyclic_trace_has_a_known_working_set() {
        let n = 20_000u64;
        let size = 1000u64;
        let mut s = Shards::default();
        let mut hist = vec![0u64; BUCKETS];
        for _round in 0..5 {
            for k in 0..n {
                let key = mix(k.wrapping_add(0x1234_5678));
                if !sampled(key) {
                    continue;
                }
                if let Reference::Reuse(d) = s.reference(key, size) {
                    hist[bucket(d)] += size;
                }
            }
        }
        let wss = working_set(&hist, 0.99).unwrap() as f64;
        let truth = (n * size) as f64;
        assert!(
            (wss - truth).abs() / truth < 0.35,
            "estimated {wss}, true {truth}"
        );
        // A trace with a hot set of 100 objects and rare cold ones: the estimate is small.
        let mut s = Shards::default();
        let mut hist = vec![0u64; BUCKETS];
        let mut sampled_hot = 0;
        for i in 0..200_000u64 {
            let k = if i % 50 == 0 { 1_000_000 + i } else { i % 2000 };
            let key = mix(k);
            if !sampled(key) {
                continue;
            }
            if k < 2000 {
                sampled_hot += 1;
            }
            if let Reference::Reuse(d) = s.reference(key, size) {
                hist[bucket(d)] += size;
            }
        }
        assert!(sampled_hot > 0);
        let wss = working_set(&hist, 0.99).unwrap() as f64;
        let truth = 2000.0 * size as f64;
        assert!(wss < truth * 2.0, "estimated {wss}, hot set {truth}");
    }
}
