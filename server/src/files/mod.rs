//! Files on disk: mounts and routing, request-path decoding, the Django manifest, content
//! types, and the one place that opens a file beneath a mount root.

pub mod manifest;
pub mod mime;
pub mod mount;
pub mod open;
pub mod path;
