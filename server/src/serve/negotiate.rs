//! Choosing a precompressed representation (`.br`, `.zst`, `.gz` sibling) from `Accept-Encoding`.

use crate::http::headers::list_elements;

/// A content-coding this server can serve from a precompressed sibling file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Brotli,
    Zstd,
    Gzip,
}

impl Encoding {
    /// Every coding, in the server's order of preference (smallest first), identity last.
    pub const ALL: [Encoding; 4] = [
        Encoding::Brotli,
        Encoding::Zstd,
        Encoding::Gzip,
        Encoding::Identity,
    ];

    /// The `Content-Encoding` token: `br`, `zstd`, `gzip`; `identity` for identity.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix: `.br`, `.zst`, `.gz`; empty for identity.
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Brotli => ".br",
            Encoding::Zstd => ".zst",
            Encoding::Gzip => ".gz",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Encoding::Identity => 1 << 0,
            Encoding::Brotli => 1 << 1,
            Encoding::Zstd => 1 << 2,
            Encoding::Gzip => 1 << 3,
        }
    }

    /// The coding an `Accept-Encoding` token names (case-insensitively), if we serve it.
    fn from_token(token: &[u8]) -> Option<Encoding> {
        let names: [(&[u8], Encoding); 5] = [
            (b"br", Encoding::Brotli),
            (b"zstd", Encoding::Zstd),
            (b"gzip", Encoding::Gzip),
            // RFC 9110 §8.4.1.3: recipients SHOULD treat x-gzip as gzip.
            (b"x-gzip", Encoding::Gzip),
            (b"identity", Encoding::Identity),
        ];
        names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(token))
            .map(|&(_, e)| e)
    }
}

/// A small set of encodings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodingSet(u8);

impl EncodingSet {
    pub fn insert(&mut self, e: Encoding) {
        self.0 |= e.bit();
    }
    pub fn contains(self, e: Encoding) -> bool {
        // The file itself is the identity representation, so it is always there.
        e == Encoding::Identity || self.0 & e.bit() != 0
    }
    /// True when no coding other than identity is in the set.
    pub fn only_identity(self) -> bool {
        self.0 & !Encoding::Identity.bit() == 0
    }
}

/// Picks the representation to send, given every `Accept-Encoding` field value of the request
/// and the codings that have a sibling file (`available`; identity is always available).
///
/// Decisions the RFC leaves open:
/// - a coding listed more than once gets its lowest weight, so a refusal (`q=0`) anywhere
///   sticks (`gzip` and `x-gzip` are the same coding);
/// - identity that is acceptable only by default (not listed, no `*`) ranks below every coding
///   the client listed with a non-zero weight: `gzip;q=0.5` gets gzip;
/// - an element that does not parse (bad token, bad or out-of-range `q`) is ignored as a
///   whole; other parameters are ignored;
/// - when nothing acceptable is available the answer is identity anyway, not 406.
pub fn choose<'a>(
    accept_encoding: impl IntoIterator<Item = &'a [u8]>,
    available: EncodingSet,
) -> Encoding {
    // Weights in thousandths, `None` when the coding is not listed.
    let mut listed: [Option<u16>; 4] = [None; 4];
    let mut star: Option<u16> = None;
    for value in accept_encoding {
        for element in list_elements(value) {
            let Some((coding, q)) = parse_element(element) else {
                continue;
            };
            let slot = if coding == b"*" {
                &mut star
            } else if let Some(e) = Encoding::from_token(coding) {
                &mut listed[index(e)]
            } else {
                // A coding we cannot serve (deflate, compress, ...): nothing to record.
                continue;
            };
            *slot = Some(slot.map_or(q, |old| old.min(q)));
        }
    }

    // Rank = weight * 2, leaving rank 1 for identity that is acceptable only by default.
    let rank = |e: Encoding| -> u32 {
        match (listed[index(e)], star, e) {
            (Some(q), _, _) | (None, Some(q), _) => u32::from(q) * 2,
            (None, None, Encoding::Identity) => 1,
            (None, None, _) => 0,
        }
    };

    let mut best = Encoding::Identity;
    let mut best_rank = 0;
    // `ALL` is in preference order, so a strict `>` keeps the preferred coding on ties.
    for e in Encoding::ALL {
        let r = rank(e);
        if available.contains(e) && r > best_rank {
            best = e;
            best_rank = r;
        }
    }
    best
}

fn index(e: Encoding) -> usize {
    match e {
        Encoding::Brotli => 0,
        Encoding::Zstd => 1,
        Encoding::Gzip => 2,
        Encoding::Identity => 3,
    }
}

/// `coding *( OWS ";" OWS param )` → the coding and its weight in thousandths (1000 if absent).
fn parse_element(element: &[u8]) -> Option<(&[u8], u16)> {
    let mut parts = element.split(|&b| b == b';');
    let coding = parts.next()?.trim_ascii();
    // `*` is itself a token character, so it passes here.
    if !is_token(coding) {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let (name, value) = match memchr::memchr(b'=', param) {
            Some(i) => (param[..i].trim_ascii(), param[i + 1..].trim_ascii()),
            None => return None,
        };
        if name.eq_ignore_ascii_case(b"q") {
            q = parse_qvalue(value)?;
        } else if !is_token(name) {
            return None;
        }
    }
    Some((coding, q))
}

/// RFC 9110 §12.4.2: `"0" [ "." 0*3DIGIT ] / "1" [ "." 0*3("0") ]`, in thousandths.
fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match memchr::memchr(b'.', v) {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most three digits, so this stays within 999.
    let thousandths: u16 = frac
        .iter()
        .zip([100, 10, 1])
        .map(|(&d, w)| u16::from(d - b'0') * w)
        .sum();
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::Encoding::{Brotli, Gzip, Identity, Zstd};
    use super::*;

    fn set(codings: &[Encoding]) -> EncodingSet {
        let mut s = EncodingSet::default();
        for &e in codings {
            s.insert(e);
        }
        s
    }

    const ALL: [Encoding; 3] = [Brotli, Zstd, Gzip];

    fn pick(values: &[&str], available: &[Encoding]) -> Encoding {
        choose(values.iter().map(|v| v.as_bytes()), set(available))
    }

    #[test]
    fn tokens_and_suffixes() {
        assert_eq!(
            Encoding::ALL.map(Encoding::token),
            ["br", "zstd", "gzip", "identity"]
        );
        assert_eq!(
            Encoding::ALL.map(Encoding::suffix),
            [".br", ".zst", ".gz", ""]
        );
    }

    #[test]
    fn set_basics() {
        let empty = EncodingSet::default();
        assert!(empty.contains(Identity));
        assert!(!empty.contains(Gzip));
        assert!(empty.only_identity());
        let mut s = empty;
        s.insert(Identity);
        assert!(s.only_identity());
        s.insert(Zstd);
        assert!(s.contains(Zstd) && !s.contains(Brotli) && !s.contains(Gzip));
        assert!(!s.only_identity());
        s.insert(Zstd);
        assert_eq!(s, set(&[Zstd, Identity]));
    }

    #[test]
    fn no_field_or_empty_field_is_identity() {
        assert_eq!(pick(&[], &ALL), Identity);
        assert_eq!(pick(&[""], &ALL), Identity);
        assert_eq!(pick(&["  ,  , "], &ALL), Identity);
    }

    #[test]
    fn browser_headers_prefer_smallest() {
        assert_eq!(pick(&["gzip, deflate, br, zstd"], &ALL), Brotli);
        assert_eq!(pick(&["gzip, deflate, br, zstd"], &[Zstd, Gzip]), Zstd);
        assert_eq!(pick(&["gzip, deflate, br"], &[Zstd, Gzip]), Gzip);
        assert_eq!(pick(&["gzip, deflate, br"], &[Zstd]), Identity);
        assert_eq!(pick(&["gzip, deflate, br, zstd"], &[]), Identity);
    }

    #[test]
    fn weights_beat_preference() {
        assert_eq!(pick(&["br;q=0.5, gzip"], &ALL), Gzip);
        assert_eq!(pick(&["br;q=0.5, gzip;q=0.8, zstd;q=0.9"], &ALL), Zstd);
        assert_eq!(pick(&["br;q=0.501, gzip;q=0.5"], &ALL), Brotli);
        assert_eq!(pick(&["gzip;q=1.0, br;q=1"], &ALL), Brotli);
        assert_eq!(pick(&["gzip;q=0.001"], &ALL), Gzip);
    }

    #[test]
    fn zero_weight_excludes() {
        assert_eq!(pick(&["br;q=0, gzip"], &ALL), Gzip);
        assert_eq!(pick(&["br;q=0.000, gzip;q=0"], &ALL), Identity);
        assert_eq!(pick(&["gzip;q=0"], &[Gzip]), Identity);
    }

    #[test]
    fn identity_handling() {
        // Listed identity competes on weight like any coding.
        assert_eq!(pick(&["gzip;q=0.5, identity"], &ALL), Identity);
        assert_eq!(pick(&["gzip, identity"], &ALL), Gzip);
        assert_eq!(pick(&["gzip;q=0.5, identity;q=0.5"], &ALL), Gzip);
        assert_eq!(pick(&["identity"], &ALL), Identity);
        // Implicit identity loses to anything listed with a positive weight.
        assert_eq!(pick(&["gzip;q=0.5"], &ALL), Gzip);
        // Excluded identity still comes back when nothing else is possible (no 406).
        assert_eq!(pick(&["identity;q=0"], &ALL), Identity);
        assert_eq!(pick(&["identity;q=0, gzip"], &[Brotli]), Identity);
        assert_eq!(pick(&["*;q=0"], &ALL), Identity);
    }

    #[test]
    fn star_matches_what_is_not_listed() {
        assert_eq!(pick(&["*"], &ALL), Brotli);
        assert_eq!(pick(&["*"], &[Gzip]), Gzip);
        assert_eq!(pick(&["*", "br;q=0"], &ALL), Zstd);
        assert_eq!(pick(&["*;q=0.1, gzip;q=0.2"], &ALL), Gzip);
        assert_eq!(pick(&["*;q=0.3, gzip;q=0.2"], &ALL), Brotli);
        assert_eq!(pick(&["*;q=0, gzip"], &ALL), Gzip);
        // `*` gives identity its weight when identity is not listed.
        assert_eq!(pick(&["*;q=0.5, br;q=0.4"], &ALL), Zstd);
        assert_eq!(pick(&["*;q=0.5, br;q=0.4"], &[Brotli]), Identity);
        assert_eq!(
            pick(&["*;q=0.5, identity;q=0.1, br;q=0.4"], &[Brotli]),
            Brotli
        );
    }

    #[test]
    fn x_gzip_is_gzip() {
        assert_eq!(pick(&["x-gzip"], &ALL), Gzip);
        assert_eq!(pick(&["X-GZIP;q=0.4, br;q=0.3"], &ALL), Gzip);
        assert_eq!(pick(&["x-gzip;q=0, gzip"], &[Gzip]), Identity);
    }

    #[test]
    fn repeated_codings_take_the_lowest_weight() {
        assert_eq!(pick(&["gzip, gzip;q=0"], &[Gzip]), Identity);
        assert_eq!(pick(&["br;q=0.2", "br"], &[Brotli, Gzip]), Brotli);
        assert_eq!(pick(&["br;q=0.2", "br, gzip;q=0.3"], &[Brotli, Gzip]), Gzip);
    }

    #[test]
    fn case_and_whitespace() {
        assert_eq!(pick(&["GZIP"], &ALL), Gzip);
        assert_eq!(pick(&["Br ; Q=0.9 , gzip ;q = 0.5"], &ALL), Brotli);
        assert_eq!(pick(&["\tbr\t;\tq=0.9"], &ALL), Brotli);
    }

    #[test]
    fn several_field_lines_are_one_list() {
        assert_eq!(pick(&["gzip", "br"], &ALL), Brotli);
        assert_eq!(pick(&["gzip", "br;q=0"], &ALL), Gzip);
    }

    #[test]
    fn malformed_elements_are_ignored() {
        for bad in [
            "br;q=2",
            "br;q=1.5",
            "br;q=1.001",
            "br;q=0.1234",
            "br;q=.5",
            "br;q=",
            "br;q",
            "br;q=abc",
            "br;q=-0",
            "br;q=0.5;q=x",
            "b r",
            "br;",
            ";q=1",
            "\"br\"",
            "br;=1",
            "br/1",
        ] {
            let v = format!("{bad}, gzip;q=0.5");
            assert_eq!(pick(&[&v], &ALL), Gzip, "{bad}");
        }
        // A malformed zero weight does not exclude either.
        assert_eq!(pick(&["gzip;q=0.0000, gzip;q=0.5"], &[Gzip]), Gzip);
    }

    #[test]
    fn qvalue_grammar() {
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"0."), Some(0));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.05"), Some(50));
        assert_eq!(parse_qvalue(b"0.999"), Some(999));
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        for bad in [
            &b""[..],
            b".",
            b"1.1",
            b"2",
            b"00.5",
            b"0.5.",
            b"0x1",
            b"+1",
            b"0.\xff",
        ] {
            assert_eq!(
                parse_qvalue(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        assert_eq!(pick(&["br;level=11"], &ALL), Brotli);
        assert_eq!(pick(&["br;level=11;q=0"], &[Brotli]), Identity);
    }

    #[test]
    fn never_panics() {
        let long = "br;q=0.5,".repeat(10_000);
        for v in [
            &b"\xff\xfe"[..],
            b";;;",
            b"=",
            b";=",
            b",;q=1",
            long.as_bytes(),
            b"*;q=0;*",
        ] {
            let _ = choose([v], set(&ALL));
        }
    }
}
