//! Content types from file extensions, and which types can run script in a browser.

/// The `Content-Type` for a file name, from its extension (case-insensitive); text types carry
/// `; charset=utf-8`. Unknown extensions get `application/octet-stream`.
pub fn content_type(file_name: &str) -> &'static str {
    let _ = file_name;
    todo!()
}

/// Whether a browser could execute script from a response of this content type if it were
/// served inline from the site's origin (HTML, SVG, XML and friends, and anything unknown).
/// Media mounts serve such uploads so they cannot (attachment or CSP sandbox).
pub fn is_active_content(content_type: &str) -> bool {
    let _ = content_type;
    todo!()
}
