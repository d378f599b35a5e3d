//! Mounts: which URL prefix serves which directory, and the live manifest of a static mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::manifest::{self, Manifest};
use super::open;
use crate::config::{MountKind, MountSpec};

/// One directory served under one URL prefix.
#[derive(Debug)]
pub struct Mount {
    pub prefix: String,
    pub dir: PathBuf,
    pub kind: MountKind,
    root: OwnedFd,
    /// Static mounts only: `staticfiles.json`, reloaded when it changes.
    pub manifest: Option<ManifestWatch>,
}

impl Mount {
    pub fn open(spec: &MountSpec) -> std::io::Result<Mount> {
        let root = open::open_root(&spec.dir)?;
        let manifest = (spec.kind == MountKind::Static)
            .then(|| ManifestWatch::new(spec.dir.join("staticfiles.json")));
        Ok(Mount {
            prefix: spec.prefix.clone(),
            dir: spec.dir.clone(),
            kind: spec.kind,
            root,
            manifest,
        })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// Every mount, matched longest prefix first.
#[derive(Debug, Default)]
pub struct Mounts {
    list: Vec<Mount>,
}

impl Mounts {
    pub fn new(mut list: Vec<Mount>) -> Self {
        list.sort_by_key(|m| std::cmp::Reverse(m.prefix.len()));
        Mounts { list }
    }

    /// The mount whose prefix `path` starts with, and the rest of the path after the prefix.
    pub fn route<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.list
            .iter()
            .enumerate()
            .find_map(|(i, m)| path.strip_prefix(m.prefix.as_str()).map(|rel| (i, rel)))
    }

    /// Whether a raw request-target starts with a mount's prefix: such a target is answered
    /// by the mount (even when it is no valid path), never passed to the app.
    pub fn claims(&self, target: &[u8]) -> bool {
        self.list
            .iter()
            .any(|m| target.starts_with(m.prefix.as_bytes()))
    }

    pub fn get(&self, index: usize) -> &Mount {
        &self.list[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mount> {
        self.list.iter()
    }
}

/// A manifest that follows the file on disk.
///
/// A watcher thread calls [`ManifestWatch::poll`] every second; workers compare
/// [`ManifestWatch::generation`] (one relaxed load) with the one they hold and fetch a new
/// snapshot only when it moved, so the hot path takes no lock.
#[derive(Debug)]
pub struct ManifestWatch {
    path: PathBuf,
    current: Mutex<Arc<Manifest>>,
    /// What the file looked like when last read: (mtime ns, size, inode); zero when absent.
    stamp: Mutex<(i128, u64, u64)>,
    generation: AtomicU64,
}

/// What a poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum PollOutcome {
    Unchanged,
    Loaded {
        hashed: usize,
    },
    Removed,
    /// The file is there but unreadable or invalid: the previous manifest stays in force.
    Invalid(String),
}

impl ManifestWatch {
    pub fn new(path: PathBuf) -> Self {
        let watch = ManifestWatch {
            path,
            current: Mutex::new(Arc::new(Manifest::default())),
            stamp: Mutex::new((0, 0, 0)),
            generation: AtomicU64::new(0),
        };
        watch.poll();
        watch
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> (u64, Arc<Manifest>) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation(), Arc::clone(&current))
    }

    /// Re-reads the manifest if the file changed since the last poll.
    pub fn poll(&self) -> PollOutcome {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => (
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                m.len(),
                m.ino(),
            ),
            Err(_) => (0, 0, 0),
        };
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == stamp {
            return PollOutcome::Unchanged;
        }
        let (manifest, outcome) = if stamp == (0, 0, 0) {
            (Manifest::default(), PollOutcome::Removed)
        } else {
            let parsed = std::fs::read(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| manifest::parse(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(m) => {
                    let hashed = m.hashed.len();
                    (m, PollOutcome::Loaded { hashed })
                }
                // Not recording the stamp makes the next poll try again: collectstatic may be
                // halfway through writing the file.
                Err(e) => return PollOutcome::Invalid(e),
            }
        };
        *last = stamp;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(manifest);
        self.generation.fetch_add(1, Ordering::Release);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(prefix: &str, dir: &Path, kind: MountKind) -> Mount {
        Mount::open(&MountSpec {
            prefix: prefix.into(),
            dir: dir.into(),
            kind,
        })
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let d = tempfile::tempdir().unwrap();
        let mounts = Mounts::new(vec![
            mount("/static/", d.path(), MountKind::Static),
            mount("/static/media/", d.path(), MountKind::Media),
        ]);
        assert_eq!(
            mounts
                .route("/static/media/a.png")
                .map(|(i, r)| (mounts.get(i).kind, r)),
            Some((MountKind::Media, "a.png"))
        );
        assert_eq!(
            mounts
                .route("/static/css/a.css")
                .map(|(i, r)| (mounts.get(i).kind, r)),
            Some((MountKind::Static, "css/a.css"))
        );
        assert_eq!(mounts.route("/static").map(|(_, r)| r), None);
        assert_eq!(mounts.route("/other"), None);
    }

    #[test]
    fn manifest_follows_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("staticfiles.json");
        let watch = ManifestWatch::new(path.clone());
        assert!(watch.snapshot().1.hashed.is_empty());
        let g0 = watch.generation();

        std::fs::write(
            &path,
            r#"{"paths": {"a.css": "a.0123456789ab.css"}, "version": "1.1", "hash": "h1"}"#,
        )
        .unwrap();
        assert_eq!(watch.poll(), PollOutcome::Loaded { hashed: 1 });
        assert!(watch.generation() > g0);
        assert!(watch.snapshot().1.hashed.contains("a.0123456789ab.css"));
        assert_eq!(watch.poll(), PollOutcome::Unchanged);

        // A half-written manifest keeps the old one in force and is retried.
        std::fs::write(&path, r#"{"paths": {"#).unwrap();
        assert!(matches!(watch.poll(), PollOutcome::Invalid(_)));
        assert!(watch.snapshot().1.hashed.contains("a.0123456789ab.css"));

        std::fs::remove_file(&path).unwrap();
        assert_eq!(watch.poll(), PollOutcome::Removed);
        assert!(watch.snapshot().1.hashed.is_empty());
    }
}
