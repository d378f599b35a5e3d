//! The hot-asset cache: each worker keeps the bytes and the rendered `200` head of the
//! representations it serves most, so that a hit on a small file costs no system call of its
//! own (the reply joins the connection's next send).
//!
//! - Budget: `--cache-size` split evenly over the workers; each worker owns its slice
//!   ([`Cache`]), so the hit path takes no lock and touches no shared cache line.
//! - Policy: [`s3fifo::S3Fifo`], weighted by bytes; files above [`FIRST_MISS_ADMIT`] are only
//!   admitted on their second miss (they are costly to copy in for a one-hit wonder).
//! - Memory: bodies up to [`MEMFD_ABOVE`] live on the heap (anonymous memory); larger ones up
//!   to [`FRAMED_MAX`] in a sealed memfd right behind their rendered head ([`Body::Framed`]),
//!   so that a hit is one sendfile of head and body; larger media in a sealed memfd of their
//!   own; larger static files stay in the page cache, the entry keeping only their rendered
//!   head ([`Body::Referenced`], see [`STATIC_MAX`]). Seals forbid shrinking, growing and
//!   writing. Nothing is ever a mapping of a file another process can truncate, so no SIGBUS,
//!   and a sealed memfd cannot change under a send in flight.
//! - Copy-in ([`copy_in`]): the file is fstat'ed before and after the read and must match the
//!   metadata the response is built from; a file modified or changed (mtime or ctime) within
//!   [`RACY_NS`] of the copy is not admitted (it may be mid-write, and a later write in the
//!   same timestamp tick would be invisible to the stat check, as with git's "racily clean"
//!   index entries).
//! - Each entry holds its pre-rendered head with the `Date` value spliced in at hit time
//!   ([`Entry::write_hit`]); a framed entry hit [`REFRAME_AFTER`] times in a later second has
//!   its whole reply for that second written once into the worker's [`Arena`] (huge-page
//!   memory, never rewritten, sent by reference with vmsplice), carved out of the budget.
//!
//! Invalidation is done by the caller ([`crate::serve`]): static entries are checked on every
//! hit against the open-file cache's metadata (revalidated each second) and dropped per mount
//! when the manifest reloads; media entries are checked with one `fstatat` on every hit
//! ([`crate::files::open::stat_at`]), so a changed upload is never served from the cache.

pub mod arena;
pub mod metrics;
pub mod s3fifo;
pub mod shards;

use std::cell::{Cell, RefCell};
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
use arena::{Arena, HotFrame, Pinned};
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
/// Bodies above [`MEMFD_ABOVE`] and up to this are kept framed ([`Body::Framed`]): the memfd
/// holds the `200` head, date included, right before the body, so that a plain hit is one
/// sendfile instead of a send of the head and a sendfile of the body. The frame is re-made
/// for each second an entry is hot in (see [`REFRAME_AFTER`]), a copy that is cheap only for
/// bodies this small.
pub const FRAMED_MAX: u64 = 64 << 10;
/// A frame is made for a new second on this many hits in it: making one (head and body
/// copied into the worker's [`Arena`], ~2-3 µs for 23 KB) costs what framing saves on two or
/// three hits, so an entry hit once or twice a second is served as head plus body range.
pub const REFRAME_AFTER: u32 = 4;
/// The share of a worker's budget set aside for frames (`per_worker / FRAMES_SHARE`, in whole
/// [`arena::CHUNK`]s; none below one chunk): 16 MiB of the default 256 MiB on one worker,
/// room for ~700 hot 23 KB files per second.
pub const FRAMES_SHARE: u64 = 16;
/// Largest static representation copied in; larger ones are cached as their rendered head
/// only ([`Body::Referenced`]). A static file is already open (the per-worker open-file
/// cache) and its pages are in the page cache, so a plain copy of it gains nothing: measured on
/// a ~300 KB file, sendfile from a memfd copy cost 35-49 µs of server CPU per request against
/// 31-40 µs from the page cache, and the same on 23 KB. What a copy does gain is the frame:
/// measured on the 23 KB file, one sendfile of head and body cost ~0.7x nginx's CPU per
/// request in a null responder, against ~0.8x for a send of the head and a sendfile. Media
/// files above it are still copied (in a memfd): uncached, each request opens and copies them.
pub const STATIC_MAX: u64 = FRAMED_MAX;
/// A file modified this recently is not copied in.
pub const RACY_NS: i128 = 100_000_000;
/// Bookkeeping bytes counted per entry besides body and head.
const ENTRY_OVERHEAD: u64 = 256;

/// The cache configuration shared by the workers.
#[derive(Debug)]
pub struct Settings {
    /// Bytes each worker may hold; 0 disables the cache.
    pub per_worker: u64,
    /// Memfd-backed entries each worker may hold: each is an open descriptor, and a large
    /// warm set of mid-sized files would otherwise hold enough of them to make `accept` fail
    /// (see [`crate::files::descriptor_share`]).
    pub memfds_per_worker: usize,
    pub prewarm: bool,
    pub telemetry: Arc<Telemetry>,
}

/// One of a worker's memfd-backed entries, counted while the entry lives.
#[derive(Debug)]
struct MemfdSlot(Rc<Cell<usize>>);

impl MemfdSlot {
    fn take(live: &Rc<Cell<usize>>) -> MemfdSlot {
        live.set(live.get() + 1);
        MemfdSlot(Rc::clone(live))
    }
}

impl Drop for MemfdSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
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
    /// Above [`MEMFD_ABOVE`], up to [`FRAMED_MAX`]: a sealed memfd holding a default `200`
    /// head and then the body.
    Framed(RefCell<Frame>),
    /// Sealed: its size and content can never change.
    Memfd(Rc<File>),
    /// Not copied: a static file above [`STATIC_MAX`], sent by sendfile from the descriptor
    /// the open-file cache holds for it (which the caller has in hand on every hit). The entry
    /// keeps only the rendered head, which is what such a hit saves; holding no descriptor,
    /// it cannot keep files open beyond the open-file cache's bound.
    Referenced,
}

/// A framed entry's bytes: a sealed memfd holding the `200` head rendered when the entry was
/// made (for that second: its `Date`), then the body; and, for a later second in which the
/// entry is hot, the same reply with that second's date in the worker's [`Arena`].
#[derive(Debug)]
pub struct Frame {
    file: Rc<File>,
    head_len: u64,
    /// The second the memfd's head names.
    date: [u8; date::LEN],
    /// This second's reply, once the entry had [`REFRAME_AFTER`] hits in it.
    hot: Option<HotFrame>,
    /// Hits since the second changed (and which second), while no frame is up to date.
    stale_hits: ([u8; date::LEN], u32),
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
    /// Held by entries whose body is in a memfd.
    _memfd: Option<MemfdSlot>,
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

    /// What the entry counts against the budget: the memory it holds.
    pub fn weight(&self) -> u64 {
        let body = match self.body {
            Body::Heap(_) => self.len(),
            Body::Memfd(_) => self.len().div_ceil(4096) * 4096,
            // The frame's head shares the body's pages; a new frame replaces the old one.
            Body::Framed(_) => (self.len() + self.head.len() as u64 + 2).div_ceil(4096) * 4096,
            Body::Referenced => 0,
        };
        body + self.head.len() as u64 + self.rel.len() as u64 + ENTRY_OVERHEAD
    }

    /// Appends the whole `200` reply: the stored head with the current date and the
    /// connection's `Connection` field, then the body unless `head_only`. `file` is the
    /// representation's open file, where the body of a [`Body::Referenced`] entry comes from;
    /// `frames` is the worker's frame memory, where a hot framed entry's reply is made for the
    /// second.
    pub fn write_hit(
        &self,
        connection: ConnectionHeader,
        head_only: bool,
        file: Option<&Rc<File>>,
        frames: &mut Arena,
        out: &mut Output,
    ) {
        if let Body::Framed(frame) = &self.body
            && connection == ConnectionHeader::Default
            && !head_only
        {
            let today = date::current();
            let mut frame = frame.borrow_mut();
            if frame.date == today {
                out.push_file(&frame.file, 0, frame.head_len + self.len(), true);
                out.end_reply();
                return;
            }
            if let Some(bytes) = frame.hot.as_ref().and_then(|hot| hot.get(&today)) {
                out.push_pinned(bytes);
                out.end_reply();
                return;
            }
            if frame.stale_hits.0 != today {
                frame.stale_hits = (today, 0);
            }
            frame.stale_hits.1 += 1;
            // Without room in this second's frames, the head is rendered and the body sent
            // from the memfd, as below.
            if frame.stale_hits.1 >= REFRAME_AFTER
                && let Some(bytes) = self.frame_for(&frame, today, frames)
            {
                frame.hot = Some(bytes.downgrade(today));
                out.push_pinned(bytes);
                out.end_reply();
                return;
            }
        }
        splice_head(&self.head, self.date_at, connection, out.bytes());
        if !head_only {
            self.push_range(out, 0, self.len(), file);
        }
        out.end_reply();
    }

    /// The reply for `today` in `frames`: the head with today's date, then the body, read from
    /// the memfd of `framed`. `None` if there is no room this second or the read fails.
    fn frame_for(
        &self,
        framed: &Frame,
        today: [u8; date::LEN],
        frames: &mut Arena,
    ) -> Option<Pinned> {
        let len = usize::try_from(self.len()).ok()?;
        let head_len = self.head.len() + 2;
        frames.store(today, head_len + len, |buf| {
            let (head, body) = buf.split_at_mut(head_len);
            head[..self.head.len()].copy_from_slice(&self.head);
            head[self.date_at..self.date_at + date::LEN].copy_from_slice(&today);
            head[self.head.len()..].copy_from_slice(b"\r\n");
            framed.file.read_exact_at(body, framed.head_len)
        })
    }

    /// Queues `len` body bytes from `offset` (within the body); `file` as for
    /// [`Entry::write_hit`].
    pub fn push_range(&self, out: &mut Output, offset: u64, len: u64, file: Option<&Rc<File>>) {
        match &self.body {
            Body::Heap(bytes) => out.push_shared(bytes, offset as usize, len as usize),
            Body::Memfd(file) => out.push_file(file, offset, len, true),
            Body::Framed(frame) => {
                let frame = frame.borrow();
                out.push_file(&frame.file, frame.head_len + offset, len, true);
            }
            Body::Referenced => {
                let file = file.expect("a referenced entry is only served with its file");
                out.push_file(file, offset, len, true);
            }
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

/// A file's bytes, copied in.
#[derive(Debug)]
pub enum Copied {
    Ready(Body),
    /// Bound for a [`Body::Framed`], which needs the rendered head.
    ToFrame(Vec<u8>),
}

/// Copies `file` (expected to be `expect`) into cache memory.
pub fn copy_in(file: &File, expect: Stamp) -> Result<Copied, NotAdmitted> {
    copy_in_at(file, expect, realtime_ns())
}

/// [`copy_in`] as if the time were `now_ns` (for the racy-file rule).
fn copy_in_at(file: &File, expect: Stamp, now_ns: i128) -> Result<Copied, NotAdmitted> {
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
        if expect.len <= FRAMED_MAX {
            Copied::ToFrame(bytes)
        } else {
            let memfd = sealed_memfd(&bytes).map_err(|_| NotAdmitted::Io)?;
            Copied::Ready(Body::Memfd(Rc::new(memfd)))
        }
    } else {
        let mut rc = Rc::<[u8]>::new_uninit_slice(len);
        let slot = Rc::get_mut(&mut rc).expect("a fresh Rc is unique");
        if read_exact_at(file, slot) != len {
            return Err(NotAdmitted::Changed);
        }
        // SAFETY: read_exact_at initialised every byte of the slice.
        Copied::Ready(Body::Heap(unsafe { rc.assume_init() }))
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

/// An entry for `spec` with the `copied` body, its `200` head rendered.
fn assemble(spec: &EntrySpec<'_>, copied: Copied, memfd: Option<MemfdSlot>) -> Option<Rc<Entry>> {
    let mut rendered = Vec::with_capacity(512);
    crate::serve::file::render_ok_head(
        spec.stamp.len,
        spec.etag,
        spec.last_modified,
        &spec.policy,
        &mut rendered,
    );
    let (head, date_at) = prepare_head(rendered)?;
    let body = match copied {
        Copied::Ready(body) => body,
        Copied::ToFrame(bytes) => {
            let today = date::current();
            let mut framed = Vec::with_capacity(head.len() + 2 + bytes.len());
            splice_head(&head, date_at, ConnectionHeader::Default, &mut framed);
            framed[date_at..date_at + date::LEN].copy_from_slice(&today);
            let head_len = framed.len() as u64;
            framed.extend_from_slice(&bytes);
            Body::Framed(RefCell::new(Frame {
                file: Rc::new(sealed_memfd(&framed).ok()?),
                head_len,
                date: today,
                hot: None,
                stale_hits: (today, 0),
            }))
        }
    };
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
        _memfd: memfd,
    }))
}

/// One worker's cache.
pub struct Cache {
    fifo: S3Fifo<Rc<Entry>>,
    max_entry: u64,
    stats: Arc<WorkerStats>,
    shards: Shards,
    /// Memfd-backed entries alive, and how many may be.
    memfds: Rc<Cell<usize>>,
    max_memfds: usize,
    /// This second's frames of hot framed entries, carved out of the budget.
    frames: Arena,
    /// The frame memory last counted in the resident bytes.
    published_frames: u64,
}

impl Cache {
    pub fn new(settings: &Settings) -> Cache {
        let stats = settings.telemetry.register();
        stats.capacity_bytes.set(settings.per_worker);
        let frames = Arena::new(settings.per_worker / FRAMES_SHARE);
        Cache {
            fifo: S3Fifo::new(settings.per_worker - frames.capacity()),
            max_entry: MAX_ENTRY.min(settings.per_worker / 8),
            stats,
            shards: Shards::default(),
            memfds: Rc::default(),
            max_memfds: settings.memfds_per_worker,
            frames,
            published_frames: 0,
        }
    }

    /// The worker's frame memory, for [`Entry::write_hit`].
    pub fn frames(&mut self) -> &mut Arena {
        &mut self.frames
    }

    pub fn enabled(&self) -> bool {
        self.fifo.capacity() > 0
    }

    /// Whether a media representation of `len` bytes may be cached at all.
    pub fn fits(&self, len: u64) -> bool {
        len <= self.max_entry
    }

    /// Whether a static representation of `len` bytes is copied in; larger ones are cached as
    /// [`Body::Referenced`] (see [`STATIC_MAX`]).
    pub fn copies_static(&self, len: u64) -> bool {
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
        if self.frames.mapped() != self.published_frames {
            self.publish();
        }
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
        self.build_at(file, spec, realtime_ns())
    }

    /// [`Cache::build`] as if the time were `now_ns` (for the racy-file rule).
    fn build_at(&mut self, file: &File, spec: &EntrySpec<'_>, now_ns: i128) -> Option<Rc<Entry>> {
        let needs_memfd = spec.stamp.len > MEMFD_ABOVE;
        if needs_memfd && self.memfds.get() >= self.max_memfds {
            self.stats.not_admitted.add(1);
            return None;
        }
        let copied = match copy_in_at(file, spec.stamp, now_ns) {
            Ok(c) => c,
            Err(_) => {
                self.stats.not_admitted.add(1);
                return None;
            }
        };
        assemble(
            spec,
            copied,
            needs_memfd.then(|| MemfdSlot::take(&self.memfds)),
        )
    }

    /// Renders the head of a static representation whose body stays in its file
    /// ([`Body::Referenced`]).
    pub fn build_referenced(&mut self, spec: &EntrySpec<'_>) -> Option<Rc<Entry>> {
        assemble(spec, Copied::Ready(Body::Referenced), None)
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

    fn publish(&mut self) {
        self.published_frames = self.frames.mapped();
        self.stats
            .resident_bytes
            .set(self.fifo.weight() + self.published_frames);
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
            Copied::Ready(Body::Heap(b)) => assert_eq!(&*b, b"hello"),
            other => panic!("small bodies live on the heap, not {other:?}"),
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

        let framed = vec![41u8; MEMFD_ABOVE as usize + 1];
        let f = file_with(&framed);
        let stamp = Stamp::of(&f.metadata().unwrap());
        let Copied::ToFrame(bytes) = copy_in_at(&f, stamp, later()).unwrap() else {
            panic!("mid-sized bodies are framed")
        };
        assert_eq!(bytes, framed);

        let big = vec![42u8; FRAMED_MAX as usize + 1];
        let f = file_with(&big);
        let stamp = Stamp::of(&f.metadata().unwrap());
        let Copied::Ready(Body::Memfd(m)) = copy_in_at(&f, stamp, later()).unwrap() else {
            panic!("large bodies live in a memfd")
        };
        let mut back = vec![0u8; big.len()];
        m.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, big);
        // Sealed: neither writes nor truncation are allowed.
        assert!(m.write_at(b"x", 0).is_err());
        assert!(m.set_len(1).is_err());
    }

    /// Everything `out` holds, as the bytes a client would receive, and how many segments.
    fn drain(out: &mut Output) -> (Vec<u8>, usize) {
        let (mut bytes, mut segments) = (Vec::new(), 0);
        while let Some(segment) = out.pop_front() {
            segments += 1;
            match segment {
                crate::serve::reply::Segment::Bytes(b) => bytes.extend_from_slice(&b),
                crate::serve::reply::Segment::Shared {
                    bytes: b,
                    offset,
                    len,
                } => bytes.extend_from_slice(&b[offset..offset + len]),
                crate::serve::reply::Segment::File {
                    file, offset, len, ..
                } => {
                    let mut part = vec![0u8; len as usize];
                    file.read_exact_at(&mut part, offset).unwrap();
                    bytes.extend_from_slice(&part);
                }
                crate::serve::reply::Segment::Pinned(p) => bytes.extend_from_slice(p.bytes()),
            }
        }
        (bytes, segments)
    }

    /// A plain stylesheet's policy, for entries built in tests.
    fn css_policy() -> FilePolicy<'static> {
        FilePolicy {
            content_type: "text/css",
            encoding: Encoding::Identity,
            cache_control: b"max-age=60",
            vary_accept_encoding: false,
            attachment: false,
            sandbox: false,
            extra: &[],
        }
    }

    #[test]
    fn a_framed_entry_is_one_file_range_with_todays_head() {
        let body: Vec<u8> = (0..MEMFD_ABOVE as usize * 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let f = file_with(&body);
        let stamp = Stamp::of(&f.metadata().unwrap());
        let policy = css_policy();
        let spec = EntrySpec {
            mount: 0,
            encoding: Encoding::Identity,
            rel: "a.css",
            stamp,
            etag: b"\"x\"",
            last_modified: 0,
            policy,
        };
        // A plain GET: one file range, head and body, head as splice_head renders it. (Framed
        // and hit within one second; should a second tick in between, frame it again.)
        let (entry, wire, segments) = (0..3)
            .find_map(|_| {
                let second = date::current();
                let entry = assemble(&spec, copy_in_at(&f, stamp, later()).unwrap(), None).unwrap();
                let mut out = Output::default();
                entry.write_hit(
                    ConnectionHeader::Default,
                    false,
                    None,
                    &mut Arena::new(0),
                    &mut out,
                );
                let (wire, segments) = drain(&mut out);
                (date::current() == second).then_some((entry, wire, segments))
            })
            .unwrap();
        assert!(matches!(entry.body, Body::Framed(_)));
        assert_eq!(segments, 1);
        let mut want = Vec::new();
        splice_head(
            &entry.head,
            entry.date_at,
            ConnectionHeader::Default,
            &mut want,
        );
        let head_len = want.len();
        want.extend_from_slice(&body);
        assert_eq!(wire.len(), want.len());
        // The dates may differ if a second ticked in between; everything else may not.
        let date = entry.date_at..entry.date_at + date::LEN;
        assert_eq!(wire[..date.start], want[..date.start]);
        assert_eq!(wire[date.end..], want[date.end..]);

        // HEAD, and another Connection field: the head from the template, the body (if any)
        // from the frame past its head.
        let mut out = Output::default();
        entry.write_hit(
            ConnectionHeader::Default,
            true,
            None,
            &mut Arena::new(0),
            &mut out,
        );
        let (wire, _) = drain(&mut out);
        assert_eq!(wire.len(), head_len);
        assert!(wire.ends_with(b"\r\n\r\n"));
        let mut out = Output::default();
        entry.write_hit(
            ConnectionHeader::Close,
            false,
            None,
            &mut Arena::new(0),
            &mut out,
        );
        let (wire, segments) = drain(&mut out);
        assert_eq!(segments, 2);
        assert!(wire.ends_with(&body));
        assert!(
            std::str::from_utf8(&wire[..wire.len() - body.len()])
                .unwrap()
                .contains("Connection: close\r\n")
        );

        // A frame for another second: that date, the same body, in the arena.
        let Body::Framed(frame) = &entry.body else {
            unreachable!()
        };
        let mut frames = Arena::new(arena::CHUNK as u64);
        let tomorrow = date::format(4_000_000_000);
        let framed = entry
            .frame_for(&frame.borrow(), tomorrow, &mut frames)
            .unwrap();
        assert_eq!(framed.len(), head_len + body.len());
        assert_eq!(&framed.bytes()[date.clone()], &tomorrow);
        assert_eq!(&framed.bytes()[..date.start], &want[..date.start]);
        assert_eq!(&framed.bytes()[date.end..], &want[date.end..]);
        // A frame still held counts against the arena's room (as a stalled send's would).
        drop(framed);

        // Today, with the memfd's head out of date: head and body range, until enough hits in
        // one second make a frame worth it; then that frame, with today's date. Without room
        // for frames, always head and body range. (A second ticking mid-way restarts the
        // count: then try again.)
        let attempt = |frames: &mut Arena, room: bool| -> Option<()> {
            {
                let mut f = frame.borrow_mut();
                f.date = tomorrow;
                f.hot = None;
            }
            let second = date::current();
            for hit in 1..=REFRAME_AFTER + 2 {
                let mut out = Output::default();
                entry.write_hit(ConnectionHeader::Default, false, None, frames, &mut out);
                let pinned = matches!(out.front(), Some(crate::serve::reply::Segment::Pinned(_)));
                let (wire, segments) = drain(&mut out);
                if date::current() != second {
                    return None;
                }
                let framed = room && hit >= REFRAME_AFTER;
                assert_eq!(segments, if framed { 1 } else { 2 });
                assert_eq!(pinned, framed);
                assert_eq!(&wire[date.clone()], &second);
                assert_eq!(wire.len(), want.len());
                assert!(wire.ends_with(&body));
            }
            Some(())
        };
        assert!((0..3).any(|_| attempt(&mut frames, true).is_some()));
        assert!((0..3).any(|_| attempt(&mut Arena::new(0), false).is_some()));
        let mut out = Output::default();
        entry.push_range(&mut out, 10, 5, None);
        assert_eq!(drain(&mut out).0, &body[10..15]);
    }

    #[test]
    fn memfd_backed_entries_are_bounded() {
        let settings = Settings {
            per_worker: 64 << 20,
            memfds_per_worker: 2,
            prewarm: false,
            telemetry: Arc::default(),
        };
        let mut cache = Cache::new(&settings);
        let policy = css_policy();
        let build = |cache: &mut Cache, len: usize| {
            let f = file_with(&vec![7u8; len]);
            let spec = EntrySpec {
                mount: 0,
                encoding: Encoding::Identity,
                rel: "a.css",
                stamp: Stamp::of(&f.metadata().unwrap()),
                etag: b"\"x\"",
                last_modified: 0,
                policy,
            };
            cache.build_at(&f, &spec, later())
        };
        let framed = build(&mut cache, 20_000).unwrap();
        let memfd = build(&mut cache, 100_000).unwrap();
        assert!(matches!(framed.body, Body::Framed(_)));
        assert!(matches!(memfd.body, Body::Memfd(_)));
        // Two descriptors held: no third memfd, but heap entries still come in.
        assert!(build(&mut cache, 20_000).is_none());
        assert!(build(&mut cache, 1_000).is_some());
        drop(framed);
        assert!(build(&mut cache, 20_000).is_some());
    }

    #[test]
    fn keys_differ_by_every_part() {
        let k = key(0, Encoding::Identity, "a.css");
        assert_ne!(k, key(1, Encoding::Identity, "a.css"));
        assert_ne!(k, key(0, Encoding::Gzip, "a.css"));
        assert_ne!(k, key(0, Encoding::Identity, "b.css"));
    }
}
