//! Sampling another process's CPU time and memory from `/proc`, to charge the
//! server's cost to the requests that caused it (`--server-pid`).

use std::fs;

use crate::error::{Error, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// User CPU time, in clock ticks (all threads).
    pub utime: u64,
    /// System CPU time, in clock ticks (all threads).
    pub stime: u64,
    /// Resident set size, bytes.
    pub rss: u64,
}

/// Reads `/proc/PID/stat`.
pub fn sample(pid: u32) -> Result<Sample> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error::new(format!("--server-pid {pid}: {e}")))?;
    parse_stat(&text)
        .ok_or_else(|| Error::new(format!("--server-pid {pid}: unreadable /proc/{pid}/stat")))
}

/// Parses the fields after the command name, which may itself contain spaces
/// and parentheses, hence the search for the last `)`.
fn parse_stat(text: &str) -> Option<Sample> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // After ')': state is field 3 of stat(5), so field N is at index N - 3.
    let utime = f.get(14 - 3)?.parse().ok()?;
    let stime = f.get(15 - 3)?.parse().ok()?;
    let rss_pages: u64 = f.get(24 - 3)?.parse().ok()?;
    Some(Sample {
        utime,
        stime,
        rss: rss_pages * page_size(),
    })
}

/// Clock ticks per second, the unit of utime and stime.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Tracks a set of processes over the measured window.
pub struct Monitor {
    pids: Vec<u32>,
    start: Vec<Sample>,
    end: Vec<Sample>,
    peak_rss: u64,
}

/// The server's cost over the measured window, summed over its processes.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub pids: Vec<u32>,
    pub user_s: f64,
    pub system_s: f64,
    /// Highest sum of the processes' RSS seen in samples (every 100 ms).
    pub peak_rss_bytes: u64,
}

impl Usage {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

impl Monitor {
    /// Checks every pid can be read now, so a typo fails before the run.
    pub fn new(pids: &[u32]) -> Result<Monitor> {
        let start = pids
            .iter()
            .map(|&p| sample(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Monitor {
            pids: pids.to_vec(),
            end: start.clone(),
            start,
            peak_rss: 0,
        })
    }

    /// Marks the start of the measured window.
    pub fn begin(&mut self) {
        self.read_into(true);
        self.peak_rss = self.start.iter().map(|s| s.rss).sum();
    }

    /// A periodic sample for peak RSS; also the latest end reading.
    pub fn tick(&mut self) {
        self.read_into(false);
        self.peak_rss = self.peak_rss.max(self.end.iter().map(|s| s.rss).sum());
    }

    fn read_into(&mut self, start: bool) {
        for (i, &pid) in self.pids.iter().enumerate() {
            // A process that exited keeps its last reading.
            if let Ok(s) = sample(pid) {
                if start {
                    self.start[i] = s;
                }
                self.end[i] = s;
            }
        }
    }

    /// The usage between `begin` and the last `tick`.
    pub fn usage(&self) -> Usage {
        let tps = ticks_per_sec();
        let sum = |f: fn(&Sample) -> u64| -> f64 {
            self.start
                .iter()
                .zip(&self.end)
                .map(|(a, b)| f(b).saturating_sub(f(a)) as f64 / tps)
                .sum()
        };
        Usage {
            pids: self.pids.clone(),
            user_s: sum(|s| s.utime),
            system_s: sum(|s| s.stime),
            peak_rss_bytes: self.peak_rss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let line = "1234 (my (odd) srv) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.utime, s.stime), (250, 75));
        assert_eq!(s.rss, 300 * page_size());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn samples_this_process() {
        let pid = std::process::id();
        let mut m = Monitor::new(&[pid]).unwrap();
        m.begin();
        // Burn a little CPU so the window is not empty.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        m.tick();
        let u = m.usage();
        assert!(u.peak_rss_bytes > 0);
        assert!(u.cpu_s() >= 0.0 && x > 0);
        assert!(Monitor::new(&[u32::MAX]).is_err());
    }
}
