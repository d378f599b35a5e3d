//! Range requests (RFC 9110 §14): parsing `Range`, honouring `If-Range`, deciding 206 or 416.

use crate::http::headers::{Headers, list_elements};
use crate::serve::conditional::{EntityTag, Validators, http_date};

/// One satisfiable byte range, `start..start + len` of the representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

/// What to send for a GET that passed its preconditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole representation (no Range, an ignored Range, or a failed If-Range).
    Full,
    /// 206 with these ranges: one as a single part, several as multipart/byteranges.
    Partial(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// After coalescing, a request for more ranges than this gets the whole representation: no
/// legitimate client needs more, and each part costs a multipart header.
const MAX_RANGES: usize = 32;

/// Decides the ranges to send of a representation `len` bytes long.
///
/// Any syntax error anywhere in `Range` (including `last < first`), a unit other than `bytes`,
/// or more than one `Range` line means the header is ignored (Full). Numbers too large for a
/// `u64` saturate at `u64::MAX`, which lands where such a number belongs: a first-pos past the
/// end (unsatisfiable), a last-pos clamped to the end, a suffix covering everything.
pub fn evaluate(headers: &Headers<'_>, v: &Validators<'_>, len: u64) -> RangeOutcome {
    // If-Range only means something next to a Range (§13.1.5), so look at Range first.
    let range = match headers.count("range") {
        1 => headers.get("range").unwrap_or_default(),
        _ => return RangeOutcome::Full,
    };
    if headers.count("if-range") > 0 && !if_range_holds(headers, v) {
        return RangeOutcome::Full;
    }
    let Some(specs) = parse_range(range) else {
        return RangeOutcome::Full;
    };

    let mut ranges: Vec<ByteRange> = specs.into_iter().filter_map(|s| s.resolve(len)).collect();
    if ranges.is_empty() {
        return RangeOutcome::Unsatisfiable;
    }
    // Coalescing overlapping and adjacent ranges (§14.2 allows it) bounds the response by the
    // file size, whatever the request: `bytes=0-,0-,0-,...` becomes one part.
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            // Both ends are at most `len`, so neither sum can overflow.
            Some(last) if r.start <= last.start + last.len => {
                let end = (last.start + last.len).max(r.start + r.len);
                last.len = end - last.start;
            }
            _ => merged.push(r),
        }
    }
    if merged.len() > MAX_RANGES {
        return RangeOutcome::Full;
    }
    RangeOutcome::Partial(merged)
}

/// Whether the If-Range condition (§13.1.5) holds, so that the Range may be honoured.
fn if_range_holds(headers: &Headers<'_>, v: &Validators<'_>) -> bool {
    // The field is a single entity-tag or date; several lines cannot be that.
    if headers.count("if-range") != 1 {
        return false;
    }
    let Some(value) = headers.get("if-range") else {
        return false;
    };
    let value = value.trim_ascii();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        // A weak tag is never strong-equal, which is what makes a range safe to splice.
        return match (EntityTag::parse(value), EntityTag::parse(v.etag)) {
            (Some(asked), Some(current)) => asked.strong_eq(&current),
            _ => false,
        };
    }
    http_date(value) == Some(v.last_modified)
}

/// One `range-spec` as written, before the representation's length is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-` (`last` None) or `first-last`.
    Int { first: u64, last: Option<u64> },
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

impl Spec {
    /// The bytes this spec selects of a `len`-byte representation, if any.
    fn resolve(self, len: u64) -> Option<ByteRange> {
        match self {
            Spec::Int { first, last } => {
                if first >= len {
                    return None;
                }
                // first < len, so len - 1 is fine, and end >= first by the syntax check.
                let end = last.map_or(len - 1, |l| l.min(len - 1));
                Some(ByteRange {
                    start: first,
                    len: end - first + 1,
                })
            }
            Spec::Suffix(0) => None,
            Spec::Suffix(n) => {
                if len == 0 {
                    return None;
                }
                let n = n.min(len);
                Some(ByteRange {
                    start: len - n,
                    len: n,
                })
            }
        }
    }
}

/// Parses `bytes=range-spec, ...`; `None` on any syntax error or another unit.
fn parse_range(value: &[u8]) -> Option<Vec<Spec>> {
    let value = value.trim_ascii();
    let eq = memchr::memchr(b'=', value)?;
    let (unit, set) = (&value[..eq], &value[eq + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in list_elements(set) {
        let dash = memchr::memchr(b'-', element)?;
        let (first, last) = (&element[..dash], &element[dash + 1..]);
        let spec = if first.is_empty() {
            Spec::Suffix(parse_number(last)?)
        } else {
            let first = parse_number(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(parse_number(last)?)
            };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            Spec::Int { first, last }
        };
        specs.push(spec);
    }
    // range-set is `1#range-spec`: `bytes=` or `bytes=,` is not a range request.
    if specs.is_empty() { None } else { Some(specs) }
}

/// `1*DIGIT`, saturating at `u64::MAX` (see [`evaluate`]).
fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::RangeOutcome::{Full, Partial, Unsatisfiable};
    use super::*;

    const LM: u64 = 784_111_777;
    const LM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const ETAG: &[u8] = b"\"5f1a-2b\"";

    fn eval_with(fields: &[(&str, &str)], etag: &[u8], len: u64) -> RangeOutcome {
        let fields: Vec<_> = fields
            .iter()
            .map(|&(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        let v = Validators {
            etag,
            last_modified: LM,
        };
        evaluate(&Headers::new(&fields), &v, len)
    }

    fn eval(range: &str, len: u64) -> RangeOutcome {
        eval_with(&[("Range", range)], ETAG, len)
    }

    fn parts(ranges: &[(u64, u64)]) -> RangeOutcome {
        Partial(
            ranges
                .iter()
                .map(|&(start, len)| ByteRange { start, len })
                .collect(),
        )
    }

    #[test]
    fn no_range_is_full() {
        assert_eq!(eval_with(&[], ETAG, 100), Full);
        assert_eq!(eval_with(&[("If-Range", "\"5f1a-2b\"")], ETAG, 100), Full);
    }

    #[test]
    fn single_ranges() {
        assert_eq!(eval("bytes=0-0", 100), parts(&[(0, 1)]));
        assert_eq!(eval("bytes=0-99", 100), parts(&[(0, 100)]));
        assert_eq!(eval("bytes=10-19", 100), parts(&[(10, 10)]));
        assert_eq!(eval("bytes=99-99", 100), parts(&[(99, 1)]));
        assert_eq!(eval("bytes=50-", 100), parts(&[(50, 50)]));
        assert_eq!(eval("bytes=0-", 100), parts(&[(0, 100)]));
        assert_eq!(eval("bytes=-1", 100), parts(&[(99, 1)]));
        assert_eq!(eval("bytes=-100", 100), parts(&[(0, 100)]));
        assert_eq!(eval("bytes=-500", 100), parts(&[(0, 100)]));
    }

    #[test]
    fn last_past_the_end_is_clamped() {
        assert_eq!(eval("bytes=90-200", 100), parts(&[(90, 10)]));
        assert_eq!(
            eval("bytes=0-18446744073709551615", 100),
            parts(&[(0, 100)])
        );
        assert_eq!(
            eval("bytes=0-99999999999999999999999999", 100),
            parts(&[(0, 100)])
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(eval("bytes=100-", 100), Unsatisfiable);
        assert_eq!(eval("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(eval("bytes=-0", 100), Unsatisfiable);
        assert_eq!(eval("bytes=100-, -0", 100), Unsatisfiable);
        assert_eq!(eval("bytes=18446744073709551615-", 100), Unsatisfiable);
        assert_eq!(eval("bytes=99999999999999999999999-", 100), Unsatisfiable);
        assert_eq!(
            eval(
                "bytes=99999999999999999999999-99999999999999999999999",
                u64::MAX
            ),
            Unsatisfiable
        );
    }

    #[test]
    fn empty_representation() {
        for r in [
            "bytes=0-0",
            "bytes=0-",
            "bytes=-1",
            "bytes=-0",
            "bytes=5-10",
        ] {
            assert_eq!(eval(r, 0), Unsatisfiable, "{r}");
        }
        assert_eq!(eval("bytes=abc", 0), Full);
    }

    #[test]
    fn huge_representation() {
        assert_eq!(eval("bytes=-1", u64::MAX), parts(&[(u64::MAX - 1, 1)]));
        assert_eq!(eval("bytes=0-", u64::MAX), parts(&[(0, u64::MAX)]));
        assert_eq!(
            eval("bytes=0-18446744073709551615", u64::MAX),
            parts(&[(0, u64::MAX)])
        );
        assert_eq!(
            eval("bytes=-99999999999999999999999", u64::MAX),
            parts(&[(0, u64::MAX)])
        );
        assert_eq!(
            eval("bytes=0-0,-1", u64::MAX),
            parts(&[(0, 1), (u64::MAX - 1, 1)])
        );
    }

    #[test]
    fn multiple_ranges() {
        assert_eq!(eval("bytes=0-0,-1", 100), parts(&[(0, 1), (99, 1)]));
        assert_eq!(eval("bytes=0-0, -1", 100), parts(&[(0, 1), (99, 1)]));
        // Sorted.
        assert_eq!(eval("bytes=50-59,0-9", 100), parts(&[(0, 10), (50, 10)]));
        // Unsatisfiable members are dropped.
        assert_eq!(eval("bytes=200-300,0-9", 100), parts(&[(0, 10)]));
        // Empty list elements are allowed.
        assert_eq!(eval("bytes=,0-9,,20-29,", 100), parts(&[(0, 10), (20, 10)]));
    }

    #[test]
    fn coalescing() {
        assert_eq!(eval("bytes=0-10,5-20", 100), parts(&[(0, 21)]));
        // Adjacent.
        assert_eq!(eval("bytes=0-9,10-19", 100), parts(&[(0, 20)]));
        // Contained.
        assert_eq!(eval("bytes=0-50,10-20", 100), parts(&[(0, 51)]));
        // A gap of one byte keeps them apart.
        assert_eq!(eval("bytes=0-9,11-19", 100), parts(&[(0, 10), (11, 9)]));
        assert_eq!(eval("bytes=-10,0-", 100), parts(&[(0, 100)]));
        assert_eq!(eval("bytes=90-,-5", 100), parts(&[(90, 10)]));
        let many = format!("bytes={}", vec!["0-"; 1000].join(","));
        assert_eq!(eval(&many, 100), parts(&[(0, 100)]));
    }

    #[test]
    fn too_many_ranges() {
        let spec = |n: u64| {
            (0..n)
                .map(|i| format!("{}-{}", i * 2, i * 2))
                .collect::<Vec<_>>()
                .join(",")
        };
        let expected: Vec<_> = (0..32)
            .map(|i| ByteRange {
                start: i * 2,
                len: 1,
            })
            .collect();
        assert_eq!(
            eval(&format!("bytes={}", spec(32)), 1000),
            Partial(expected)
        );
        assert_eq!(eval(&format!("bytes={}", spec(33)), 1000), Full);
        // Many specs that coalesce are fine.
        let adjacent = (0..100)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(eval(&format!("bytes={adjacent}"), 1000), parts(&[(0, 100)]));
    }

    #[test]
    fn syntax_errors_mean_full() {
        for r in [
            "bytes=abc",
            "bytes=",
            "bytes=,",
            "bytes",
            "bytes=-",
            "bytes=5",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=10-5",
            "bytes=0-0,abc",
            "bytes=0-0,10-5",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=1 - 2",
            "bytes =0-1",
            "bytes= 0-1;",
            "bytes=0-1;q=1",
            "=0-1",
            "",
            "bytes=\u{661}-2",
        ] {
            assert_eq!(eval(r, 100), Full, "{r:?}");
        }
    }

    #[test]
    fn other_units_are_ignored() {
        assert_eq!(eval("items=0-1", 100), Full);
        assert_eq!(eval("none", 100), Full);
        assert_eq!(eval("bytesx=0-1", 100), Full);
        assert_eq!(eval("BYTES=0-1", 100), parts(&[(0, 2)]));
        assert_eq!(eval("Bytes=0-1", 100), parts(&[(0, 2)]));
    }

    #[test]
    fn repeated_range_field_is_ignored() {
        assert_eq!(
            eval_with(&[("Range", "bytes=0-1"), ("range", "bytes=2-3")], ETAG, 100),
            Full
        );
        assert_eq!(
            eval_with(&[("Range", "bytes=0-1"), ("Range", "bytes=0-1")], ETAG, 100),
            Full
        );
    }

    #[test]
    fn if_range_entity_tag() {
        let r = ("Range", "bytes=0-9");
        assert_eq!(
            eval_with(&[r, ("If-Range", "\"5f1a-2b\"")], ETAG, 100),
            parts(&[(0, 10)])
        );
        assert_eq!(
            eval_with(&[("If-Range", " \"5f1a-2b\" "), r], ETAG, 100),
            parts(&[(0, 10)])
        );
        assert_eq!(eval_with(&[r, ("If-Range", "\"other\"")], ETAG, 100), Full);
        // Weak tags never match, not even the same opaque-tag.
        assert_eq!(
            eval_with(&[r, ("If-Range", "W/\"5f1a-2b\"")], ETAG, 100),
            Full
        );
        assert_eq!(
            eval_with(&[r, ("If-Range", "\"a\"")], b"W/\"a\"", 100),
            Full
        );
        // Malformed or listed values.
        assert_eq!(eval_with(&[r, ("If-Range", "\"5f1a-2b")], ETAG, 100), Full);
        assert_eq!(
            eval_with(&[r, ("If-Range", "\"5f1a-2b\", \"x\"")], ETAG, 100),
            Full
        );
        assert_eq!(eval_with(&[r, ("If-Range", "*")], ETAG, 100), Full);
        assert_eq!(eval_with(&[r, ("If-Range", "")], ETAG, 100), Full);
        assert_eq!(
            eval_with(
                &[r, ("If-Range", "\"5f1a-2b\""), ("If-Range", "\"5f1a-2b\"")],
                ETAG,
                100
            ),
            Full
        );
    }

    #[test]
    fn if_range_date() {
        let r = ("Range", "bytes=0-9");
        assert_eq!(
            eval_with(&[r, ("If-Range", LM_DATE)], ETAG, 100),
            parts(&[(0, 10)])
        );
        assert_eq!(
            eval_with(
                &[r, ("If-Range", "Sunday, 06-Nov-94 08:49:37 GMT")],
                ETAG,
                100
            ),
            parts(&[(0, 10)])
        );
        // Exactly equal, not merely "not modified since".
        assert_eq!(
            eval_with(
                &[r, ("If-Range", "Sun, 06 Nov 1994 08:49:38 GMT")],
                ETAG,
                100
            ),
            Full
        );
        assert_eq!(
            eval_with(
                &[r, ("If-Range", "Sun, 06 Nov 1994 08:49:36 GMT")],
                ETAG,
                100
            ),
            Full
        );
        assert_eq!(eval_with(&[r, ("If-Range", "tomorrow")], ETAG, 100), Full);
    }

    #[test]
    fn failed_if_range_beats_unsatisfiable() {
        assert_eq!(
            eval_with(&[("Range", "bytes=500-"), ("If-Range", "\"x\"")], ETAG, 100),
            Full
        );
        assert_eq!(
            eval_with(
                &[("Range", "bytes=500-"), ("If-Range", "\"5f1a-2b\"")],
                ETAG,
                100
            ),
            Unsatisfiable
        );
    }

    #[test]
    fn number_parsing() {
        assert_eq!(parse_number(b"0"), Some(0));
        assert_eq!(parse_number(b"007"), Some(7));
        assert_eq!(parse_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(b"18446744073709551616"), Some(u64::MAX));
        assert_eq!(parse_number(&[b'9'; 10_000]), Some(u64::MAX));
        assert_eq!(parse_number(b""), None);
        assert_eq!(parse_number(b"1a"), None);
        assert_eq!(parse_number(b"-1"), None);
    }

    #[test]
    fn never_panics() {
        let values: [&[u8]; 8] = [
            b"bytes=\xff-\xff",
            b"bytes==",
            b"bytes=-",
            b"=",
            b"\xff",
            b"bytes=0-,",
            b"bytes=-,-",
            b"bytes=0--",
        ];
        for value in values {
            for len in [0, 1, 100, u64::MAX] {
                let fields = [httparse::Header {
                    name: "Range",
                    value,
                }];
                let v = Validators {
                    etag: ETAG,
                    last_modified: LM,
                };
                let _ = evaluate(&Headers::new(&fields), &v, len);
            }
        }
    }
}
