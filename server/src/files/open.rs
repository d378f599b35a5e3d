//! The one place that opens a file for a request: beneath the mount root, never outside it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A regular file opened for reading, with the metadata its response is built from.
#[derive(Debug)]
pub struct OpenedFile {
    pub file: File,
    pub len: u64,
    pub mtime_secs: u64,
    pub mtime_nanos: u32,
    /// Device, inode, size and mtime: what the content cache compares to notice a change.
    pub stamp: crate::cache::Stamp,
}

/// Why a file could not be opened for a request.
#[derive(Debug)]
pub enum OpenError {
    /// Nothing servable there: missing, a directory, a FIFO, a symlink out of the root, or
    /// unreadable. Answered 404 so that the answer tells nothing about what is on disk.
    NotFound,
    /// The server itself failed (out of file descriptors, I/O error): 500.
    Io(io::Error),
}

/// Set once `openat2` turns out to be missing (kernels before 5.6), so that later calls go
/// straight to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the directory a mount serves, for use as the root of [`open_beneath`].
pub fn open_root(dir: &std::path::Path) -> io::Result<OwnedFd> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid NUL-terminated string; the returned fd is checked below and
    // owned by the OwnedFd from then on.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` (a `/`-separated path relative to `root`, already decoded and checked by
/// [`super::path::decode_target`]) for reading, refusing anything that resolves outside `root`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> Result<OpenedFile, OpenError> {
    if rel.is_empty() || rel.starts_with('/') {
        return Err(OpenError::NotFound);
    }
    let c_rel = CString::new(rel).map_err(|_| OpenError::NotFound)?;
    // O_NONBLOCK so that a FIFO someone put in MEDIA_ROOT cannot block the worker in open(2);
    // it has no effect on regular files.
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    let fd = if NO_OPENAT2.load(Ordering::Relaxed) {
        -1
    } else {
        openat2_beneath(root, &c_rel, flags)
    };
    let fd = if fd < 0
        && (NO_OPENAT2.load(Ordering::Relaxed)
            || io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
    {
        NO_OPENAT2.store(true, Ordering::Relaxed);
        open_no_symlinks(root, rel, flags)
    } else {
        fd
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(
                libc::ENOENT
                | libc::ENOTDIR
                | libc::EXDEV
                | libc::ELOOP
                | libc::EACCES
                | libc::EPERM
                | libc::ENAMETOOLONG
                | libc::ENXIO,
            ) => OpenError::NotFound,
            _ => OpenError::Io(e),
        });
    }
    // SAFETY: `fd` is a fresh descriptor from openat2/openat that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(OpenError::NotFound);
    }
    Ok(OpenedFile {
        stamp: crate::cache::Stamp::of(&meta),
        len: meta.len(),
        mtime_secs: meta.mtime().max(0) as u64,
        mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        file,
    })
}

/// The identity of what `rel` names beneath `root` now, without opening it: one `fstatat`
/// that does not follow a final symlink. This is no containment check (intermediate
/// symlinks are followed): it only says whether the path still names the very file a cached
/// copy was taken from (same device, inode, size and mtime), and anything else sends the
/// caller back to [`open_beneath`]. `None` for anything but a regular file.
pub fn stat_at(root: BorrowedFd<'_>, rel: &str) -> Option<crate::cache::Stamp> {
    let c_rel = CString::new(rel).ok()?;
    // SAFETY: stat is plain data; all-zero is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c_rel` is NUL-terminated and `st` is a live, writable stat.
    let rc = unsafe {
        libc::fstatat(
            root.as_raw_fd(),
            c_rel.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    Some(crate::cache::Stamp {
        dev: st.st_dev,
        ino: st.st_ino,
        len: st.st_size as u64,
        mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
        ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
    })
}

/// openat2(2) with RESOLVE_BENEATH: the kernel refuses `..` and symlinks that would leave the
/// root, atomically, so there is no window between checking a path and opening it.
fn openat2_beneath(root: BorrowedFd<'_>, rel: &CString, flags: i32) -> i32 {
    let mut how: libc::open_how = unsafe {
        // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
        std::mem::zeroed()
    };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers are valid for the duration of the call, and the size passed is the
    // size of the struct they point to.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        ) as i32
    }
}

/// The fallback where openat2 is missing: walk the path one component at a time with
/// O_NOFOLLOW, so that no symlink is followed at all (stricter than RESOLVE_BENEATH, which
/// allows symlinks that stay inside the root).
fn open_no_symlinks(root: BorrowedFd<'_>, rel: &str, flags: i32) -> i32 {
    let mut parts = rel.split('/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let Ok(c_part) = CString::new(part) else {
            return -1;
        };
        let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
        let last = parts.peek().is_none();
        let part_flags = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // SAFETY: `at` is an open directory descriptor and `c_part` a valid C string.
        let fd = unsafe { libc::openat(at, c_part.as_ptr(), part_flags) };
        if fd < 0 || last {
            return fd;
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        dir = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    -1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn opens_inside_and_refuses_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a.txt"), "hello").unwrap();
        // Relative links that stay inside are fine; absolute ones count as leaving the root,
        // even when they point back into it (RESOLVE_BENEATH's rule).
        std::os::unix::fs::symlink("sub/a.txt", root.path().join("inside-link")).unwrap();
        std::os::unix::fs::symlink(
            root.path().join("sub/a.txt"),
            root.path().join("absolute-link"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            root.path().join("outside-link"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../", root.path().join("sub/up")).unwrap();
        let fd = open_root(root.path()).unwrap();

        let f = open_beneath(fd.as_fd(), "sub/a.txt").unwrap();
        assert_eq!(f.len, 5);
        assert!(open_beneath(fd.as_fd(), "inside-link").is_ok());
        assert!(matches!(
            open_beneath(fd.as_fd(), "absolute-link"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), "outside-link"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), "sub/up/sub/up/../secret"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), "sub"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), "missing"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), "/etc/passwd"),
            Err(OpenError::NotFound)
        ));
        assert!(matches!(
            open_beneath(fd.as_fd(), ""),
            Err(OpenError::NotFound)
        ));
    }

    #[test]
    fn fallback_follows_no_symlinks() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a.txt"), "hello").unwrap();
        std::os::unix::fs::symlink(root.path().join("sub/a.txt"), root.path().join("link"))
            .unwrap();
        let fd = open_root(root.path()).unwrap();
        let flags = libc::O_RDONLY | libc::O_CLOEXEC;
        let ok = open_no_symlinks(fd.as_fd(), "sub/a.txt", flags);
        assert!(ok >= 0);
        // SAFETY: closing the descriptor we just opened.
        unsafe { libc::close(ok) };
        assert!(open_no_symlinks(fd.as_fd(), "link", flags) < 0);
    }
}
