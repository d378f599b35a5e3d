//! Shared helpers for bypass's black-box integration tests.
//!
//! - [`Fixture`]: a fresh Django-shaped tree (`static/` with `staticfiles.json`, hashed names and
//!   precompressed siblings; `media/` with hostile uploads; `outside/` holding a secret that must
//!   never leak) in its own temporary directory.
//! - [`ServerBuilder`] / [`Server`]: spawn the real `bypass` binary, wait for its `listening on`
//!   lines, keep draining its stderr, kill it on drop. The engine comes from the environment
//!   variable `BYPASS_TEST_ENGINE` (default `uring`), so the same tests run against every engine.
//! - [`curl`]: the real client for ordinary HTTP semantics; [`Raw`]: exact bytes over TCP, for
//!   what curl cannot express (malformed input, pipelining, framing, timeouts).
//!
//! Nothing here sleeps and hopes: waits are polls with deadlines that fail loudly.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Constants: the fixture's layout
// ---------------------------------------------------------------------------------------------

/// Every regular file of the fixture gets this modification time.
pub const FIXED_MTIME: u64 = 1_704_164_645;
/// [`FIXED_MTIME`] as an HTTP date.
pub const FIXED_MTIME_HTTP: &str = "Tue, 02 Jan 2024 03:04:05 GMT";
/// Content of `outside/secret.txt`, which symlinks in the mounts point at.
pub const SECRET: &str = "TOP-SECRET-b7e1d2c4-outside-the-mount";
/// Content of the dot-files inside the mounts.
pub const DOT_SECRET: &str = "DJANGO_SECRET_KEY=dot-file-must-not-leak";

/// Unhashed original of a manifest entry; has `.br`, `.zst` and `.gz` siblings.
pub const APP_CSS: &str = "css/app.css";
/// The hashed name of [`APP_CSS`] in the manifest; has `.br`, `.zst` and `.gz` siblings.
pub const HASHED_CSS: &str = "css/app.3f2a9c1b7d4e.css";
/// Unhashed original of a manifest entry; has only a `.gz` sibling.
pub const SITE_JS: &str = "js/site.js";
/// The hashed name of [`SITE_JS`]; has only a `.gz` sibling.
pub const HASHED_JS: &str = "js/site.0c1d2e3f4a5b.js";
/// A ~300 KB binary (JPEG-ish) file, no siblings, unhashed: the range-request subject.
pub const PHOTO: &str = "img/photo.jpg";
/// The hashed name of [`PHOTO`].
pub const HASHED_PHOTO: &str = "img/photo.9a8b7c6d5e4f.jpg";
/// Length of [`PHOTO`] and [`HASHED_PHOTO`].
pub const PHOTO_LEN: usize = 307_200;
/// A static CSS file without any sibling and not in the manifest.
pub const PLAIN_CSS: &str = "css/plain.css";
/// A file with a non-ASCII name, on disk.
pub const UNICODE_CSS: &str = "css/café.css";
/// [`UNICODE_CSS`] as it appears, percent-encoded, in a URL.
pub const UNICODE_CSS_URL: &str = "css/caf%C3%A9.css";
/// A symlink inside the static root, pointing at `app.css` (relative).
pub const LINK_INSIDE: &str = "css/link.css";
/// A file in a subdirectory (like Django admin's assets).
pub const ADMIN_CSS: &str = "admin/css/base.css";
/// Static text, SVG and HTML: trusted, served inline.
pub const README_TXT: &str = "docs/readme.txt";
pub const LOGO_SVG: &str = "icons/logo.svg";
pub const STATIC_HTML: &str = "pages/index.html";
/// A zero-length static file.
pub const EMPTY_TXT: &str = "empty.txt";
/// A file whose name on disk literally is `%41.txt` (tests decode-exactly-once).
pub const PERCENT_NAME: &str = "%41.txt";
/// The manifest entries the fixture writes: (original, hashed).
pub const MANIFEST: [(&str, &str); 3] = [
    (APP_CSS, HASHED_CSS),
    (SITE_JS, HASHED_JS),
    (PHOTO, HASHED_PHOTO),
];
/// The manifest's own hash (version 1.1).
pub const MANIFEST_HASH: &str = "6c2d1e0f9a8b";

/// Media files.
pub const MEDIA_PDF: &str = "uploads/report.pdf";
pub const MEDIA_JPG: &str = "uploads/photo.jpg";
pub const MEDIA_HTML: &str = "evil.html";
pub const MEDIA_HTML_UPPER: &str = "SHOUT.HTML";
pub const MEDIA_HTM: &str = "page.htm";
pub const MEDIA_SVG: &str = "evil.svg";
pub const MEDIA_XML: &str = "data.xml";
pub const MEDIA_UNKNOWN: &str = "blob.xyz";
pub const MEDIA_NOEXT: &str = "uploads/noextension";

/// How long to wait for a server's `listening on` lines.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read timeout of raw connections and curl's `--max-time`.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The expected `Cache-Control` of hashed static files.
pub const IMMUTABLE: &str = "max-age=31536000, immutable";

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// The engine the tests run against: `BYPASS_TEST_ENGINE`, default `uring`.
pub fn test_engine() -> String {
    match std::env::var("BYPASS_TEST_ENGINE") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => "uring".to_string(),
    }
}

/// The repository root (the workspace holding `server/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// Polls `f` every 25 ms until it returns `Some`, or panics after `limit` naming `what`.
pub fn poll_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// JPEG-looking deterministic bytes: SOI + JFIF APP0 header, noise, EOI.
pub fn jpeg_like(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00,
        0x01, 0x00, 0x01, 0x00, 0x00,
    ];
    v.extend(pseudo_random_bytes(seed, len - v.len() - 2));
    v.extend_from_slice(&[0xFF, 0xD9]);
    assert_eq!(v.len(), len);
    v
}

/// Compressible CSS text, different for each `seed`.
pub fn css_text(seed: &str, rules: usize) -> String {
    let mut s = format!("/* {seed} */\n");
    for i in 0..rules {
        s.push_str(&format!(
            ".{seed}-rule-{i} {{ color: #{:03x}; margin: 0 auto; padding: {}px; display: flex; }}\n",
            (i * 37) % 4096,
            i % 17
        ));
    }
    s
}

/// A precompression tool, run as the real CLI (installed by `scripts/test`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    Brotli,
    Zstd,
    Gzip,
}

impl Tool {
    pub const ALL: [Tool; 3] = [Tool::Brotli, Tool::Zstd, Tool::Gzip];

    /// The sibling suffix: `.br`, `.zst`, `.gz`.
    pub fn suffix(self) -> &'static str {
        match self {
            Tool::Brotli => ".br",
            Tool::Zstd => ".zst",
            Tool::Gzip => ".gz",
        }
    }

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Tool::Brotli => "br",
            Tool::Zstd => "zstd",
            Tool::Gzip => "gzip",
        }
    }

    fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Tool::Brotli => ("brotli", &["-c", "-q", "11"]),
            Tool::Zstd => ("zstd", &["-q", "-19", "-c"]),
            Tool::Gzip => ("gzip", &["-9", "-n", "-c"]),
        }
    }
}

/// Compresses `data` with the real CLI (results cached per test binary).
pub fn compress(tool: Tool, data: &[u8]) -> Vec<u8> {
    type Cache = Mutex<HashMap<(Tool, Vec<u8>), Vec<u8>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(&(tool, data.to_vec())) {
        return v.clone();
    }
    let (prog, args) = tool.command();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `{prog}` ({e}): run scripts/test, which installs curl, brotli, zstd and gzip")
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for compressor");
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "`{prog}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "`{prog}` produced nothing");
    cache
        .lock()
        .unwrap()
        .insert((tool, data.to_vec()), out.stdout.clone());
    out.stdout
}

/// Sets a file's modification (and access) time to `secs` since the epoch.
pub fn set_mtime(path: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let f = fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap_or_else(|e| panic!("set times of {path:?}: {e}"));
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Formats seconds since the epoch as an HTTP date.
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Parses an HTTP date to seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s.trim())
        .ok()
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("path has a parent");
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), now_nanos()));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A `staticfiles.json` body (version 1.1 when `hash` is given, else 1.0).
pub fn manifest_json(entries: &[(&str, &str)], hash: Option<&str>) -> String {
    let mut paths = serde_json::Map::new();
    for (k, v) in entries {
        paths.insert(
            (*k).to_string(),
            serde_json::Value::String((*v).to_string()),
        );
    }
    let mut root = serde_json::Map::new();
    root.insert("paths".into(), serde_json::Value::Object(paths));
    match hash {
        Some(h) => {
            root.insert("version".into(), "1.1".into());
            root.insert("hash".into(), h.into());
        }
        None => {
            root.insert("version".into(), "1.0".into());
        }
    }
    serde_json::to_string(&serde_json::Value::Object(root)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// Which parts of the default tree to build.
#[derive(Clone, Copy, Debug)]
pub struct FixtureOptions {
    /// Write `static/staticfiles.json`.
    pub manifest: bool,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions { manifest: true }
    }
}

/// A fresh Django-shaped tree in its own temporary directory:
///
/// ```text
/// static/  staticfiles.json (1.1), css/app.css(+.br .zst .gz), css/app.3f2a9c1b7d4e.css(+.br .zst .gz),
///          css/plain.css, css/café.css, css/link.css -> app.css, js/site.js(+.gz),
///          js/site.0c1d2e3f4a5b.js(+.gz), img/photo.jpg, img/photo.9a8b7c6d5e4f.jpg (300 KB),
///          admin/css/base.css, docs/readme.txt, icons/logo.svg, pages/index.html, empty.txt,
///          %41.txt, .env, .hidden/app.css, leak.txt -> ../outside/secret.txt,
///          passwd.txt -> /etc/passwd, outdir -> ../outside
/// media/   uploads/report.pdf, uploads/photo.jpg, uploads/noextension, evil.html, SHOUT.HTML,
///          page.htm, evil.svg, data.xml, blob.xyz, .env, leak.txt -> ../outside/secret.txt
/// outside/ secret.txt
/// ```
pub struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    /// The full tree, manifest included.
    pub fn new() -> Fixture {
        Fixture::with_options(FixtureOptions::default())
    }

    /// The full tree without `staticfiles.json`.
    pub fn without_manifest() -> Fixture {
        Fixture::with_options(FixtureOptions { manifest: false })
    }

    pub fn with_options(opts: FixtureOptions) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("bypass-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().canonicalize().expect("canonicalize tempdir");
        let fx = Fixture { dir, root };
        fx.build(opts);
        fx
    }

    fn build(&self, opts: FixtureOptions) {
        let st = self.static_root();
        let me = self.media_root();
        let out = self.outside();
        for d in [&st, &me, &out] {
            fs::create_dir_all(d).unwrap();
        }
        write_file(&out.join("secret.txt"), SECRET.as_bytes());

        // Static: originals and hashed copies (Django keeps both), with siblings.
        let app = css_text("app", 120);
        let hashed = css_text("app-hashed", 120);
        self.put_static_with_siblings(APP_CSS, app.as_bytes(), &Tool::ALL);
        self.put_static_with_siblings(HASHED_CSS, hashed.as_bytes(), &Tool::ALL);
        let js = "(function(){ console.log('site'); })();\n".repeat(60);
        let hashed_js = "(function(){ console.log('site-hashed'); })();\n".repeat(60);
        self.put_static_with_siblings(SITE_JS, js.as_bytes(), &[Tool::Gzip]);
        self.put_static_with_siblings(HASHED_JS, hashed_js.as_bytes(), &[Tool::Gzip]);
        write_file(&st.join(PHOTO), &jpeg_like(7, PHOTO_LEN));
        write_file(&st.join(HASHED_PHOTO), &jpeg_like(8, PHOTO_LEN));
        write_file(&st.join(PLAIN_CSS), css_text("plain", 10).as_bytes());
        write_file(&st.join(UNICODE_CSS), css_text("cafe", 5).as_bytes());
        write_file(&st.join(ADMIN_CSS), css_text("admin", 20).as_bytes());
        write_file(&st.join(README_TXT), b"Read me, I am plain text.\n");
        write_file(
            &st.join(LOGO_SVG),
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"><rect width="1" height="1"/></svg>"#,
        );
        write_file(
            &st.join(STATIC_HTML),
            b"<!doctype html><title>static page</title><p>hello</p>\n",
        );
        write_file(&st.join(EMPTY_TXT), b"");
        write_file(&st.join(PERCENT_NAME), b"I am literally named %41.txt\n");
        write_file(&st.join("A.txt"), b"I am A.txt\n");
        write_file(&st.join(".env"), DOT_SECRET.as_bytes());
        write_file(&st.join(".hidden/app.css"), DOT_SECRET.as_bytes());
        symlink("app.css", st.join(LINK_INSIDE)).unwrap();
        symlink("../outside/secret.txt", st.join("leak.txt")).unwrap();
        symlink("/etc/passwd", st.join("passwd.txt")).unwrap();
        symlink("../outside", st.join("outdir")).unwrap();
        if opts.manifest {
            write_file(
                &st.join("staticfiles.json"),
                manifest_json(&MANIFEST, Some(MANIFEST_HASH)).as_bytes(),
            );
        }

        // Media: uploads, some of them hostile.
        let mut pdf =
            b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n1 0 obj << /Type /Catalog >> endobj\n".to_vec();
        pdf.extend(pseudo_random_bytes(11, 20_000));
        pdf.extend_from_slice(b"\ntrailer << /Root 1 0 R >>\n%%EOF\n");
        write_file(&me.join(MEDIA_PDF), &pdf);
        write_file(&me.join(MEDIA_JPG), &jpeg_like(12, 50_000));
        write_file(
            &me.join(MEDIA_NOEXT),
            b"<script>alert('no extension')</script>\n",
        );
        write_file(
            &me.join(MEDIA_HTML),
            b"<!doctype html><script>alert(document.cookie)</script>\n",
        );
        write_file(
            &me.join(MEDIA_HTML_UPPER),
            b"<!doctype html><script>alert('upper')</script>\n",
        );
        write_file(
            &me.join(MEDIA_HTM),
            b"<html><script>alert('htm')</script></html>\n",
        );
        write_file(
            &me.join(MEDIA_SVG),
            br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>"#,
        );
        write_file(
            &me.join(MEDIA_XML),
            br#"<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script>"#,
        );
        write_file(
            &me.join(MEDIA_UNKNOWN),
            b"<html><script>alert('sniff me')</script></html>\n",
        );
        write_file(&me.join(".env"), DOT_SECRET.as_bytes());
        symlink("../outside/secret.txt", me.join("leak.txt")).unwrap();

        set_mtimes_recursively(&self.root, FIXED_MTIME);
    }

    fn put_static_with_siblings(&self, rel: &str, data: &[u8], tools: &[Tool]) {
        let path = self.static_root().join(rel);
        write_file(&path, data);
        for &t in tools {
            write_file(&sibling(&path, t), &compress(t, data));
        }
    }

    /// The temporary directory holding `static/`, `media/` and `outside/`.
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn static_root(&self) -> PathBuf {
        self.root.join("static")
    }
    pub fn media_root(&self) -> PathBuf {
        self.root.join("media")
    }
    pub fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }
    pub fn static_path(&self, rel: &str) -> PathBuf {
        self.static_root().join(rel)
    }
    pub fn media_path(&self, rel: &str) -> PathBuf {
        self.media_root().join(rel)
    }
    pub fn read_static(&self, rel: &str) -> Vec<u8> {
        fs::read(self.static_path(rel)).unwrap_or_else(|e| panic!("read static {rel}: {e}"))
    }
    pub fn read_media(&self, rel: &str) -> Vec<u8> {
        fs::read(self.media_path(rel)).unwrap_or_else(|e| panic!("read media {rel}: {e}"))
    }
    /// The bytes of a static file's precompressed sibling.
    pub fn read_sibling(&self, rel: &str, tool: Tool) -> Vec<u8> {
        fs::read(sibling(&self.static_path(rel), tool)).unwrap()
    }
    pub fn write_static(&self, rel: &str, bytes: &[u8]) {
        write_file(&self.static_path(rel), bytes);
    }
    pub fn write_media(&self, rel: &str, bytes: &[u8]) {
        write_file(&self.media_path(rel), bytes);
    }

    /// Rewrites `static/staticfiles.json` the way a fresh collectstatic would (new file, then
    /// rename over the old one), with an mtime later than any earlier manifest's.
    pub fn rewrite_manifest(&self, entries: &[(&str, &str)], hash: Option<&str>) {
        let path = self.static_root().join("staticfiles.json");
        let later = fs::metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
            .unwrap_or(FIXED_MTIME)
            .max(now_secs())
            + 2;
        write_atomic(&path, manifest_json(entries, hash).as_bytes());
        set_mtime(&path, later);
    }

    /// A builder with this fixture's mounts: `--static /static/=static --media /media/=media`.
    pub fn builder(&self) -> ServerBuilder {
        ServerBuilder::new()
            .static_mount("/static/", &self.static_root())
            .media_mount("/media/", &self.media_root())
    }

    /// Starts bypass on this fixture with the default mounts and options.
    pub fn server(&self) -> Server {
        self.builder().start()
    }
}

/// `X` → `X.br` / `X.zst` / `X.gz`.
pub fn sibling(path: &Path, tool: Tool) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(tool.suffix());
    PathBuf::from(s)
}

fn set_mtimes_recursively(dir: &Path, secs: u64) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            set_mtimes_recursively(&entry.path(), secs);
        } else if ft.is_file() {
            set_mtime(&entry.path(), secs);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Path of the `bypass` binary under test.
pub fn bypass_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bypass")
}

/// Builds a `bypass` command line. `--engine` comes first (from `BYPASS_TEST_ENGINE` unless
/// overridden), then the arguments in the order given.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    args: Vec<OsString>,
    listens: usize,
    engine: Option<String>,
    cwd: Option<PathBuf>,
    deny_io_uring: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl ServerBuilder {
    pub fn new() -> ServerBuilder {
        ServerBuilder {
            args: Vec::new(),
            listens: 0,
            engine: Some(test_engine()),
            cwd: None,
            deny_io_uring: false,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--listen ADDR`; the server is expected to log one `listening on` line per listen.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listens += 1;
        self.arg("--listen").arg(addr)
    }

    pub fn static_mount(self, prefix: &str, dir: &Path) -> Self {
        let mut v = OsString::from(format!("{prefix}="));
        v.push(dir.as_os_str());
        self.arg("--static").arg(v)
    }

    pub fn media_mount(self, prefix: &str, dir: &Path) -> Self {
        let mut v = OsString::from(format!("{prefix}="));
        v.push(dir.as_os_str());
        self.arg("--media").arg(v)
    }

    /// Overrides the engine for this server (`--engine E`).
    pub fn engine(mut self, e: &str) -> Self {
        self.engine = Some(e.to_string());
        self
    }

    /// Passes no `--engine` at all (the server's default).
    pub fn no_engine(mut self) -> Self {
        self.engine = None;
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Runs the server under a seccomp filter that makes `io_uring_setup` fail with ENOSYS, as
    /// on a kernel without io_uring (or with `kernel.io_uring_disabled`).
    pub fn deny_io_uring(mut self) -> Self {
        self.deny_io_uring = true;
        self
    }

    /// The full argument list that will be passed.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v = Vec::new();
        if let Some(e) = &self.engine {
            v.push("--engine".into());
            v.push(e.into());
        }
        v.extend(self.args.iter().cloned());
        v
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bypass_bin());
        cmd.args(self.argv());
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        if self.deny_io_uring {
            // SAFETY: only async-signal-safe calls (prctl) between fork and exec; the filter
            // lives on the child's stack for the duration of the call.
            unsafe {
                cmd.pre_exec(install_io_uring_denial);
            }
        }
        cmd
    }

    /// Starts the server (on `127.0.0.1:0` unless a `--listen` was given) and waits until every
    /// `listening on` line has been logged.
    pub fn start(self) -> Server {
        let b = if self.listens == 0 {
            self.listen("127.0.0.1:0")
        } else {
            self
        };
        let expected = b.listens;
        let argv = b.argv();
        let mut child = b
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bypass_bin()));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let log2 = Arc::clone(&log);
        let drain = thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        log2.lock().unwrap().push(s.clone());
                        let _ = tx.send(s);
                    }
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut addrs = Vec::new();
        while addrs.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("bypass: listening on ") {
                        let addr: SocketAddr = rest
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad `listening on` line {line:?}: {e}"));
                        assert_ne!(addr.port(), 0, "the log must name the real port: {line:?}");
                        addrs.push(addr);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "bypass did not log {expected} `listening on` line(s) within {STARTUP_TIMEOUT:?}\nargs: {argv:?}\nstderr so far:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "bypass exited ({status:?}) before listening\nargs: {argv:?}\nstderr:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Server {
            child: Some(child),
            exit: None,
            addrs,
            log,
            drain: Some(drain),
            argv,
        }
    }

    /// Runs the server expecting it to exit by itself (start-up errors); kills it and panics
    /// if it is still running after `limit`.
    pub fn run_to_exit(self, limit: Duration) -> Finished {
        let argv = self.argv();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bypass_bin()));
        let out = reader_thread(child.stdout.take().unwrap());
        let err = reader_thread(child.stderr.take().unwrap());
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
                panic!(
                    "bypass {argv:?} was expected to exit but still ran after {limit:?}; stderr:\n{stderr}"
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        Finished {
            status,
            stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
            stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
            argv,
        }
    }
}

fn reader_thread(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// A seccomp filter: `io_uring_setup` (syscall 425 on every architecture) fails with ENOSYS.
fn install_io_uring_denial() -> io::Result<()> {
    const IO_URING_SETUP: u32 = 425;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == io_uring_setup goto deny else goto allow
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls with valid pointers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A server run that ended by itself.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub argv: Vec<OsString>,
}

impl Finished {
    /// Asserts the start-up failure contract: exit code 2, exactly one stderr line, starting
    /// with `bypass: `, nothing on stdout. Returns that line.
    pub fn assert_startup_error(&self) -> &str {
        let ctx = format!(
            "args {:?}\nstatus {:?}\nstdout {:?}\nstderr {:?}",
            self.argv, self.status, self.stdout, self.stderr
        );
        assert_eq!(self.status.code(), Some(2), "exit code must be 2\n{ctx}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr\n{ctx}");
        assert!(
            self.stderr.ends_with('\n'),
            "the error line ends with a newline\n{ctx}"
        );
        assert!(
            lines[0].starts_with("bypass: "),
            "the line starts with `bypass: `\n{ctx}"
        );
        assert!(
            lines[0].len() > "bypass: ".len() + 3,
            "the line says what went wrong\n{ctx}"
        );
        assert!(self.stdout.is_empty(), "nothing on stdout\n{ctx}");
        lines[0]
    }
}

/// A running `bypass`. Killed (SIGKILL) on drop if still running.
pub struct Server {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    drain: Option<thread::JoinHandle<()>>,
    argv: Vec<OsString>,
}

impl Server {
    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `http://ADDR` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// `http://ADDR/static/` + `rel`.
    pub fn static_url(&self, rel: &str) -> String {
        self.url(&format!("/static/{rel}"))
    }

    /// `http://ADDR/media/` + `rel`.
    pub fn media_url(&self, rel: &str) -> String {
        self.url(&format!("/media/{rel}"))
    }

    /// Every line logged on stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server process").id() as i32
    }

    /// Sends a signal, unless the process has already been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.try_exit_status().is_some() {
            panic!(
                "cannot signal bypass: it already exited ({:?}); stderr:\n{}",
                self.exit,
                self.log_text()
            );
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.exit = c.try_wait().expect("try_wait");
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_exit_status() {
                if let Some(h) = self.drain.take() {
                    let _ = h.join();
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; panics (and the drop kills) otherwise.
    pub fn stop_gracefully_within(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(limit) {
            Some(st) => st,
            None => panic!(
                "bypass did not exit within {limit:?} of SIGTERM; stderr:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGTERM + wait (15 s) + exit status.
    pub fn stop_gracefully(&mut self) -> ExitStatus {
        self.stop_gracefully_within(Duration::from_secs(15))
    }

    /// Asserts the process is still alive (it did not crash), printing its log otherwise.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.try_exit_status() {
            panic!(
                "bypass died: {st:?}\nargs: {:?}\nstderr:\n{}",
                self.argv,
                self.log_text()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() && c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if let Some(h) = self.drain.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// One HTTP response, from curl or from a raw connection.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// In the order received, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field called `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The field's value; panics with the whole head if it is missing.
    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("missing `{name}` in:\n{}", self.head_text()))
    }

    /// Whether the comma-separated list in every `name` field contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?} in:\n{}", self.head_text()))
        })
    }

    /// The ETag, asserted to be strong and quoted.
    pub fn etag(&self) -> &str {
        let e = self.expect_header("etag");
        assert!(!e.starts_with("W/"), "ETag must be strong: {e}");
        assert!(
            e.len() >= 3 && e.starts_with('"') && e.ends_with('"'),
            "ETag must be quoted: {e}"
        );
        e
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn head_text(&self) -> String {
        let mut s = format!("{} {} {}\n", self.version, self.status, self.reason);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s
    }

    /// Panics with the head and a body excerpt unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status in:\n{self:?}");
        self
    }

    /// Asserts the body is exactly `expected` (printing lengths, not megabytes, on failure).
    #[track_caller]
    pub fn assert_body(&self, expected: &[u8]) -> &Self {
        if self.body != expected {
            let first_diff = self.body.iter().zip(expected).position(|(a, b)| a != b);
            panic!(
                "body differs: got {} bytes, expected {} bytes, first difference at {:?}\n{self:?}",
                self.body.len(),
                expected.len(),
                first_diff
            );
        }
        self
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let excerpt: String =
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        write!(
            f,
            "{}[body: {} bytes] {:?}",
            self.head_text(),
            self.body.len(),
            excerpt
        )
    }
}

/// Parses a response head (status line + fields, without the final empty line).
pub fn parse_head(head: &str) -> Response {
    let mut lines = head
        .split("\r\n")
        .flat_map(|l| l.split('\n'))
        .filter(|l| !l.is_empty());
    let status_line = lines
        .next()
        .unwrap_or_else(|| panic!("empty response head"));
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
    }
}

/// Splits a `curl -D` dump into the heads of every response in it (1xx interim ones included).
fn split_dumped_heads(dump: &str) -> Vec<Response> {
    dump.split("\r\n\r\n")
        .map(|b| b.trim_start_matches(['\r', '\n']))
        .filter(|b| b.starts_with("HTTP/"))
        .map(parse_head)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------------

/// A curl invocation: `curl -sS --http1.1 --path-as-is -g --noproxy '*' -D HEADERS -o BODY ...`.
#[derive(Clone, Debug)]
pub struct Curl {
    url: String,
    args: Vec<String>,
    http10: bool,
    head: bool,
}

/// Starts a curl request for `url`.
pub fn curl(url: impl Into<String>) -> Curl {
    Curl {
        url: url.into(),
        args: Vec::new(),
        http10: false,
        head: false,
    }
}

impl Curl {
    /// `-H "Name: value"` (curl sends repeated names as separate fields; `"Name;"` sends an
    /// empty value).
    pub fn header(mut self, h: impl Into<String>) -> Self {
        self.args.push("-H".into());
        self.args.push(h.into());
        self
    }

    /// `-X METHOD`.
    pub fn method(mut self, m: &str) -> Self {
        self.args.push("-X".into());
        self.args.push(m.into());
        self
    }

    /// A HEAD request (`--head`).
    pub fn head(mut self) -> Self {
        self.args.push("--head".into());
        self.head = true;
        self
    }

    /// `--http1.0` instead of `--http1.1`.
    pub fn http10(mut self) -> Self {
        self.http10 = true;
        self
    }

    /// Sends `Range: SPEC` verbatim, unit included (`bytes=0-9`), so that invalid and unusual
    /// specs reach the server exactly as written.
    pub fn range(self, spec: &str) -> Self {
        self.header(format!("Range: {spec}"))
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    fn base_args(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-sS".into(),
            if self.http10 {
                "--http1.0"
            } else {
                "--http1.1"
            }
            .into(),
            "--path-as-is".into(),
            "-g".into(),
            "--noproxy".into(),
            "*".into(),
            "--max-time".into(),
            IO_TIMEOUT.as_secs().to_string(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    /// Runs curl; panics if curl fails (connection refused, reset, bad framing, timeout...).
    #[track_caller]
    pub fn send(self) -> Response {
        match self.try_send() {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs curl; `Err` with curl's message if it failed.
    pub fn try_send(self) -> Result<Response, String> {
        let tmp = tempfile::tempdir().unwrap();
        let hfile = tmp.path().join("headers");
        let bfile = tmp.path().join("body");
        let mut args = self.base_args();
        args.extend([
            "-D".into(),
            hfile.display().to_string(),
            "-o".into(),
            bfile.display().to_string(),
        ]);
        args.push(self.url.clone());
        let out = curl_command(&args);
        if !out.status.success() {
            return Err(format!(
                "curl {args:?} failed ({:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let dump = fs::read_to_string(&hfile).unwrap_or_default();
        let mut heads = split_dumped_heads(&dump);
        let mut resp = heads
            .pop()
            .ok_or_else(|| format!("curl {args:?}: no response head in {dump:?}"))?;
        // With --head curl writes the head into the output file: a HEAD response has no body
        // (that no body bytes follow on the wire is checked with raw connections).
        if !self.head {
            resp.body = fs::read(&bfile).unwrap_or_default();
        }
        Ok(resp)
    }
}

fn curl_command(args: &[String]) -> std::process::Output {
    Command::new("curl")
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): run scripts/test, which installs it"))
}

/// Fetches several URLs in ONE curl run (curl reuses connections when it can). Returns each
/// response's head and, per transfer, how many new connections curl had to open
/// (`%{num_connects}`: 0 means the previous connection was reused).
pub fn curl_sequence(urls: &[String], extra: &[&str], http10: bool) -> (Vec<Response>, Vec<u32>) {
    let tmp = tempfile::tempdir().unwrap();
    let hfile = tmp.path().join("headers");
    let mut args = Curl {
        url: String::new(),
        args: Vec::new(),
        http10,
        head: false,
    }
    .base_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "-D".into(),
        hfile.display().to_string(),
        "-w".into(),
        "%{num_connects}\\n".into(),
    ]);
    for u in urls {
        args.extend(["-o".into(), "/dev/null".into(), u.clone()]);
    }
    let out = curl_command(&args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let connects = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("num_connects"))
        .collect();
    let heads = split_dumped_heads(&fs::read_to_string(&hfile).unwrap());
    (heads, connects)
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// `GET PATH HTTP/1.1` with a Host and the extra header lines (each without CRLF).
pub fn request(method: &str, path: &str, headers: &[&str]) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: bypass.test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

/// How a connection ended when we expected it to.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly EOF.
    Eof,
    /// Reset by the peer.
    Reset,
}

/// A raw TCP connection to the server: exact bytes out, parsed responses in.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Raw> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Raw {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends all of `bytes`; panics on error.
    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref())
    }

    /// Half-closes our side (the server reads EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into the buffer; Ok(0) on EOF.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one response to a GET (body framed by Content-Length, chunked, or close).
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
    }

    /// Reads one response to a request with `method` (HEAD responses have no body).
    #[track_caller]
    pub fn read_response_to(&mut self, method: &str) -> Response {
        match self.try_read_response_to(method, IO_TIMEOUT) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads only a response head, leaving the body (if any) unread.
    #[track_caller]
    pub fn read_head(&mut self) -> Response {
        match self.try_read_head(Instant::now() + IO_TIMEOUT) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_read_head(&mut self, deadline: Instant) -> Result<Response, String> {
        let (resp, head_len) = loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut hdrs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let resp = Response {
                        version: format!("HTTP/1.{}", r.version.unwrap_or(1)),
                        status: r.code.unwrap_or(0),
                        reason: r.reason.unwrap_or("").to_string(),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    break (resp, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(format!(
                        "unparsable response ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(500)])
                    ));
                }
            }
            match self.fill(deadline) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(500)])
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "reading a response head: {e}; got {:?}",
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(500)])
                    ));
                }
            }
        };
        self.buf.drain(..head_len);
        Ok(resp)
    }

    /// Like [`Raw::read_response_to`], but returns what went wrong instead of panicking.
    pub fn try_read_response_to(
        &mut self,
        method: &str,
        limit: Duration,
    ) -> Result<Response, String> {
        let deadline = Instant::now() + limit;
        let mut resp = self.try_read_head(deadline)?;
        let no_body = method.eq_ignore_ascii_case("HEAD")
            || resp.status < 200
            || resp.status == 204
            || resp.status == 304;
        if no_body {
            return Ok(resp);
        }
        if let Some(cl) = resp.header("content-length") {
            let cl: usize = cl
                .parse()
                .map_err(|_| format!("bad Content-Length in {resp:?}"))?;
            while self.buf.len() < cl {
                match self.fill(deadline) {
                    Ok(0) => {
                        return Err(format!(
                            "body shorter than Content-Length {cl}: connection closed after {} bytes\n{}",
                            self.buf.len(),
                            resp.head_text()
                        ));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "reading body ({} of {cl} bytes): {e}\n{}",
                            self.buf.len(),
                            resp.head_text()
                        ));
                    }
                }
            }
            resp.body = self.buf.drain(..cl).collect();
        } else if resp.header_has_token("transfer-encoding", "chunked") {
            resp.body = self.read_chunked(deadline)?;
        } else {
            loop {
                match self.fill(deadline) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if !matches!(self.fill(deadline), Ok(n) if n > 0) {
                    return Err("chunked body cut short".into());
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = p == 0;
                        self.buf.drain(..p + 2);
                        if empty {
                            return Ok(body);
                        }
                    } else if !matches!(self.fill(deadline), Ok(n) if n > 0) {
                        return Err("chunked trailer cut short".into());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if !matches!(self.fill(deadline), Ok(n) if n > 0) {
                    return Err("chunk cut short".into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads exactly `n` body bytes, or fewer if the connection ends first.
    pub fn read_up_to(&mut self, n: usize, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    panic!(
                        "timed out after {limit:?} with {} of {n} bytes",
                        self.buf.len()
                    )
                }
                Err(_) => break,
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Asserts that the server closes the connection within `limit` without sending anything
    /// more (buffered leftovers count as "more").
    #[track_caller]
    pub fn expect_closed(&mut self, limit: Duration) -> Closed {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.wait_closed(limit) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits for the server to close (EOF or reset) within `limit`; data counts as an error.
    pub fn wait_closed(&mut self, limit: Duration) -> Result<Closed, String> {
        let deadline = Instant::now() + limit;
        match self.fill(deadline) {
            Ok(0) => Ok(Closed::Eof),
            Ok(_) => Err(format!(
                "expected the connection to close, got data: {:?}",
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(500)])
            )),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(format!(
                "the server did not close the connection within {limit:?}"
            )),
            Err(_) => Ok(Closed::Reset),
        }
    }

    /// Reads everything until the server closes (or resets) the connection.
    pub fn read_to_close(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    panic!(
                        "the server did not close the connection within {limit:?}; got {:?}",
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(500)])
                    )
                }
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// True if the connection is still open: nothing arrives and no EOF within `wait`.
    pub fn still_open_after(&mut self, wait: Duration) -> bool {
        match self.fill(Instant::now() + wait) {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => true,
            Ok(n) if n > 0 => panic!("unexpected data: {:?}", String::from_utf8_lossy(&self.buf)),
            _ => false,
        }
    }
}

/// One request on a fresh connection; returns the response.
#[track_caller]
pub fn raw_roundtrip(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> Response {
    let mut c = Raw::connect(addr);
    c.send(bytes);
    c.read_response()
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

/// `Content-Range: bytes A-B/LEN` → (A, B, LEN).
pub fn parse_content_range(v: &str) -> (u64, u64, u64) {
    let rest = v
        .trim()
        .strip_prefix("bytes ")
        .unwrap_or_else(|| panic!("bad Content-Range {v:?}"));
    let (range, len) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("bad Content-Range {v:?}"));
    let (a, b) = range
        .split_once('-')
        .unwrap_or_else(|| panic!("bad Content-Range {v:?}"));
    (a.parse().unwrap(), b.parse().unwrap(), len.parse().unwrap())
}

/// One part of a `multipart/byteranges` body.
#[derive(Debug, Clone)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `boundary` parameter of a `multipart/byteranges` Content-Type.
pub fn multipart_boundary(content_type: &str) -> String {
    let (mt, params) = content_type
        .split_once(';')
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"));
    assert_eq!(
        mt.trim().to_ascii_lowercase(),
        "multipart/byteranges",
        "{content_type}"
    );
    for p in params.split(';') {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("boundary") {
                return v.trim().trim_matches('"').to_string();
            }
        }
    }
    panic!("no boundary in {content_type:?}")
}

/// Parses a `multipart/byteranges` body (RFC 9110 §14.6 / RFC 2046 §5.1.1).
pub fn parse_multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}").into_bytes();
    let find = |from: usize| -> Option<usize> {
        // A delimiter starts the body or follows CRLF.
        let mut i = from;
        while i + delim.len() <= body.len() {
            if body[i..].starts_with(&delim) && (i == 0 || body[..i].ends_with(b"\r\n")) {
                return Some(i);
            }
            i += 1;
        }
        None
    };
    let mut parts = Vec::new();
    let mut pos = find(0).expect("no first boundary delimiter in multipart body");
    loop {
        let after = pos + delim.len();
        if body[after..].starts_with(b"--") {
            break; // close delimiter
        }
        let line_end = after
            + body[after..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("delimiter line ends")
            + 2;
        let head_end = if body[line_end..].starts_with(b"\r\n") {
            // A part with no header fields: its data starts after the empty line.
            line_end + 2
        } else {
            line_end
                + body[line_end..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| p + 4)
                    .expect("part head not terminated")
        };
        let head = String::from_utf8_lossy(&body[line_end..head_end]).into_owned();
        let headers = head
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("part header line");
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let next = find(head_end).expect("multipart body lacks a closing delimiter");
        let data_end = next - 2; // the CRLF before the delimiter belongs to it
        parts.push(Part {
            headers,
            body: body[head_end..data_end].to_vec(),
        });
        pos = next;
    }
    parts
}

/// Checks the headers every file response carries: nosniff, `Server: bypass`, a current `Date`.
#[track_caller]
pub fn assert_common_file_headers(r: &Response) {
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "nosniff on every file response:\n{r:?}"
    );
    assert_eq!(r.header("server"), Some("bypass"), "Server: bypass\n{r:?}");
    let date = r.expect_header("date");
    let d = parse_http_date(date).unwrap_or_else(|| panic!("Date is not an HTTP date: {date:?}"));
    let now = now_secs();
    assert!(d + 60 >= now && d <= now + 60, "Date is not now: {date}");
}

pub mod gunicorn;
