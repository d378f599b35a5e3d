//! Choosing a precompressed representation (`.br`, `.zst`, `.gz` sibling) from `Accept-Encoding`.

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
    pub const ALL: [Encoding; 4] = [Encoding::Brotli, Encoding::Zstd, Encoding::Gzip, Encoding::Identity];

    /// The `Content-Encoding` token: `br`, `zstd`, `gzip`; `identity` for identity.
    pub fn token(self) -> &'static str {
        todo!()
    }

    /// The sibling file's suffix: `.br`, `.zst`, `.gz`; empty for identity.
    pub fn suffix(self) -> &'static str {
        todo!()
    }
}

/// A small set of encodings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodingSet(u8);

impl EncodingSet {
    pub fn insert(&mut self, e: Encoding) {
        let _ = e;
        todo!()
    }
    pub fn contains(self, e: Encoding) -> bool {
        let _ = e;
        todo!()
    }
    /// True when no coding other than identity is in the set.
    pub fn only_identity(self) -> bool {
        todo!()
    }
}

/// Picks the representation to send, given every `Accept-Encoding` field value of the request
/// and the codings that have a sibling file (`available`; identity is always available).
pub fn choose<'a>(accept_encoding: impl IntoIterator<Item = &'a [u8]>, available: EncodingSet) -> Encoding {
    let _ = (accept_encoding.into_iter(), available);
    todo!()
}
