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
pub fn evaluate(headers: &Headers<'_>, v: &Validators<'_>, safe: bool) -> Precondition {
    let _ = (headers, v, safe);
    todo!()
}
