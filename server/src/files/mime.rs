//! Content types from file extensions, and which types can run script in a browser.

/// The `Content-Type` for a file name, from its extension (case-insensitive); text types carry
/// `; charset=utf-8`. Unknown extensions get `application/octet-stream`.
pub fn content_type(file_name: &str) -> &'static str {
    // Only the last path component counts: `a.d/README` has no extension.
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    let Some((stem, ext)) = base.rsplit_once('.') else {
        return OCTET_STREAM;
    };
    // A dot-file such as `.htaccess` has a name, not an extension.
    if stem.is_empty() {
        return OCTET_STREAM;
    }
    // Lower-case into a stack buffer: this runs per request and should not allocate. No known
    // extension is longer than the buffer, so longer ones are unknown by definition.
    let mut buf = [0u8; 16];
    let Some(dst) = buf.get_mut(..ext.len()) else {
        return OCTET_STREAM;
    };
    dst.copy_from_slice(ext.as_bytes());
    dst.make_ascii_lowercase();
    by_extension(dst).unwrap_or(OCTET_STREAM)
}

const OCTET_STREAM: &str = "application/octet-stream";

fn by_extension(ext: &[u8]) -> Option<&'static str> {
    Some(match ext {
        // Text and script. JavaScript is `text/javascript` per RFC 9239.
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"xhtml" => "application/xhtml+xml; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" | b"cjs" => "text/javascript; charset=utf-8",
        // Source maps are JSON; browsers only fetch them from devtools.
        b"json" | b"map" => "application/json; charset=utf-8",
        b"jsonld" => "application/ld+json; charset=utf-8",
        b"webmanifest" => "application/manifest+json; charset=utf-8",
        b"txt" => "text/plain; charset=utf-8",
        b"csv" => "text/csv; charset=utf-8",
        b"md" | b"markdown" => "text/markdown; charset=utf-8",
        b"vtt" => "text/vtt; charset=utf-8",
        b"xml" | b"xsl" => "text/xml; charset=utf-8",
        b"rss" => "application/rss+xml; charset=utf-8",
        b"atom" => "application/atom+xml; charset=utf-8",
        // Images.
        b"svg" => "image/svg+xml; charset=utf-8",
        b"ico" => "image/x-icon",
        b"png" => "image/png",
        b"apng" => "image/apng",
        b"jpg" | b"jpeg" | b"jpe" | b"jfif" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"avif" => "image/avif",
        b"bmp" => "image/bmp",
        b"tif" | b"tiff" => "image/tiff",
        // Fonts.
        b"woff" => "font/woff",
        b"woff2" => "font/woff2",
        b"ttf" => "font/ttf",
        b"otf" => "font/otf",
        b"eot" => "application/vnd.ms-fontobject",
        // Audio and video.
        b"mp4" | b"m4v" => "video/mp4",
        b"webm" => "video/webm",
        b"ogv" => "video/ogg",
        b"mov" => "video/quicktime",
        b"ogg" | b"oga" | b"opus" => "audio/ogg",
        b"mp3" => "audio/mpeg",
        b"m4a" => "audio/mp4",
        b"aac" => "audio/aac",
        b"flac" => "audio/flac",
        b"wav" => "audio/wav",
        // Documents, archives, code.
        b"pdf" => "application/pdf",
        b"zip" => "application/zip",
        b"gz" => "application/gzip",
        b"tar" => "application/x-tar",
        b"wasm" => "application/wasm",
        _ => return None,
    })
}

/// Whether a browser could execute script from a response of this content type if it were
/// served inline from the site's origin (HTML, SVG, XML and friends, and anything unknown).
/// Media mounts serve such uploads so they cannot (attachment or CSP sandbox).
pub fn is_active_content(content_type: &str) -> bool {
    // Parameters (`; charset=...`) do not change what the browser does with the body.
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((top, sub)) = essence.split_once('/') else {
        // Not even a media type: the browser will sniff, so assume the worst.
        return true;
    };
    let (top, sub) = (top.trim(), sub.trim());
    // Any XML flavour can carry XHTML or SVG script via namespaces.
    if contains_ignore_case(sub, "xml") {
        return true;
    }
    // An allow-list, not a deny-list: a type nobody thought about must not get through.
    if ["image", "audio", "video", "font"]
        .iter()
        .any(|t| top.eq_ignore_ascii_case(t))
    {
        // Browsers render these as media (or download them), never as a document. SVG is the
        // exception and was caught by the `xml` test above.
        return false;
    }
    const SAFE: &[&str] = &[
        "text/plain",
        "text/css",
        "text/csv",
        "text/markdown",
        "text/vtt",
        "application/json",
        "application/ld+json",
        "application/manifest+json",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-tar",
        "application/vnd.ms-fontobject",
    ];
    // JavaScript and WebAssembly are deliberately absent: a same-origin upload would satisfy a
    // CSP `script-src 'self'` and turn any HTML injection into script execution.
    !SAFE.iter().any(|s| {
        s.split_once('/')
            .is_some_and(|(t, u)| t.eq_ignore_ascii_case(top) && u.eq_ignore_ascii_case(sub))
    })
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_static_types() {
        let cases = [
            ("app.css", "text/css; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("mod.mjs", "text/javascript; charset=utf-8"),
            ("app.js.map", "application/json; charset=utf-8"),
            ("data.json", "application/json; charset=utf-8"),
            ("index.html", "text/html; charset=utf-8"),
            ("index.htm", "text/html; charset=utf-8"),
            ("robots.txt", "text/plain; charset=utf-8"),
            ("sitemap.xml", "text/xml; charset=utf-8"),
            ("logo.svg", "image/svg+xml; charset=utf-8"),
            ("export.csv", "text/csv; charset=utf-8"),
            ("README.md", "text/markdown; charset=utf-8"),
            ("favicon.ico", "image/x-icon"),
            ("a.png", "image/png"),
            ("a.jpg", "image/jpeg"),
            ("a.jpeg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
            ("a.avif", "image/avif"),
            ("a.bmp", "image/bmp"),
            ("f.woff", "font/woff"),
            ("f.woff2", "font/woff2"),
            ("f.ttf", "font/ttf"),
            ("f.otf", "font/otf"),
            ("f.eot", "application/vnd.ms-fontobject"),
            ("doc.pdf", "application/pdf"),
            ("a.zip", "application/zip"),
            ("a.tar.gz", "application/gzip"),
            ("v.mp4", "video/mp4"),
            ("v.webm", "video/webm"),
            ("s.ogg", "audio/ogg"),
            ("s.mp3", "audio/mpeg"),
            ("s.wav", "audio/wav"),
            ("m.wasm", "application/wasm"),
            (
                "site.webmanifest",
                "application/manifest+json; charset=utf-8",
            ),
        ];
        for (name, ct) in cases {
            assert_eq!(content_type(name), ct, "{name}");
        }
    }

    #[test]
    fn extension_is_case_insensitive() {
        assert_eq!(content_type("LOGO.PNG"), "image/png");
        assert_eq!(content_type("App.Css"), "text/css; charset=utf-8");
        assert_eq!(
            content_type("x.WebManifest"),
            "application/manifest+json; charset=utf-8"
        );
    }

    #[test]
    fn hashed_django_names_and_paths() {
        assert_eq!(
            content_type("css/app.3f2a9c1b7d4e.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(
            content_type("/static/js/app.3f2a9c1b7d4e.js"),
            "text/javascript; charset=utf-8"
        );
    }

    #[test]
    fn unknown_or_missing_extensions() {
        for name in [
            "",
            "Makefile",
            "archive.rar",
            "a.",
            ".htaccess",
            ".css",
            "dir.css/file",
            "x.averyveryverylongextension",
            "x.CSS\u{0}",
            "café.ünknown",
            "x.ｃｓｓ",
        ] {
            assert_eq!(content_type(name), "application/octet-stream", "{name:?}");
        }
    }

    #[test]
    fn text_types_carry_charset() {
        for name in [
            "a.css",
            "a.js",
            "a.json",
            "a.html",
            "a.txt",
            "a.xml",
            "a.svg",
            "a.webmanifest",
        ] {
            assert!(content_type(name).ends_with("; charset=utf-8"), "{name}");
        }
        for name in ["a.png", "a.woff2", "a.pdf", "a.mp4", "a.bin"] {
            assert!(!content_type(name).contains("charset"), "{name}");
        }
    }

    #[test]
    fn active_types() {
        for ct in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "application/xhtml+xml",
            "image/svg+xml",
            "image/svg+xml; charset=utf-8",
            "text/xml",
            "application/xml",
            "application/rss+xml",
            "application/vnd.foo+xml",
            "application/octet-stream",
            "text/javascript; charset=utf-8",
            "application/javascript",
            "application/wasm",
            "multipart/x-mixed-replace",
            "application/x-shockwave-flash",
            "text/x-unknown",
            "",
            "garbage",
        ] {
            assert!(is_active_content(ct), "{ct:?}");
        }
    }

    #[test]
    fn passive_types() {
        for ct in [
            "image/png",
            "image/jpeg",
            "IMAGE/WEBP",
            "image/x-icon",
            "font/woff2",
            "application/vnd.ms-fontobject",
            "audio/mpeg",
            "video/mp4",
            "application/pdf",
            "text/plain; charset=utf-8",
            "text/css; charset=utf-8",
            "text/csv",
            "application/json; charset=utf-8",
            "application/manifest+json; charset=utf-8",
            "application/zip",
            "application/gzip",
        ] {
            assert!(!is_active_content(ct), "{ct:?}");
        }
    }

    #[test]
    fn every_known_extension_is_classified_consistently() {
        // Whatever we label a file as, the media-mount guard must agree with the table above.
        for name in [
            "a.html",
            "a.xhtml",
            "a.svg",
            "a.xml",
            "a.rss",
            "a.atom",
            "a.js",
            "a.unknown",
        ] {
            assert!(is_active_content(content_type(name)), "{name}");
        }
        for name in [
            "a.png", "a.css", "a.json", "a.txt", "a.pdf", "a.woff", "a.mp3", "a.webm",
        ] {
            assert!(!is_active_content(content_type(name)), "{name}");
        }
    }
}
