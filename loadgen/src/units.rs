//! Parsing and printing of the quantities users type and read: durations,
//! rates, counts, percentages, byte sizes.

use crate::error::{Error, Result};

/// Parses `10s`, `1m`, `500ms`, `250us`, `1h`, `1.5s`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        Error::new(format!(
            "invalid duration {s:?} (expected e.g. 10s, 1m, 500ms)"
        ))
    })?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(Error::new(format!(
                "invalid duration {s:?} (units: us, ms, s, m, h)"
            )));
        }
    };
    let secs = value * scale;
    if !(0.0..=1e9).contains(&secs) {
        return Err(Error::new(format!("duration {s:?} out of range")));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Parses a positive count with an optional `k`/`m` suffix (`100k` = 100000).
pub fn parse_count(s: &str) -> Result<u64> {
    let v = parse_scaled(s).ok_or_else(|| Error::new(format!("invalid number {s:?}")))?;
    if v < 1.0 || v.fract() != 0.0 || v > 1e15 {
        return Err(Error::new(format!("{s:?} must be a positive whole number")));
    }
    Ok(v as u64)
}

/// Parses a positive rate in requests per second, with an optional `k` suffix.
pub fn parse_rate(s: &str) -> Result<f64> {
    let v = parse_scaled(s.trim_end_matches("/s"))
        .ok_or_else(|| Error::new(format!("invalid rate {s:?} (requests per second)")))?;
    if !(v > 0.0 && v <= 1e9) {
        return Err(Error::new(format!("rate {s:?} must be above 0")));
    }
    Ok(v)
}

fn parse_scaled(s: &str) -> Option<f64> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last()? {
        b'k' | b'K' => (&t[..t.len() - 1], 1e3),
        b'm' | b'M' => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    v.is_finite().then_some(v * mult)
}

/// Parses `5%`, `5` (also percent) or `0.5%` into a fraction (0.05).
pub fn parse_percent(s: &str) -> Result<f64> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| Error::new(format!("invalid percentage {s:?} (expected e.g. 5%)")))?;
    if !(0.0..=1000.0).contains(&v) {
        return Err(Error::new(format!("percentage {s:?} out of range")));
    }
    Ok(v / 100.0)
}

/// Formats microseconds with a unit that keeps 3 significant figures readable.
pub fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}us")
    }
}

/// Formats a byte count in binary units (KiB, MiB, GiB).
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.2}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn counts_rates_percents() {
        assert_eq!(parse_count("100k").unwrap(), 100_000);
        assert!(parse_count("0").is_err());
        assert!(parse_count("1.5").is_err());
        assert_eq!(parse_rate("2k").unwrap(), 2000.0);
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_percent("5%").unwrap(), 0.05);
        assert_eq!(parse_percent("5").unwrap(), 0.05);
        assert!(parse_percent("x%").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_us(612.0), "612us");
        assert_eq!(fmt_us(1234.0), "1.23ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
        assert_eq!(fmt_bytes(2048.0), "2.00KiB");
    }
}
