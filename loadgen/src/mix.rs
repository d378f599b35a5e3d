//! The request mix: every distinct request rendered once into one arena, and
//! an O(1) way to choose the next one (weighted alias table, or the log's own
//! order when replaying).

use crate::render::Template;

/// Which path comes next.
#[derive(Debug, Clone)]
pub enum Order {
    /// Random, proportional to each path's weight.
    Weighted(Vec<f64>),
    /// Cycle through this sequence of path indices (an access log's order).
    Sequence(Vec<u32>),
}

/// All the distinct requests of a run, rendered, and how to choose among them.
pub struct Mix {
    arena: Vec<u8>,
    /// (offset, length) in `arena`, indexed by `path * encodings + encoding`.
    spans: Vec<(u32, u32)>,
    paths: Chooser,
    encodings: Option<Alias>,
    n_enc: usize,
    head: bool,
    max_len: usize,
}

enum Chooser {
    One,
    Alias(Alias),
    Sequence(Vec<u32>),
}

/// Per-thread position in the mix: the random state and the replay cursor.
pub struct Cursor {
    rng: u64,
    seq: usize,
}

impl Cursor {
    /// Threads start at different seeds and at different places in a replayed
    /// log, so they do not all request the same path at the same moment.
    pub fn new(mix: &Mix, thread: usize, threads: usize, seed: u64) -> Cursor {
        let seq = match &mix.paths {
            Chooser::Sequence(s) => s.len() * thread / threads.max(1),
            _ => 0,
        };
        Cursor {
            rng: seed ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            seq,
        }
    }

    /// wyrand: one multiply per draw, good enough for choosing requests.
    #[inline]
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

impl Mix {
    /// Renders `paths` (each with every Accept-Encoding variant) against one host.
    pub fn new(
        template: &Template,
        authority: &str,
        paths: &[String],
        order: Order,
        encodings: &[(Option<String>, f64)],
    ) -> Mix {
        let variants: Vec<Option<&str>> = if encodings.is_empty() {
            vec![None]
        } else {
            encodings.iter().map(|(e, _)| e.as_deref()).collect()
        };
        let mut arena = Vec::new();
        let mut spans = Vec::with_capacity(paths.len() * variants.len());
        let mut max_len = 0;
        for p in paths {
            for v in &variants {
                let r = template.render(authority, p, *v);
                spans.push((arena.len() as u32, r.len() as u32));
                max_len = max_len.max(r.len());
                arena.extend_from_slice(&r);
            }
        }
        let chooser = match order {
            _ if paths.len() == 1 => Chooser::One,
            Order::Weighted(w) => Chooser::Alias(Alias::new(&w)),
            Order::Sequence(s) => Chooser::Sequence(s),
        };
        let enc = (encodings.len() > 1)
            .then(|| Alias::new(&encodings.iter().map(|e| e.1).collect::<Vec<_>>()));
        Mix {
            arena,
            spans,
            paths: chooser,
            encodings: enc,
            n_enc: variants.len(),
            head: template.is_head(),
            max_len,
        }
    }

    /// Chooses the next request.
    #[inline]
    pub fn pick(&self, cur: &mut Cursor) -> usize {
        let p = match &self.paths {
            Chooser::One => 0,
            Chooser::Alias(a) => a.sample(cur.next()),
            Chooser::Sequence(s) => {
                let i = s[cur.seq] as usize;
                cur.seq += 1;
                if cur.seq == s.len() {
                    cur.seq = 0;
                }
                i
            }
        };
        let e = match &self.encodings {
            Some(a) => a.sample(cur.next()),
            None => 0,
        };
        p * self.n_enc + e
    }

    /// The rendered bytes of request `i`.
    #[inline]
    pub fn request(&self, i: usize) -> &[u8] {
        let (off, len) = self.spans[i];
        &self.arena[off as usize..(off + len) as usize]
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn distinct(&self) -> usize {
        self.spans.len()
    }

    /// Whether responses will have no body (HEAD requests).
    pub fn head(&self) -> bool {
        self.head
    }
}

/// Vose's alias table: sampling costs one random number and one comparison.
struct Alias {
    /// Chance, scaled to 2^32, of keeping column `i` rather than its alias.
    keep: Vec<u64>,
    alias: Vec<u32>,
}

impl Alias {
    fn new(weights: &[f64]) -> Alias {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut keep = vec![1u64 << 32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            keep[s] = (scaled[s] * (1u64 << 32) as f64) as u64;
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias { keep, alias }
    }

    #[inline]
    fn sample(&self, r: u64) -> usize {
        let n = self.keep.len() as u64;
        let col = (((r >> 32) * n) >> 32) as usize;
        if (r & 0xffff_ffff) < self.keep[col] {
            col
        } else {
            self.alias[col] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            method: "GET".into(),
            headers: vec![],
            keepalive: true,
        }
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let paths: Vec<String> = ["/a", "/b", "/c"].iter().map(|s| s.to_string()).collect();
        let mix = Mix::new(
            &template(),
            "h",
            &paths,
            Order::Weighted(vec![6.0, 3.0, 1.0]),
            &[],
        );
        let mut cur = Cursor::new(&mix, 0, 1, 42);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[mix.pick(&mut cur)] += 1;
        }
        let share: Vec<f64> = counts.iter().map(|&c| f64::from(c) / 100_000.0).collect();
        assert!((share[0] - 0.6).abs() < 0.01, "{share:?}");
        assert!((share[1] - 0.3).abs() < 0.01, "{share:?}");
        assert!((share[2] - 0.1).abs() < 0.01, "{share:?}");
    }

    #[test]
    fn encodings_cross_paths_and_sequence_cycles() {
        let paths: Vec<String> = ["/a", "/b"].iter().map(|s| s.to_string()).collect();
        let encs = vec![(Some("br".to_string()), 1.0), (None, 1.0)];
        let mix = Mix::new(
            &template(),
            "h",
            &paths,
            Order::Sequence(vec![1, 0, 1]),
            &encs,
        );
        assert_eq!(mix.distinct(), 4);
        let mut cur = Cursor::new(&mix, 0, 1, 7);
        let picked: Vec<usize> = (0..6).map(|_| mix.pick(&mut cur) / 2).collect();
        assert_eq!(picked, [1, 0, 1, 1, 0, 1]);
        let br = String::from_utf8(mix.request(2).to_vec()).unwrap();
        assert!(
            br.starts_with("GET /b ") && br.contains("Accept-Encoding: br"),
            "{br}"
        );
        let none = String::from_utf8(mix.request(3).to_vec()).unwrap();
        assert!(!none.contains("Accept-Encoding"), "{none}");
    }
}
