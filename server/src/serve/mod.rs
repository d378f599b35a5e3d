//! The response decision: given a parsed request and what is on disk, which status, which
//! headers and which bytes. The pieces that decide are pure ([`conditional`], [`range`],
//! [`negotiate`], [`file`](mod@file)); [`Service`] ties them to the files of the mounts.

pub mod conditional;
pub mod file;
mod memo;
pub mod negotiate;
pub mod range;
pub mod reply;
mod static_files;

use std::fs::File;
use std::rc::Rc;
use std::sync::Arc;

use crate::cache::{self, Cache, Entry, EntrySpec};
use crate::config::{Config, MountKind};
use crate::files::manifest::Manifest;
use crate::files::mount::{Mount, Mounts};
use crate::files::open::{self, OpenError};
use crate::files::{self, mime, path};
use crate::http::date;
use crate::http::request::{Method, Request};
use crate::proxy::ProxySettings;
use crate::proxy::head::Accel;
use crate::serve::range::ByteRange;
use file::{BodyPlan, FileMeta, FilePolicy};
use memo::{Memo, Prepared, Resolution};
use negotiate::Encoding;
use reply::{ConnectionHeader, Output};
use static_files::StaticFiles;

/// Cache-Control of a content-hashed static file. No `public`: REDbot rightly calls it
/// unnecessary for a response without Authorization.
pub const IMMUTABLE: &[u8] = b"max-age=31536000, immutable";

/// What [`Service::respond`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// The reply is in the output.
    Answered,
    /// The request belongs to the app: nothing was written.
    Forward,
}

/// Everything the workers share: the mounts and the policies from the command line.
#[derive(Debug)]
pub struct Site {
    pub mounts: Mounts,
    /// The app server behind the mounts, if any.
    pub proxy: Option<ProxySettings>,
    static_cache_control: Vec<u8>,
    media_cache_control: Vec<u8>,
    immutable: Option<regex_lite::Regex>,
    /// The content cache's budget per worker and its telemetry.
    pub cache: cache::Settings,
    /// Descriptors each worker's open-file cache may hold.
    pub static_fds_per_worker: usize,
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
            proxy: config.proxy.clone(),
            static_cache_control: format!("max-age={}", config.static_max_age).into_bytes(),
            media_cache_control: config.media_cache_control.clone().into_bytes(),
            immutable: config.immutable.clone(),
            cache: cache::Settings {
                per_worker: config.cache_size / config.workers.max(1) as u64,
                memfds_per_worker: files::descriptor_share(config.workers),
                prewarm: config.prewarm,
                telemetry: Default::default(),
            },
            static_fds_per_worker: files::descriptor_share(config.workers),
        })
    }
}

/// One worker's view of the site: the shared [`Site`] plus per-thread state (the open-file
/// cache of static mounts, manifest snapshots) that needs no locking.
pub struct Service {
    site: Arc<Site>,
    local: Local,
}

/// The worker's own state, apart from the shared site so that answering can borrow both.
struct Local {
    manifests: Vec<(u64, Arc<Manifest>)>,
    static_files: StaticFiles,
    memo: Memo,
    cache: Cache,
    boundary: String,
}

impl Service {
    pub fn new(site: Arc<Site>) -> Self {
        let manifests = site
            .mounts
            .iter()
            .map(|_| (u64::MAX, Arc::new(Manifest::default())))
            .collect();
        let static_files = StaticFiles::new(site.mounts.iter().count(), site.static_fds_per_worker);
        let cache = Cache::new(&site.cache);
        let mut local = Local {
            manifests,
            static_files,
            memo: Memo::default(),
            cache,
            boundary: boundary(),
        };
        if site.cache.prewarm && local.cache.enabled() {
            local.prewarm(&site);
        }
        Service { site, local }
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    /// Appends the complete reply to `req` to `out`, or says that the request is the app's
    /// (outside every mount, with an upstream configured). `keep_alive` is whether the
    /// connection stays open after it (the request's wish, overruled by the connection when it
    /// must close).
    pub fn respond(&mut self, req: &Request<'_>, keep_alive: bool, out: &mut Output) -> Routed {
        let connection = ConnectionHeader::new(req.version, keep_alive);
        let head_only = req.method == Method::Head;
        let memo_key = if matches!(req.method, Method::Get | Method::Head) {
            self.local
                .memo
                .prepare(req.target, req.headers.get_all("accept-encoding"))
        } else {
            None
        };
        if let Some(key) = memo_key
            && let Some(hit) = self.local.memo.get(key, date::now_secs())
        {
            let site = &*self.site;
            let mount = site.mounts.get(hit.mount);
            self.local
                .serve_static(req, site, mount, &hit, connection, out);
            return Routed::Answered;
        }
        let forwarding = self.site.proxy.is_some();
        let decoded = match path::decode_target(req.target) {
            Ok(p) => p,
            // A target that is no file path may still be a fine URL for the app; one that
            // names a mount is answered here.
            Err(_) if forwarding && !self.site.mounts.claims(req.target) => return Routed::Forward,
            Err(path::PathError::BadRequest) => {
                error(out, 400, "bad request path", connection, head_only);
                return Routed::Answered;
            }
            Err(path::PathError::NotFound) => {
                error(out, 404, "not found", connection, head_only);
                return Routed::Answered;
            }
        };
        let Some((index, rel)) = self.site.mounts.route(&decoded) else {
            if forwarding {
                return Routed::Forward;
            }
            error(out, 404, "not found", connection, head_only);
            return Routed::Answered;
        };
        let site = &*self.site;
        let mount = site.mounts.get(index);
        if mount.kind == MountKind::Internal {
            error(out, 404, "not found", connection, head_only);
            return Routed::Answered;
        }
        if !matches!(req.method, Method::Get | Method::Head) {
            simple(
                out,
                405,
                "method not allowed",
                &[("Allow", "GET, HEAD")],
                connection,
                head_only,
            );
            return Routed::Answered;
        }
        match mount.kind {
            MountKind::Static => self
                .local
                .respond_static(req, site, index, mount, rel, connection, memo_key, out),
            MountKind::Media | MountKind::Internal => self
                .local
                .respond_media(req, site, index, mount, rel, connection, None, out),
        }
        Routed::Answered
    }

    /// Answers `req` with the file an app named in X-Accel-Redirect (on any mount, internal
    /// ones included), keeping the fields the app set.
    pub fn respond_accel(
        &mut self,
        req: &Request<'_>,
        accel: &Accel,
        keep_alive: bool,
        out: &mut Output,
    ) {
        let connection = ConnectionHeader::new(req.version, keep_alive);
        let head_only = req.method == Method::Head;
        let uri = String::from_utf8_lossy(&accel.uri);
        let Ok(decoded) = path::decode_target(&accel.uri) else {
            log!("bypass: the app sent X-Accel-Redirect {uri:?}, which is no valid path");
            return error(out, 500, "internal server error", connection, head_only);
        };
        let Some((index, rel)) = self.site.mounts.route(&decoded) else {
            log!("bypass: the app sent X-Accel-Redirect {uri:?}, which is under no mount");
            return error(out, 404, "not found", connection, head_only);
        };
        let site = &*self.site;
        let mount = site.mounts.get(index);
        match mount.kind {
            MountKind::Static => self
                .local
                .respond_static(req, site, index, mount, rel, connection, None, out),
            MountKind::Media | MountKind::Internal => {
                self.local
                    .respond_media(req, site, index, mount, rel, connection, Some(accel), out)
            }
        }
    }
}

impl Local {
    /// Loads every static mount's hashed files (and their precompressed siblings) into the
    /// cache, stylesheets and scripts first, then images, then the rest, while they fit
    /// without evicting anything.
    fn prewarm(&mut self, site: &Site) {
        for (index, mount) in site.mounts.iter().enumerate() {
            if mount.kind != MountKind::Static {
                continue;
            }
            let Some(watch) = &mount.manifest else {
                continue;
            };
            self.manifests[index] = watch.snapshot();
            let mut names: Vec<&String> = self.manifests[index].1.hashed.iter().collect();
            let rank = |name: &str| {
                let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
                match ext.as_str() {
                    "css" | "js" | "mjs" => 0,
                    "png" | "jpg" | "jpeg" | "gif" | "webp" | "avif" | "svg" | "ico" => 1,
                    "woff2" | "woff" | "ttf" | "otf" => 2,
                    _ => 3,
                }
            };
            names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            let names: Vec<String> = names.into_iter().cloned().collect();
            'files: for rel in &names {
                let Ok(Some(resource)) = self.static_files.lookup(index, mount, rel) else {
                    continue;
                };
                for encoding in Encoding::ALL {
                    if !resource.available.contains(encoding) {
                        continue;
                    }
                    let rep = resource.representation(encoding);
                    if !self.cache.fits(rep.len) {
                        continue;
                    }
                    let policy = Self::static_policy(
                        site,
                        &self.manifests[index].1,
                        rel,
                        &resource,
                        encoding,
                    );
                    let key = cache::key(index, encoding, rel);
                    let spec = EntrySpec {
                        mount: index,
                        encoding,
                        rel,
                        stamp: rep.stamp,
                        etag: &rep.etag,
                        last_modified: rep.mtime_secs,
                        policy,
                    };
                    let entry = if self.cache.copies_static(rep.len) {
                        self.cache.build(&rep.file, &spec)
                    } else {
                        self.cache.build_referenced(&spec)
                    };
                    if let Some(entry) = entry {
                        if entry.weight() > self.cache.room() {
                            break 'files;
                        }
                        self.cache.insert(key, entry);
                    }
                }
            }
        }
    }

    /// How a static representation is served: type, coding, cache policy.
    fn static_policy<'s>(
        site: &'s Site,
        manifest: &Manifest,
        rel: &str,
        resource: &static_files::Resource,
        encoding: Encoding,
    ) -> FilePolicy<'s> {
        let immutable = manifest.hashed.contains(rel)
            || site.immutable.as_ref().is_some_and(|re| re.is_match(rel));
        FilePolicy {
            content_type: resource.content_type,
            encoding,
            cache_control: if immutable {
                IMMUTABLE
            } else {
                &site.static_cache_control
            },
            vary_accept_encoding: !resource.available.only_identity(),
            attachment: false,
            sandbox: false,
            extra: &[],
        }
    }

    /// Answers from a cache entry: the stored reply for a plain request, else the full
    /// decision (conditionals, ranges) over the entry's metadata and bytes.
    fn respond_cached(
        &mut self,
        req: &Request<'_>,
        key: u64,
        entry: &Entry,
        file: Option<&Rc<File>>,
        connection: ConnectionHeader,
        out: &mut Output,
    ) {
        let head_only = req.method == Method::Head;
        if plain(req) {
            entry.write_hit(connection, head_only, file, self.cache.frames(), out);
            let sent = if head_only { 0 } else { entry.len() };
            self.cache.record_hit(key, entry.len(), sent);
            return;
        }
        let meta = FileMeta {
            len: entry.len(),
            etag: &entry.etag,
            last_modified: entry.last_modified,
        };
        let plan = file::respond(
            req,
            &meta,
            &entry.policy(),
            connection,
            &self.boundary,
            out.bytes(),
        );
        let mut sent = 0;
        match plan {
            BodyPlan::None => {}
            BodyPlan::Range(ByteRange { start, len }) => {
                entry.push_range(out, start, len, file);
                sent += len;
            }
            BodyPlan::Multipart { parts, closing } => {
                for (header, r) in parts {
                    out.bytes().extend_from_slice(&header);
                    entry.push_range(out, r.start, r.len, file);
                    sent += r.len;
                }
                out.bytes().extend_from_slice(&closing);
            }
        }
        out.end_reply();
        self.cache.record_hit(key, entry.len(), sent);
    }

    #[allow(clippy::too_many_arguments)]
    /// Resolves `rel` on a static mount to a representation, remembers the resolution for
    /// this second under `memo_key` (the request's, when it came from the request's own
    /// target), and answers with it.
    #[allow(clippy::too_many_arguments)]
    fn respond_static(
        &mut self,
        req: &Request<'_>,
        site: &Site,
        index: usize,
        mount: &Mount,
        rel: &str,
        connection: ConnectionHeader,
        memo_key: Option<Prepared>,
        out: &mut Output,
    ) {
        let head_only = req.method == Method::Head;
        // Read before the open-file cache looks at the disk, so that the memo never keeps a
        // resolution into a second later than the one it was checked in.
        let now = date::now_secs();
        let resource = match self.static_files.lookup(index, mount, rel) {
            Ok(Some(resource)) => resource,
            Ok(None) => return error(out, 404, "not found", connection, head_only),
            Err(e) => return server_error(out, &mount.dir, rel, &e, connection, head_only),
        };
        let encoding =
            negotiate::choose(req.headers.get_all("accept-encoding"), resource.available);
        let resolved = Resolution {
            mount: index,
            rel: Rc::from(rel),
            resource,
            encoding,
            cache_key: cache::key(index, encoding, rel),
        };
        self.serve_static(req, site, mount, &resolved, connection, out);
        if let Some(key) = memo_key {
            self.memo.put(key, now, resolved);
        }
    }

    /// Answers with a resolved static representation: from the content cache when it holds
    /// a current copy (or can take one), else from the file.
    fn serve_static(
        &mut self,
        req: &Request<'_>,
        site: &Site,
        mount: &Mount,
        resolved: &Resolution,
        connection: ConnectionHeader,
        out: &mut Output,
    ) {
        let (index, rel, entry, encoding) = (
            resolved.mount,
            &*resolved.rel,
            &resolved.resource,
            resolved.encoding,
        );
        let rep = entry.representation(encoding);
        if let Some(watch) = mount.manifest.as_ref() {
            let slot = &mut self.manifests[index];
            if watch.generation() != slot.0 {
                *slot = watch.snapshot();
                // A new collectstatic: immutability and files may all have changed.
                self.cache.drop_mount(index);
            }
        }
        let key = resolved.cache_key;
        if self.cache.enabled() && self.cache.fits(rep.len) {
            let file = Some(&rep.file);
            if let Some(cached) = self.cache.lookup(key, index, encoding, rel) {
                if cached.stamp == rep.stamp {
                    return self.respond_cached(req, key, &cached, file, connection, out);
                }
                // The open-file cache saw the file change: the copy is stale.
                self.cache.invalidate(key);
            }
            self.cache.record_miss(key, rep.len);
            if self.cache.should_admit(key, rep.len) {
                let policy =
                    Self::static_policy(site, &self.manifests[index].1, rel, entry, encoding);
                let spec = EntrySpec {
                    mount: index,
                    encoding,
                    rel,
                    stamp: rep.stamp,
                    etag: &rep.etag,
                    last_modified: rep.mtime_secs,
                    policy,
                };
                let built = if self.cache.copies_static(rep.len) {
                    self.cache.build(&rep.file, &spec)
                } else {
                    self.cache.build_referenced(&spec)
                };
                if let Some(built) = built {
                    self.cache.insert(key, Rc::clone(&built));
                    return self.respond_cached(req, key, &built, file, connection, out);
                }
            }
        }
        let policy = Self::static_policy(site, &self.manifests[index].1, rel, entry, encoding);
        let meta = FileMeta {
            len: rep.len,
            etag: &rep.etag,
            last_modified: rep.mtime_secs,
        };
        let plan = file::respond(req, &meta, &policy, connection, &self.boundary, out.bytes());
        push_body(out, &rep.file, plan, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_media(
        &mut self,
        req: &Request<'_>,
        site: &Site,
        index: usize,
        mount: &Mount,
        rel: &str,
        connection: ConnectionHeader,
        accel: Option<&Accel>,
        out: &mut Output,
    ) {
        let head_only = req.method == Method::Head;
        let key = cache::key(index, Encoding::Identity, rel);
        // A copy's stored head carries the mount's fields, not an app's: X-Accel-Redirect
        // answers go around the cache.
        let use_cache = self.cache.enabled() && accel.is_none();
        if use_cache && let Some(cached) = self.cache.lookup(key, index, Encoding::Identity, rel) {
            // Uploads change at any time: a copy is served only while the path still names
            // the very file it was taken from (one fstatat), so a replaced, rewritten,
            // truncated or deleted upload is never served from the cache, not even once.
            if open::stat_at(mount.root(), rel) == Some(cached.stamp) {
                return self.respond_cached(req, key, &cached, None, connection, out);
            }
            self.cache.invalidate(key);
        }
        // Without a usable copy, open on every request, so that a replaced or deleted file is
        // seen at once, and serve the open file so the body matches its metadata.
        let opened = match open::open_beneath(mount.root(), rel) {
            Ok(f) => f,
            Err(OpenError::NotFound) => return error(out, 404, "not found", connection, head_only),
            Err(OpenError::Io(e)) => {
                return server_error(out, &mount.dir, rel, &e, connection, head_only);
            }
        };
        let content_type = mime::content_type(rel);
        let cacheable = use_cache && self.cache.fits(opened.len);
        if cacheable {
            self.cache.record_miss(key, opened.len);
        }
        if cacheable && self.cache.should_admit(key, opened.len) {
            let etag = etag(
                opened.mtime_secs,
                opened.mtime_nanos,
                opened.len,
                Encoding::Identity,
            );
            let spec = EntrySpec {
                mount: index,
                encoding: Encoding::Identity,
                rel,
                stamp: opened.stamp,
                etag: &etag,
                last_modified: opened.mtime_secs,
                policy: Self::media_policy(site, content_type),
            };
            if let Some(built) = self.cache.build(&opened.file, &spec) {
                self.cache.insert(key, Rc::clone(&built));
                return self.respond_cached(req, key, &built, None, connection, out);
            }
        }
        let etag = etag(
            opened.mtime_secs,
            opened.mtime_nanos,
            opened.len,
            Encoding::Identity,
        );
        let policy = match accel {
            Some(accel) => Self::accel_policy(site, content_type, accel),
            None => Self::media_policy(site, content_type),
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

impl Local {
    /// How an upload is served: never trusted, so sandboxed, and downloaded when active.
    fn media_policy<'s>(site: &'s Site, content_type: &'static str) -> FilePolicy<'s> {
        FilePolicy {
            content_type,
            encoding: Encoding::Identity,
            cache_control: &site.media_cache_control,
            vary_accept_encoding: false,
            attachment: mime::is_active_content(content_type),
            sandbox: true,
            extra: &[],
        }
    }

    /// The media policy with what the app set on an X-Accel-Redirect: its Content-Type and
    /// Cache-Control replace the mount's, its other kept fields are added, and an app that
    /// chose a Content-Disposition is not overruled.
    fn accel_policy<'s>(
        site: &'s Site,
        content_type: &'static str,
        accel: &'s Accel,
    ) -> FilePolicy<'s> {
        let mut policy = Self::media_policy(site, content_type);
        if let Some(t) = &accel.content_type {
            policy.content_type = t;
            policy.attachment = mime::is_active_content(t);
        }
        if let Some(cc) = &accel.cache_control {
            policy.cache_control = cc;
        }
        policy.extra = &accel.fields;
        if accel.has_field("content-disposition") {
            policy.attachment = false;
        }
        policy
    }
}

/// Whether the stored reply answers `req` as is: no precondition and no range, which are the
/// only request fields that change a `200` for a negotiated representation.
fn plain(req: &Request<'_>) -> bool {
    !req.headers.iter().any(|(name, _)| {
        let n = name.as_bytes();
        (n.len() > 3 && n[..3].eq_ignore_ascii_case(b"if-")) || name.eq_ignore_ascii_case("range")
    })
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
    log!("bypass: error opening {}/{rel}: {e}", dir.display());
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
