//! HTTP-dates (IMF-fixdate), with the current one rendered at most once a second per thread.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const LEN: usize = 29;

/// Renders `secs` since the Unix epoch as an IMF-fixdate.
pub fn format(secs: u64) -> [u8; LEN] {
    let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    let mut out = [0u8; LEN];
    out.copy_from_slice(&text.as_bytes()[..LEN]);
    out
}

/// Parses any of the three HTTP-date forms into seconds since the epoch; `None` if invalid.
pub fn parse(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Seconds since the epoch from the coarse realtime clock: a vDSO read with no syscall, and
/// precise enough for a one-second `Date`.
pub fn now_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on every Linux
    // this server supports, and on failure `ts` stays zeroed, which we handle below.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc == 0 && ts.tv_sec > 0 {
        ts.tv_sec as u64
    } else {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

thread_local! {
    static CURRENT: Cell<(u64, [u8; LEN])> = const { Cell::new((0, [0; LEN])) };
}

/// The current date as an IMF-fixdate, re-rendered only when the second changes.
pub fn current() -> [u8; LEN] {
    let now = now_secs();
    CURRENT.with(|cell| {
        let (secs, text) = cell.get();
        if secs == now {
            return text;
        }
        let text = format(now);
        cell.set((now, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_all_three_forms() {
        assert_eq!(&format(784111777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(784111777));
        assert_eq!(parse(b"yesterday"), None);
        assert_eq!(parse(b"\xff"), None);
    }

    #[test]
    fn current_date_is_well_formed() {
        let now = current();
        assert!(now.ends_with(b" GMT"));
        assert!(parse(&now).is_some());
    }
}
