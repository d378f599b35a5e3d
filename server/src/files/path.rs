//! Decoding a request-target into a safe path relative to a mount, without touching the disk.

/// Why a request-target cannot name a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// The target is malformed (bad percent-escape, NUL, not origin- or absolute-form): 400.
    BadRequest,
    /// The target is well-formed but can never name a servable file: 404.
    NotFound,
}

/// Decodes the path part of a request-target (origin-form `/a/b?q` or absolute-form
/// `http://host/a/b?q`), percent-decoding exactly once.
///
/// The result starts with `/` and is valid UTF-8. Refused: NUL (400), malformed escapes (400),
/// `..` segments (400), `.` segments, backslashes, encoded slashes (`%2F`), empty segments,
/// and dot-files (any segment starting with `.`) (404).
pub fn decode_target(target: &[u8]) -> Result<String, PathError> {
    let _ = target;
    todo!()
}
