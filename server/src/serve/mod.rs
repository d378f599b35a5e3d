//! The response decision: given a parsed request and what is on disk, which status, which
//! headers and which bytes. The pieces that decide are pure ([`conditional`], [`range`],
//! [`negotiate`], [`file`]); [`Service`] ties them to the files of the mounts.

pub mod conditional;
pub mod file;
pub mod negotiate;
pub mod range;
pub mod reply;
mod static_files;

use std::fs::File;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::{Config, MountKind};
use crate::files::manifest::Manifest;
use crate::files::mount::{Mount, Mounts};
use crate::files::open::{self, OpenError};
use crate::files::{mime, path};
use crate::http::request::{Method, Request};
use file::{BodyPlan, FileMeta, FilePolicy};
use negotiate::Encoding;
use reply::{ConnectionHeader, Output};
use static_files::StaticFiles;

/// Cache-Control of a content-hashed static file. No `public`: REDbot rightly calls it
/// unnecessary for a response without Authorization.
pub const IMMUTABLE: &[u8] = b"max-age=31536000, immutable";

/// Everything the workers share: the mounts and the policies from the command line.
#[derive(Debug)]
pub struct Site {
    pub mounts: Mounts,
    static_cache_control: Vec<u8>,
    media_cache_control: Vec<u8>,
    immutable: Option<regex_lite::Regex>,
}

impl Site {
    pub fn new(config: &Config) -> Result<Site, String> {
        let mut mounts = Vec::with_capacity(config.mounts.len());
        for spec in &config.mounts {
            mounts.push(
                Mount::open(spec)
                    .map_err(|e| format!("opening mount directory {}: {e}", spec.dir.display()))?,
            );
        }
        Ok(Site {
            mounts: Mounts::new(mounts),
            static_cache_control: format!("max-age={}", config.static_max_age).into_bytes(),
            media_cache_control: config.media_cache_control.clone().into_bytes(),
            immutable: config.immutable.clone(),
        })
    }
}

/// One worker's view of the site: the shared [`Site`] plus per-thread state (the open-file
/// cache of static mounts, manifest snapshots) that needs no locking.
pub struct Service {
    site: Arc<Site>,
    manifests: Vec<(u64, Arc<Manifest>)>,
    static_files: StaticFiles,
    boundary: String,
}

impl Service {
    pub fn new(site: Arc<Site>) -> Self {
        let manifests = site
            .mounts
            .iter()
            .map(|_| (u64::MAX, Arc::new(Manifest::default())))
            .collect();
        let static_files = StaticFiles::new(site.mounts.iter().count());
        Service {
            site,
            manifests,
            static_files,
            boundary: boundary(),
        }
    }

    /// Appends the complete reply to `req` to `out`. `keep_alive` is whether the connection
    /// stays open after it (the request's wish, overruled by the connection when it must close).
    pub fn respond(&mut self, req: &Request<'_>, keep_alive: bool, out: &mut Output) {
        let connection = ConnectionHeader::new(req.version, keep_alive);
        let head_only = req.method == Method::Head;
        let decoded = match path::decode_target(req.target) {
            Ok(p) => p,
            Err(path::PathError::BadRequest) => {
                return error(out, 400, "bad request path", connection, head_only);
            }
            Err(path::PathError::NotFound) => {
                return error(out, 404, "not found", connection, head_only);
            }
        };
        let Some((index, rel)) = self.site.mounts.route(&decoded) else {
            return error(out, 404, "not found", connection, head_only);
        };
        if !matches!(req.method, Method::Get | Method::Head) {
            simple(
                out,
                405,
                "method not allowed",
                &[("Allow", "GET, HEAD")],
                connection,
                head_only,
            );
            return;
        }
        let site = Arc::clone(&self.site);
        let mount = site.mounts.get(index);
        match mount.kind {
            MountKind::Static => self.respond_static(req, index, mount, rel, connection, out),
            MountKind::Media => self.respond_media(req, mount, rel, connection, out),
        }
    }

    fn respond_static(
        &mut self,
        req: &Request<'_>,
        index: usize,
        mount: &Mount,
        rel: &str,
        connection: ConnectionHeader,
        out: &mut Output,
    ) {
        let head_only = req.method == Method::Head;
        let entry = match self.static_files.lookup(index, mount, rel) {
            Ok(Some(entry)) => entry,
            Ok(None) => return error(out, 404, "not found", connection, head_only),
            Err(e) => return server_error(out, &mount.dir, rel, &e, connection, head_only),
        };
        let encoding = negotiate::choose(req.headers.get_all("accept-encoding"), entry.available);
        let rep = entry.representation(encoding);
        let immutable = {
            let watch = mount.manifest.as_ref();
            let slot = &mut self.manifests[index];
            if let Some(watch) = watch
                && watch.generation() != slot.0
            {
                *slot = watch.snapshot();
            }
            slot.1.hashed.contains(rel)
                || self
                    .site
                    .immutable
                    .as_ref()
                    .is_some_and(|re| re.is_match(rel))
        };
        let policy = FilePolicy {
            content_type: entry.content_type,
            encoding,
            cache_control: if immutable {
                IMMUTABLE
            } else {
                &self.site.static_cache_control
            },
            vary_accept_encoding: !entry.available.only_identity(),
            attachment: false,
            sandbox: false,
        };
        let meta = FileMeta {
            len: rep.len,
            etag: &rep.etag,
            last_modified: rep.mtime_secs,
        };
        let plan = file::respond(req, &meta, &policy, connection, &self.boundary, out.bytes());
        push_body(out, &rep.file, plan, true);
    }

    fn respond_media(
        &mut self,
        req: &Request<'_>,
        mount: &Mount,
        rel: &str,
        connection: ConnectionHeader,
        out: &mut Output,
    ) {
        let head_only = req.method == Method::Head;
        // Uploads change at any time: open on every request, so that a replaced or deleted
        // file is seen at once, and serve the open file so the body matches its metadata.
        let opened = match open::open_beneath(mount.root(), rel) {
            Ok(f) => f,
            Err(OpenError::NotFound) => return error(out, 404, "not found", connection, head_only),
            Err(OpenError::Io(e)) => {
                return server_error(out, &mount.dir, rel, &e, connection, head_only);
            }
        };
        let content_type = mime::content_type(rel);
        let etag = etag(
            opened.mtime_secs,
            opened.mtime_nanos,
            opened.len,
            Encoding::Identity,
        );
        let policy = FilePolicy {
            content_type,
            encoding: Encoding::Identity,
            cache_control: &self.site.media_cache_control,
            vary_accept_encoding: false,
            attachment: mime::is_active_content(content_type),
            sandbox: true,
        };
        let meta = FileMeta {
            len: opened.len,
            etag: &etag,
            last_modified: opened.mtime_secs,
        };
        let plan = file::respond(req, &meta, &policy, connection, &self.boundary, out.bytes());
        push_body(out, &Rc::new(opened.file), plan, false);
    }
}

/// A strong entity-tag that differs whenever the file is replaced or rewritten (nanosecond
/// mtime and size) and between the representations of one resource.
pub fn etag(mtime_secs: u64, mtime_nanos: u32, len: u64, encoding: Encoding) -> Vec<u8> {
    let suffix = match encoding {
        Encoding::Identity => "",
        other => other.token(),
    };
    let dash = if suffix.is_empty() { "" } else { "-" };
    format!("\"{mtime_secs:x}.{mtime_nanos:x}-{len:x}{dash}{suffix}\"").into_bytes()
}

fn push_body(out: &mut Output, file: &Rc<File>, plan: BodyPlan, by_reference: bool) {
    match plan {
        BodyPlan::None => {}
        BodyPlan::Range(r) => out.push_file(file, r.start, r.len, by_reference),
        BodyPlan::Multipart { parts, closing } => {
            for (header, r) in parts {
                out.bytes().extend_from_slice(&header);
                out.push_file(file, r.start, r.len, by_reference);
            }
            out.bytes().extend_from_slice(&closing);
        }
    }
    out.end_reply();
}

fn simple(
    out: &mut Output,
    status: u16,
    text: &str,
    extra: &[(&str, &str)],
    connection: ConnectionHeader,
    head_only: bool,
) {
    reply::simple(out.bytes(), status, text, extra, connection, head_only);
    out.end_reply();
}

/// An error reply with a one-line text body.
pub fn error(
    out: &mut Output,
    status: u16,
    text: &str,
    connection: ConnectionHeader,
    head_only: bool,
) {
    simple(out, status, text, &[], connection, head_only);
}

fn server_error(
    out: &mut Output,
    dir: &std::path::Path,
    rel: &str,
    e: &std::io::Error,
    connection: ConnectionHeader,
    head_only: bool,
) {
    eprintln!("bypass: error opening {}/{rel}: {e}", dir.display());
    error(out, 500, "internal server error", connection, head_only);
}

/// A multipart boundary that will not occur in a file by accident: random per worker.
fn boundary() -> String {
    let mut bytes = [0u8; 12];
    // SAFETY: `bytes` is a valid writable buffer of the length passed.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // getrandom cannot fail for 12 bytes after boot; fall back to time and address bits.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(t as u64).to_le_bytes());
    }
    let mut s = String::from("bypass-");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
