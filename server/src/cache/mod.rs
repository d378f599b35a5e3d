//! The hot-asset cache: each worker keeps the bytes and the rendered `200` head of the
//! representations it serves most, so that a hit on a small file costs no system call of its
//! own (the reply joins the connection's next send).
//!
//! - Budget: `--cache-size` split evenly over the workers; each worker owns its slice
//!   ([`Cache`]), so the hit path takes no lock and touches no shared cache line.
//! - Policy: [`s3fifo::S3Fifo`], weighted by bytes; files above [`FIRST_MISS_ADMIT`] are only
//!   admitted on their second miss (they are costly to copy in for a one-hit wonder).
//! - Memory: bodies up to [`MEMFD_ABOVE`] live on the heap (anonymous memory); larger ones
//!   (media only, see [`STATIC_MAX`]) in a sealed memfd (shrink, grow and write seals), which engines send with sendfile like any
//!   file. Nothing is ever a mapping of a file another process can truncate, so no SIGBUS, and
//!   a sealed memfd cannot change under a send in flight.
//! - Copy-in ([`copy_in`]): the file is fstat'ed before and after the read and must match the
//!   metadata the response is built from; a file modified or changed (mtime or ctime) within
//!   [`RACY_NS`] of the copy is not admitted (it may be mid-write, and a later write in the
//!   same timestamp tick would be invisible to the stat check, as with git's "racily clean"
//!   index entries).
//! - Each entry holds its pre-rendered head with the `Date` value spliced in at hit time
//!   ([`Entry::write_hit`]).
//!
//! Invalidation is done by the caller ([`crate::serve`]): static entries are checked on every
//! hit against the open-file cache's metadata (revalidated each second) and dropped per mount
//! when the manifest reloads; media entries are checked with one `fstatat` on every hit
//! ([`crate::files::open::stat_at`]), so a changed upload is never served from the cache.

pub mod metrics;
pub mod s3fifo;
pub mod shards;

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::rc::Rc;
use std::sync::Arc;

use crate::http::date;
use crate::serve::file::FilePolicy;
use crate::serve::negotiate::Encoding;
use crate::serve::reply::{ConnectionHeader, Output};
use metrics::{Telemetry, WorkerStats};
use s3fifo::S3Fifo;
use shards::Shards;

/// Default `--cache-size`.
pub const DEFAULT_SIZE: u64 = 256 << 20;
/// Largest representation cached: 16 MiB, and at most an eighth of a worker's slice so that
/// one file cannot flush the rest.
pub const MAX_ENTRY: u64 = 16 << 20;
/// Larger files are admitted on their second miss only.
pub const FIRST_MISS_ADMIT: u64 = 256 << 10;
/// Bodies above this go to a sealed memfd and out by sendfile; smaller ones are copied into
/// the send buffer with their head, where many coalesce into one send. Measured on a 23 KB
/// file (one worker, 32 connections): sendfile from the memfd cost 9.2 µs of server CPU per
/// request pipelined and ~13 µs not pipelined, copying from the heap 13.2 and ~15 µs. Same
/// threshold as the engines' own sendfile threshold, below which they copy anyway.
pub const MEMFD_ABOVE: u64 = 8 << 10;
/// Largest static representation cached. A static file is already open (the per-worker
/// open-file cache) and its pages are in the page cache, so above the engines' sendfile
/// threshold a copy gains nothing: measured on a ~300 KB file, sendfile from a memfd copy cost
/// 35-49 µs of server CPU per request against 31-40 µs from the page cache, and the same on
/// 23 KB. Media files above it are still cached (in a memfd): uncached, each request opens and
/// copies them.
pub const STATIC_MAX: u64 = MEMFD_ABOVE;
/// A file modified this recently is not copied in.
pub const RACY_NS: i128 = 100_000_000;
/// Bookkeeping bytes counted per entry besides body and head.
const ENTRY_OVERHEAD: u64 = 256;

/// The cache configuration shared by the workers.
#[derive(Debug)]
pub struct Settings {
    /// Bytes each worker may hold; 0 disables the cache.
    pub per_worker: u64,
    pub prewarm: bool,
    pub telemetry: Arc<Telemetry>,
}

/// Identity of a file's content as far as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    /// A writer can set mtime back (`cp -p`, `rsync -t`), but not ctime.
    pub ctime_ns: i128,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Where a cached body lives.
#[derive(Debug)]
pub enum Body {
    Heap(Rc<[u8]>),
    /// Sealed: its size and content can never change.
    Memfd(Rc<File>),
}

/// One cached representation.
#[derive(Debug)]
pub struct Entry {
    pub mount: usize,
    pub encoding: Encoding,
    pub rel: Box<str>,
    pub stamp: Stamp,
    /// The `200` head for a keep-alive HTTP/1.1 GET, without its final empty line.
    head: Box<[u8]>,
    /// Offset of the `Date` value in `head`.
    date_at: usize,
    pub body: Body,
    pub etag: Vec<u8>,
    pub last_modified: u64,
    pub content_type: Box<str>,
    pub cache_control: Box<[u8]>,
    pub vary_accept_encoding: bool,
    pub attachment: bool,
    pub sandbox: bool,
}

impl Entry {
    pub fn len(&self) -> u64 {
        self.stamp.len
    }

    pub fn is_empty(&self) -> bool {
        self.stamp.len == 0
    }

    pub fn policy(&self) -> FilePolicy<'_> {
        FilePolicy {
            content_type: &self.content_type,
            encoding: self.encoding,
            cache_control: &self.cache_control,
            vary_accept_encoding: self.vary_accept_encoding,
            attachment: self.attachment,
            sandbox: self.sandbox,
            extra: &[],
        }
    }

    fn weight(&self) -> u64 {
        let body = match self.body {
            Body::Heap(_) => self.len(),
            Body::Memfd(_) => self.len().div_ceil(4096) * 4096,
        };
        body + self.head.len() as u64 + self.rel.len() as u64 + ENTRY_OVERHEAD
    }

    /// Appends the whole `200` reply: the stored head with the current date and the
    /// connection's `Connection` field, then the body unless `head_only`.
    pub fn write_hit(&self, connection: ConnectionHeader, head_only: bool, out: &mut Output) {
        splice_head(&self.head, self.date_at, connection, out.bytes());
        if !head_only {
            self.push_range(out, 0, self.len());
        }
        out.end_reply();
    }

    /// Queues `len` body bytes from `offset` (within the body).
    pub fn push_range(&self, out: &mut Output, offset: u64, len: u64) {
        match &self.body {
            Body::Heap(bytes) => out.push_shared(bytes, offset as usize, len as usize),
            Body::Memfd(file) => out.push_file(file, offset, len, true),
        }
    }
}

/// Appends `head` (a head without its final CRLF) to `buf` with today's date at `date_at` and
/// the `Connection` field `connection` calls for.
pub fn splice_head(head: &[u8], date_at: usize, connection: ConnectionHeader, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(head);
    buf[start + date_at..start + date_at + date::LEN].copy_from_slice(&date::current());
    match connection {
        ConnectionHeader::Default => {}
        ConnectionHeader::KeepAlive => buf.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => buf.extend_from_slice(b"Connection: close\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

/// Splits a rendered keep-alive `200` head into what [`Entry`] stores: the head without its
/// final CRLF, and the offset of the `Date` value. `None` if it is not shaped as expected.
pub fn prepare_head(mut rendered: Vec<u8>) -> Option<(Box<[u8]>, usize)> {
    if !rendered.ends_with(b"\r\n\r\n") {
        return None;
    }
    rendered.truncate(rendered.len() - 2);
    let at = memchr::memmem::find(&rendered, b"\r\nDate: ")? + 8;
    if at + date::LEN > rendered.len() {
        return None;
    }
    Some((rendered.into_boxed_slice(), at))
}

/// The cache key of a representation: a 64-bit hash, verified against the entry on a hit.
pub fn key(mount: usize, encoding: Encoding, rel: &str) -> u64 {
    // FNV-1a, then a finaliser so that the low bits (the hash map's) are well mixed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for b in (mount as u32).to_le_bytes() {
        eat(b);
    }
    eat(encoding as u8);
    for &b in rel.as_bytes() {
        eat(b);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Why a file was not copied in.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdmitted {
    /// Size, inode or mtime differ from what the response was to be built from, before or
    /// after the read, or the read came up short.
    Changed,
    /// Modified too recently to trust the stat check.
    TooNew,
    Io,
}

/// Copies `file` (expected to be `expect`) into cache memory.
pub fn copy_in(file: &File, expect: Stamp) -> Result<Body, NotAdmitted> {
    copy_in_at(file, expect, realtime_ns())
}

/// [`copy_in`] as if the time were `now_ns` (for the racy-file rule).
fn copy_in_at(file: &File, expect: Stamp, now_ns: i128) -> Result<Body, NotAdmitted> {
    let before = Stamp::of(&file.metadata().map_err(|_| NotAdmitted::Io)?);
    if before != expect {
        return Err(NotAdmitted::Changed);
    }
    if now_ns - before.mtime_ns.max(before.ctime_ns) < RACY_NS {
        return Err(NotAdmitted::TooNew);
    }
    let len = usize::try_from(expect.len).map_err(|_| NotAdmitted::Io)?;
    let body = if expect.len > MEMFD_ABOVE {
        let mut bytes = Vec::with_capacity(len);
        if read_exact_at(file, bytes.spare_capacity_mut()) != len {
            return Err(NotAdmitted::Changed);
        }
        // SAFETY: read_exact_at initialised all `len` bytes.
        unsafe { bytes.set_len(len) };
        Body::Memfd(Rc::new(sealed_memfd(&bytes).map_err(|_| NotAdmitted::Io)?))
    } else {
        let mut rc = Rc::<[u8]>::new_uninit_slice(len);
        let slot = Rc::get_mut(&mut rc).expect("a fresh Rc is unique");
        if read_exact_at(file, slot) != len {
            return Err(NotAdmitted::Changed);
        }
        // SAFETY: read_exact_at initialised every byte of the slice.
        Body::Heap(unsafe { rc.assume_init() })
    };
    let after = Stamp::of(&file.metadata().map_err(|_| NotAdmitted::Io)?);
    if after != expect {
        return Err(NotAdmitted::Changed);
    }
    Ok(body)
}

/// Fills `buf` from the start of `file`; returns how many bytes were read (short at EOF).
fn read_exact_at(file: &File, buf: &mut [MaybeUninit<u8>]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is writable memory of `rest.len()` bytes; pread writes at most that.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                rest.as_mut_ptr().cast(),
                rest.len(),
                got as libc::off_t,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

/// A memfd holding `bytes`, sealed against any change of size or content.
fn sealed_memfd(bytes: &[u8]) -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"bypass-cache".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.write_all_at(bytes, 0)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on our own descriptor.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// What [`Cache::build`] needs besides the file.
pub struct EntrySpec<'a> {
    pub mount: usize,
    pub encoding: Encoding,
    pub rel: &'a str,
    pub stamp: Stamp,
    pub etag: &'a [u8],
    pub last_modified: u64,
    pub policy: FilePolicy<'a>,
}

/// One worker's cache.
pub struct Cache {
    fifo: S3Fifo<Rc<Entry>>,
    max_entry: u64,
    stats: Arc<WorkerStats>,
    shards: Shards,
}

impl Cache {
    pub fn new(settings: &Settings) -> Cache {
        let stats = settings.telemetry.register();
        stats.capacity_bytes.set(settings.per_worker);
        Cache {
            fifo: S3Fifo::new(settings.per_worker),
            max_entry: MAX_ENTRY.min(settings.per_worker / 8),
            stats,
            shards: Shards::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.fifo.capacity() > 0
    }

    /// Whether a media representation of `len` bytes may be cached at all.
    pub fn fits(&self, len: u64) -> bool {
        len <= self.max_entry
    }

    /// Whether a static representation of `len` bytes may be cached (see [`STATIC_MAX`]).
    pub fn fits_static(&self, len: u64) -> bool {
        len <= self.max_entry.min(STATIC_MAX)
    }

    /// The entry for this representation, if cached; counts as an access for the policy.
    pub fn lookup(
        &mut self,
        key: u64,
        mount: usize,
        encoding: Encoding,
        rel: &str,
    ) -> Option<Rc<Entry>> {
        let e = self.fifo.get(key)?;
        // A hash collision is a miss, never another file.
        (e.mount == mount && e.encoding == encoding && *e.rel == *rel).then(|| Rc::clone(e))
    }

    /// Counts a hit of `body_bytes`, and feeds the working-set sampler.
    #[inline]
    pub fn record_hit(&mut self, key: u64, size: u64, body_bytes: u64) {
        self.stats.hit(body_bytes);
        self.sample(key, size);
    }

    pub fn record_miss(&mut self, key: u64, size: u64) {
        self.stats.misses.add(1);
        self.sample(key, size);
    }

    #[inline]
    fn sample(&mut self, key: u64, size: u64) {
        if shards::sampled(key) {
            match self.shards.reference(key, size) {
                shards::Reference::First => self.stats.first_bytes.add(size),
                shards::Reference::Reuse(d) => {
                    self.stats.distance_bytes[shards::bucket(d)].add(size)
                }
            }
        }
    }

    /// Drops one entry whose file changed.
    pub fn invalidate(&mut self, key: u64) {
        if self.fifo.remove(key).is_some() {
            self.stats.invalidations.add(1);
            self.publish();
        }
    }

    /// Drops every entry of a mount (its manifest changed).
    pub fn drop_mount(&mut self, mount: usize) {
        let n = self.fifo.remove_if(|e| e.mount == mount);
        if n > 0 {
            self.stats.invalidations.add(n as u64);
            self.publish();
        }
    }

    /// Whether a miss on this representation should copy it in now.
    pub fn should_admit(&mut self, key: u64, len: u64) -> bool {
        if !self.enabled() || !self.fits(len) {
            return false;
        }
        if len > FIRST_MISS_ADMIT && !self.fifo.in_ghost(key) {
            self.fifo.note_ghost(key, len);
            return false;
        }
        true
    }

    /// Copies `file` in and renders its head; `None` (counted) if it cannot be admitted.
    pub fn build(&mut self, file: &File, spec: &EntrySpec<'_>) -> Option<Rc<Entry>> {
        let body = match copy_in(file, spec.stamp) {
            Ok(b) => b,
            Err(_) => {
                self.stats.not_admitted.add(1);
                return None;
            }
        };
        let mut rendered = Vec::with_capacity(512);
        crate::serve::file::render_ok_head(
            spec.stamp.len,
            spec.etag,
            spec.last_modified,
            &spec.policy,
            &mut rendered,
        );
        let (head, date_at) = prepare_head(rendered)?;
        Some(Rc::new(Entry {
            mount: spec.mount,
            encoding: spec.encoding,
            rel: spec.rel.into(),
            stamp: spec.stamp,
            head,
            date_at,
            body,
            etag: spec.etag.to_vec(),
            last_modified: spec.last_modified,
            content_type: spec.policy.content_type.into(),
            cache_control: spec.policy.cache_control.into(),
            vary_accept_encoding: spec.policy.vary_accept_encoding,
            attachment: spec.policy.attachment,
            sandbox: spec.policy.sandbox,
        }))
    }

    /// Stores an entry built by [`Cache::build`].
    pub fn insert(&mut self, key: u64, entry: Rc<Entry>) {
        let weight = entry.weight();
        let done = self.fifo.insert(key, weight, entry);
        self.stats.evictions.add(done.evicted);
        self.publish();
    }

    /// Room left without evicting anything (for prewarming).
    pub fn room(&self) -> u64 {
        self.fifo.capacity() - self.fifo.weight().min(self.fifo.capacity())
    }

    fn publish(&self) {
        self.stats.resident_bytes.set(self.fifo.weight());
        self.stats.entries.set(self.fifo.len() as u64);
    }
}

/// Parses a byte size: plain bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024,
/// optionally followed by `B`/`iB`, any case).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2gib"), Some(2 << 30));
        for bad in ["", "M", "-1", "1.5G", "12Q", "99999999999999T"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn head_splicing() {
        let mut rendered = Vec::new();
        let mut head = crate::http::response::Head::start(&mut rendered, 200);
        head.field_u64("Content-Length", 3);
        head.finish();
        let (head, at) = prepare_head(rendered).unwrap();
        assert!(head.ends_with(b"Content-Length: 3\r\n"));
        for (conn, line) in [
            (ConnectionHeader::Default, ""),
            (ConnectionHeader::Close, "Connection: close\r\n"),
            (ConnectionHeader::KeepAlive, "Connection: keep-alive\r\n"),
        ] {
            let mut buf = b"previous".to_vec();
            splice_head(&head, at, conn, &mut buf);
            let text = String::from_utf8(buf).unwrap();
            let today = String::from_utf8(date::current().to_vec()).unwrap();
            assert_eq!(
                text,
                format!(
                    "previousHTTP/1.1 200 OK\r\nDate: {today}\r\nServer: bypass\r\n\
                     Content-Length: 3\r\n{line}\r\n"
                )
            );
        }
        assert!(prepare_head(b"HTTP/1.1 200 OK\r\n".to_vec()).is_none());
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A minute from now: every file written by the test is old enough.
    fn later() -> i128 {
        realtime_ns() + 60_000_000_000
    }

    #[test]
    fn copy_in_checks_the_file() {
        let f = file_with(b"hello");
        let stamp = Stamp::of(&f.metadata().unwrap());
        match copy_in_at(&f, stamp, later()).unwrap() {
            Body::Heap(b) => assert_eq!(&*b, b"hello"),
            Body::Memfd(_) => panic!("small bodies live on the heap"),
        }
        let other = Stamp { len: 6, ..stamp };
        assert_eq!(
            copy_in_at(&f, other, later()).unwrap_err(),
            NotAdmitted::Changed
        );
        // Just written: it may still be being written.
        assert_eq!(copy_in(&f, stamp).unwrap_err(), NotAdmitted::TooNew);
        // Its mtime set back (cp -p) does not hide that: ctime says it just changed.
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
        let stamp = Stamp::of(&f.metadata().unwrap());
        assert_eq!(copy_in(&f, stamp).unwrap_err(), NotAdmitted::TooNew);

        let big = vec![42u8; MEMFD_ABOVE as usize + 1];
        let f = file_with(&big);
        let stamp = Stamp::of(&f.metadata().unwrap());
        let Body::Memfd(m) = copy_in_at(&f, stamp, later()).unwrap() else {
            panic!("large bodies live in a memfd")
        };
        let mut back = vec![0u8; big.len()];
        m.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, big);
        // Sealed: neither writes nor truncation are allowed.
        assert!(m.write_at(b"x", 0).is_err());
        assert!(m.set_len(1).is_err());
    }

    #[test]
    fn keys_differ_by_every_part() {
        let k = key(0, Encoding::Identity, "a.css");
        assert_ne!(k, key(1, Encoding::Identity, "a.css"));
        assert_ne!(k, key(0, Encoding::Gzip, "a.css"));
        assert_ne!(k, key(0, Encoding::Identity, "b.css"));
    }
}
