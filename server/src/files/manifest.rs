//! Django's `staticfiles.json` (ManifestStaticFilesStorage): which files are content-hashed.

use std::collections::HashSet;

/// What the manifest tells a file server.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The hashed names (the values of `paths`), relative to STATIC_ROOT, `/`-separated.
    pub hashed: HashSet<String>,
    /// The manifest's own `hash` (version 1.1), if any: changes on every collectstatic.
    pub hash: Option<String>,
}

/// A manifest that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManifestError {}

/// Parses the bytes of a `staticfiles.json` (versions "1.0" and "1.1").
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let _ = bytes;
    todo!()
}
