//! Conditional requests (RFC 9110 §13): If-Match, If-Unmodified-Since, If-None-Match,
//! If-Modified-Since, evaluated in the order §13.2.2 prescribes.

use crate::http::headers::Headers;

/// The validators of the selected representation.
#[derive(Clone, Copy, Debug)]
pub struct Validators<'a> {
    /// The strong entity-tag, quotes included: `"5f1a-2b"`.
    pub etag: &'a [u8],
    /// Last modification, in whole seconds since the Unix epoch.
    pub last_modified: u64,
}

/// What the preconditions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Go on and answer normally (ranges may still apply).
    Proceed,
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Evaluates the request's preconditions against `v`. `safe` is true for GET and HEAD.
///
/// Malformed fields: an If-Match that does not parse cannot match, so it fails (the client
/// asked for a guarantee we cannot give); an If-None-Match that does not parse does not match,
/// yet still counts as present, so If-Modified-Since stays ignored (§13.2.2 step 3). A date
/// field that is not an HTTP-date, or that appears on more than one line, is ignored (§13.1.3,
/// §13.1.4).
pub fn evaluate(headers: &Headers<'_>, v: &Validators<'_>, safe: bool) -> Precondition {
    let current = EntityTag::parse(v.etag);

    // Step 1, else step 2.
    if headers.count("if-match") > 0 {
        let matched = match parse_list(headers.get_all("if-match")) {
            Some(List::Any) => true,
            Some(List::Tags(tags)) => current.is_some_and(|c| tags.iter().any(|t| t.strong_eq(&c))),
            None => false,
        };
        if !matched {
            return Precondition::Failed;
        }
    } else if let Some(date) = single_date(headers, "if-unmodified-since") {
        if v.last_modified > date {
            return Precondition::Failed;
        }
    }

    // Step 3, else step 4.
    if headers.count("if-none-match") > 0 {
        let matched = match parse_list(headers.get_all("if-none-match")) {
            Some(List::Any) => true,
            Some(List::Tags(tags)) => current.is_some_and(|c| tags.iter().any(|t| t.weak_eq(&c))),
            None => false,
        };
        if matched {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe {
        if let Some(date) = single_date(headers, "if-modified-since") {
            if v.last_modified <= date {
                return Precondition::NotModified;
            }
        }
    }

    Precondition::Proceed
}

/// The seconds since the epoch of a date field that appears exactly once and parses.
fn single_date(headers: &Headers<'_>, name: &str) -> Option<u64> {
    if headers.count(name) != 1 {
        return None;
    }
    http_date(headers.get(name)?)
}

/// An HTTP-date (any of the three formats RFC 9110 §5.6.7 makes recipients accept), in whole
/// seconds since the epoch.
pub(crate) fn http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value.trim_ascii()).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    // httpdate never yields a date before 1970, so this only fails in theory.
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// An entity-tag (RFC 9110 §8.8.3), borrowed from the field value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntityTag<'a> {
    pub weak: bool,
    /// The opaque-tag, quotes included.
    pub opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// Parses a field value that is exactly one entity-tag (surrounding whitespace allowed).
    pub(crate) fn parse(value: &'a [u8]) -> Option<EntityTag<'a>> {
        let value = value.trim_ascii();
        match EntityTag::parse_prefix(value) {
            Some((tag, [])) => Some(tag),
            _ => None,
        }
    }

    /// Parses an entity-tag at the start of `s`, returning it and what follows.
    fn parse_prefix(s: &'a [u8]) -> Option<(EntityTag<'a>, &'a [u8])> {
        // `W/` is case-sensitive (`%s"W/"`).
        let (weak, quoted) = match s.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let body = quoted.strip_prefix(b"\"")?;
        // etagc is %x21 / %x23-7E / obs-text: anything visible but DQUOTE, commas included.
        let close = body.iter().position(|&b| b == b'"')?;
        if !body[..close]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        let (opaque, rest) = quoted.split_at(close + 2);
        Some((EntityTag { weak, opaque }, rest))
    }

    /// Strong comparison (§8.8.3.2): neither tag is weak and the opaque-tags are identical.
    pub(crate) fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the opaque-tags are identical, weakness aside.
    pub(crate) fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// The value of If-Match or If-None-Match: `"*" / #entity-tag`.
#[derive(Debug, PartialEq, Eq)]
enum List<'a> {
    Any,
    Tags(Vec<EntityTag<'a>>),
}

/// Parses the field lines of an If-Match or If-None-Match as one list. Quoted strings are
/// scanned, not split on commas, since an opaque-tag may contain commas. `None` when any line
/// is malformed, when the list is empty, or when `*` is mixed with tags (the grammar allows `*`
/// only alone).
fn parse_list<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<List<'a>> {
    let mut any = false;
    let mut tags = Vec::new();
    for line in lines {
        let mut rest = line;
        loop {
            // Empty list elements are legal and skipped (§5.6.1.2).
            rest = rest.trim_ascii_start();
            while let Some(r) = rest.strip_prefix(b",") {
                rest = r.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            if let Some(r) = rest.strip_prefix(b"*") {
                any = true;
                rest = r;
            } else {
                let (tag, r) = EntityTag::parse_prefix(rest)?;
                tags.push(tag);
                rest = r;
            }
            rest = rest.trim_ascii_start();
            match rest.first() {
                None | Some(b',') => {}
                Some(_) => return None,
            }
        }
    }
    match (any, tags.is_empty()) {
        (true, true) => Some(List::Any),
        (false, false) => Some(List::Tags(tags)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Precondition::{Failed, NotModified, Proceed};
    use super::*;

    // Sun, 06 Nov 1994 08:49:37 GMT
    const LM: u64 = 784_111_777;
    const LM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const BEFORE: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
    const AFTER: &str = "Sun, 06 Nov 1994 08:49:38 GMT";

    fn v() -> Validators<'static> {
        Validators {
            etag: b"\"5f1a-2b\"",
            last_modified: LM,
        }
    }

    fn eval(fields: &[(&str, &str)], safe: bool) -> Precondition {
        let fields: Vec<_> = fields
            .iter()
            .map(|&(name, value)| httparse::Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        evaluate(&Headers::new(&fields), &v(), safe)
    }

    fn get(fields: &[(&str, &str)]) -> Precondition {
        eval(fields, true)
    }

    #[test]
    fn no_preconditions() {
        assert_eq!(get(&[]), Proceed);
        assert_eq!(eval(&[], false), Proceed);
        assert_eq!(get(&[("Host", "x"), ("Range", "bytes=0-1")]), Proceed);
    }

    #[test]
    fn http_date_formats() {
        assert_eq!(http_date(LM_DATE.as_bytes()), Some(LM));
        assert_eq!(http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(LM));
        assert_eq!(http_date(b"Sun Nov  6 08:49:37 1994"), Some(LM));
        assert_eq!(http_date(b" Sun, 06 Nov 1994 08:49:37 GMT "), Some(LM));
        assert_eq!(http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"\xff",
            b"1994-11-06T08:49:37Z",
        ] {
            assert_eq!(http_date(bad), None);
        }
    }

    #[test]
    fn entity_tag_parsing() {
        let t = |s: &'static [u8]| EntityTag::parse(s);
        assert_eq!(
            t(b"\"abc\""),
            Some(EntityTag {
                weak: false,
                opaque: b"\"abc\""
            })
        );
        assert_eq!(
            t(b"W/\"abc\""),
            Some(EntityTag {
                weak: true,
                opaque: b"\"abc\""
            })
        );
        assert_eq!(
            t(b"\"\""),
            Some(EntityTag {
                weak: false,
                opaque: b"\"\""
            })
        );
        assert_eq!(
            t(b"\"a,b\""),
            Some(EntityTag {
                weak: false,
                opaque: b"\"a,b\""
            })
        );
        assert_eq!(
            t(b" \"a\" "),
            Some(EntityTag {
                weak: false,
                opaque: b"\"a\""
            })
        );
        for bad in [
            &b""[..],
            b"abc",
            b"\"abc",
            b"w/\"abc\"",
            b"W/abc",
            b"\"a\"b",
            b"\"a b\"",
            b"\"a\"\"",
            b"W/",
        ] {
            assert_eq!(t(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn list_parsing() {
        let p = |lines: &[&'static str]| parse_list(lines.iter().map(|l| l.as_bytes()));
        assert_eq!(p(&["*"]), Some(List::Any));
        assert_eq!(p(&[" * "]), Some(List::Any));
        assert_eq!(
            p(&["\"a\", W/\"b\"", "", ",\"c,d\" ,"]),
            Some(List::Tags(vec![
                EntityTag {
                    weak: false,
                    opaque: b"\"a\""
                },
                EntityTag {
                    weak: true,
                    opaque: b"\"b\""
                },
                EntityTag {
                    weak: false,
                    opaque: b"\"c,d\""
                },
            ]))
        );
        for bad in [
            &[""][..],
            &[" , "],
            &["*, \"a\""],
            &["\"a\"", "*"],
            &["a"],
            &["\"a\" \"b\""],
            &["\"a"],
            &["**"],
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn if_match() {
        assert_eq!(get(&[("If-Match", "*")]), Proceed);
        assert_eq!(get(&[("If-Match", "\"5f1a-2b\"")]), Proceed);
        assert_eq!(get(&[("If-Match", "\"x\", \"5f1a-2b\"")]), Proceed);
        assert_eq!(
            get(&[("If-Match", "\"x\""), ("if-match", "\"5f1a-2b\"")]),
            Proceed
        );
        assert_eq!(get(&[("If-Match", "\"x\"")]), Failed);
        assert_eq!(eval(&[("If-Match", "\"x\"")], false), Failed);
        // Weak tags never match strongly, even with the same opaque-tag.
        assert_eq!(get(&[("If-Match", "W/\"5f1a-2b\"")]), Failed);
        // Malformed If-Match cannot be satisfied.
        assert_eq!(get(&[("If-Match", "5f1a-2b")]), Failed);
        assert_eq!(get(&[("If-Match", "")]), Failed);
        // A comma inside the opaque-tag is not a separator.
        assert_eq!(get(&[("If-Match", "\"5f1a,2b\"")]), Failed);
    }

    #[test]
    fn comma_inside_tag_matches_whole() {
        let fields = [httparse::Header {
            name: "If-None-Match",
            value: b"\"a,b\"",
        }];
        let h = Headers::new(&fields);
        let v = Validators {
            etag: b"\"a,b\"",
            last_modified: LM,
        };
        assert_eq!(evaluate(&h, &v, true), NotModified);
        let v = Validators {
            etag: b"\"a\"",
            last_modified: LM,
        };
        assert_eq!(evaluate(&h, &v, true), Proceed);
    }

    #[test]
    fn if_match_overrides_if_unmodified_since() {
        assert_eq!(
            get(&[("If-Match", "\"5f1a-2b\""), ("If-Unmodified-Since", BEFORE)]),
            Proceed
        );
        assert_eq!(
            get(&[("If-Match", "\"nope\""), ("If-Unmodified-Since", AFTER)]),
            Failed
        );
    }

    #[test]
    fn if_unmodified_since() {
        assert_eq!(get(&[("If-Unmodified-Since", LM_DATE)]), Proceed);
        assert_eq!(get(&[("If-Unmodified-Since", AFTER)]), Proceed);
        assert_eq!(get(&[("If-Unmodified-Since", BEFORE)]), Failed);
        assert_eq!(eval(&[("If-Unmodified-Since", BEFORE)], false), Failed);
        // Invalid or repeated dates are ignored.
        assert_eq!(get(&[("If-Unmodified-Since", "garbage")]), Proceed);
        assert_eq!(
            get(&[
                ("If-Unmodified-Since", BEFORE),
                ("If-Unmodified-Since", BEFORE)
            ]),
            Proceed
        );
    }

    #[test]
    fn if_none_match() {
        assert_eq!(get(&[("If-None-Match", "\"5f1a-2b\"")]), NotModified);
        assert_eq!(get(&[("If-None-Match", "W/\"5f1a-2b\"")]), NotModified);
        assert_eq!(
            get(&[("If-None-Match", "\"a\", W/\"5f1a-2b\"")]),
            NotModified
        );
        assert_eq!(
            get(&[("If-None-Match", "\"a\""), ("If-None-Match", "\"5f1a-2b\"")]),
            NotModified
        );
        assert_eq!(get(&[("If-None-Match", "*")]), NotModified);
        assert_eq!(get(&[("If-None-Match", "\"a\", \"b\"")]), Proceed);
        assert_eq!(eval(&[("If-None-Match", "\"5f1a-2b\"")], false), Failed);
        assert_eq!(eval(&[("If-None-Match", "*")], false), Failed);
        assert_eq!(eval(&[("If-None-Match", "\"a\"")], false), Proceed);
        // Unquoted tags (a common client bug) are malformed, hence no match.
        assert_eq!(get(&[("If-None-Match", "5f1a-2b")]), Proceed);
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        assert_eq!(
            get(&[("If-None-Match", "\"other\""), ("If-Modified-Since", AFTER)]),
            Proceed
        );
        assert_eq!(
            get(&[("If-None-Match", "garbage"), ("If-Modified-Since", AFTER)]),
            Proceed
        );
        assert_eq!(
            get(&[
                ("If-None-Match", "\"5f1a-2b\""),
                ("If-Modified-Since", BEFORE)
            ]),
            NotModified
        );
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(get(&[("If-Modified-Since", LM_DATE)]), NotModified);
        assert_eq!(get(&[("If-Modified-Since", AFTER)]), NotModified);
        assert_eq!(get(&[("If-Modified-Since", BEFORE)]), Proceed);
        assert_eq!(
            get(&[("If-Modified-Since", "Sun Nov  6 08:49:37 1994")]),
            NotModified
        );
        // Only GET and HEAD.
        assert_eq!(eval(&[("If-Modified-Since", AFTER)], false), Proceed);
        assert_eq!(get(&[("If-Modified-Since", "not a date")]), Proceed);
        assert_eq!(
            get(&[("If-Modified-Since", AFTER), ("If-Modified-Since", AFTER)]),
            Proceed
        );
    }

    #[test]
    fn failure_beats_not_modified() {
        assert_eq!(
            get(&[("If-Match", "\"x\""), ("If-None-Match", "\"5f1a-2b\"")]),
            Failed
        );
        assert_eq!(
            get(&[("If-Unmodified-Since", BEFORE), ("If-None-Match", "*")]),
            Failed
        );
        assert_eq!(
            get(&[("If-Match", "*"), ("If-None-Match", "*")]),
            NotModified
        );
    }

    #[test]
    fn weak_current_etag_never_matches_strongly() {
        let fields = [httparse::Header {
            name: "If-Match",
            value: b"W/\"a\", \"a\"",
        }];
        let v = Validators {
            etag: b"W/\"a\"",
            last_modified: LM,
        };
        assert_eq!(evaluate(&Headers::new(&fields), &v, true), Failed);
        let fields = [httparse::Header {
            name: "If-None-Match",
            value: b"\"a\"",
        }];
        assert_eq!(evaluate(&Headers::new(&fields), &v, true), NotModified);
    }

    #[test]
    fn never_panics() {
        for value in [
            &b"\""[..],
            b"W/",
            b"W/\"",
            b",,,",
            b"*,*",
            b"\xff\"\xff\"",
            b"\"\"\"",
            b"W/W/\"a\"",
        ] {
            for name in [
                "If-Match",
                "If-None-Match",
                "If-Modified-Since",
                "If-Unmodified-Since",
            ] {
                let fields = [httparse::Header { name, value }];
                let _ = evaluate(&Headers::new(&fields), &v(), true);
            }
        }
    }
}
