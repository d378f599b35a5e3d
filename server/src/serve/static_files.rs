//! Per-worker open-file cache for static mounts: descriptors and metadata of each resource's
//! representations, revalidated against the disk once a second.
//!
//! STATIC_ROOT changes only when collectstatic runs, so re-opening files on every request (as
//! media mounts do) would be wasted system calls; nginx's `open_file_cache` makes the same
//! trade with a 60 s default, this one with 1 s. Each worker owns its cache, so the hot path
//! takes no lock.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::rc::Rc;

use super::etag;
use super::negotiate::{Encoding, EncodingSet};
use crate::files::mime;
use crate::files::mount::Mount;
use crate::files::open::{OpenError, open_beneath};
use crate::http::date;

/// Beyond this many paths per mount the cache starts over, bounding memory and descriptors.
const MAX_ENTRIES: usize = 8192;
// Descriptors are bounded too, by the worker's share of the descriptor limit: a tree of a few
// thousand files with three compressed siblings each would otherwise hold more than many
// hosts allow, and `accept` would fail for want of one.

/// One representation of a static resource.
#[derive(Debug)]
pub struct Representation {
    pub file: Rc<File>,
    pub len: u64,
    pub mtime_secs: u64,
    pub etag: Vec<u8>,
    /// What the content cache compares its copy against.
    pub stamp: crate::cache::Stamp,
}

/// What is on disk for one request path.
#[derive(Debug)]
pub struct Resource {
    pub content_type: &'static str,
    pub available: EncodingSet,
    /// Indexed like [`Encoding::ALL`].
    reps: [Option<Rc<Representation>>; 4],
}

impl Resource {
    #[cfg(test)]
    pub fn for_tests() -> Resource {
        Resource {
            content_type: "text/css",
            available: EncodingSet::default(),
            reps: Default::default(),
        }
    }

    /// Open descriptors this resource holds.
    fn descriptors(&self) -> usize {
        self.reps.iter().flatten().count()
    }

    /// The representation for a coding that [`negotiate::choose`](super::negotiate::choose)
    /// picked from `available`; identity always exists.
    pub fn representation(&self, encoding: Encoding) -> Rc<Representation> {
        let i = slot(encoding);
        let fallback = slot(Encoding::Identity);
        Rc::clone(
            self.reps[i]
                .as_ref()
                .or(self.reps[fallback].as_ref())
                .expect("a resource always has its identity representation"),
        )
    }
}

struct Entry {
    checked_at: u64,
    /// `None`: nothing servable at that path (cached too, so a 404 storm costs no opens).
    resource: Option<Rc<Resource>>,
}

pub struct StaticFiles {
    per_mount: Vec<HashMap<Box<str>, Entry>>,
    /// Descriptors held by each mount's entries, and the most all of them may hold.
    descriptors: Vec<usize>,
    max_descriptors: usize,
}

fn slot(e: Encoding) -> usize {
    Encoding::ALL.iter().position(|&x| x == e).unwrap_or(3)
}

impl StaticFiles {
    /// A cache for `mounts` mounts holding at most `max_descriptors` open files.
    pub fn new(mounts: usize, max_descriptors: usize) -> Self {
        StaticFiles {
            per_mount: (0..mounts).map(|_| HashMap::new()).collect(),
            descriptors: vec![0; mounts],
            max_descriptors,
        }
    }

    /// Descriptors the cache holds now.
    pub fn descriptors(&self) -> usize {
        self.descriptors.iter().sum()
    }

    /// The resource at `rel` of mount `index`, from the cache when checked within the last
    /// second; `Ok(None)` when nothing servable is there.
    pub fn lookup(
        &mut self,
        index: usize,
        mount: &Mount,
        rel: &str,
    ) -> io::Result<Option<Rc<Resource>>> {
        let now = date::now_secs();
        let map = &mut self.per_mount[index];
        if let Some(entry) = map.get(rel)
            && entry.checked_at == now
        {
            return Ok(entry.resource.clone());
        }
        let resource = load(mount, rel)?.map(Rc::new);
        let held = |e: &Entry| e.resource.as_ref().map_or(0, |r| r.descriptors());
        if let Some(old) = self.per_mount[index].remove(rel) {
            self.descriptors[index] -= held(&old);
        }
        if self.per_mount[index].len() >= MAX_ENTRIES {
            self.per_mount[index].clear();
            self.descriptors[index] = 0;
        }
        let adding = resource.as_ref().map_or(0, |r| r.descriptors());
        if self.descriptors() + adding > self.max_descriptors {
            // Start over, as at MAX_ENTRIES: what is hot is opened again within a second.
            self.per_mount.iter_mut().for_each(HashMap::clear);
            self.descriptors.iter_mut().for_each(|d| *d = 0);
        }
        self.descriptors[index] += adding;
        self.per_mount[index].insert(
            rel.into(),
            Entry {
                checked_at: now,
                resource: resource.clone(),
            },
        );
        Ok(resource)
    }
}

fn load(mount: &Mount, rel: &str) -> io::Result<Option<Resource>> {
    let identity = match open_beneath(mount.root(), rel) {
        Ok(f) => f,
        Err(OpenError::NotFound) => return Ok(None),
        Err(OpenError::Io(e)) => return Err(e),
    };
    let mut reps: [Option<Rc<Representation>>; 4] = Default::default();
    let mut available = EncodingSet::default();
    for encoding in Encoding::ALL {
        let opened = if encoding == Encoding::Identity {
            continue;
        } else {
            match open_beneath(mount.root(), &format!("{rel}{}", encoding.suffix())) {
                Ok(f) => f,
                Err(OpenError::NotFound) => continue,
                Err(OpenError::Io(e)) => return Err(e),
            }
        };
        available.insert(encoding);
        reps[slot(encoding)] = Some(Rc::new(Representation {
            etag: etag(opened.mtime_secs, opened.mtime_nanos, opened.len, encoding),
            len: opened.len,
            mtime_secs: opened.mtime_secs,
            stamp: opened.stamp,
            file: Rc::new(opened.file),
        }));
    }
    reps[slot(Encoding::Identity)] = Some(Rc::new(Representation {
        etag: etag(
            identity.mtime_secs,
            identity.mtime_nanos,
            identity.len,
            Encoding::Identity,
        ),
        len: identity.len,
        mtime_secs: identity.mtime_secs,
        stamp: identity.stamp,
        file: Rc::new(identity.file),
    }));
    Ok(Some(Resource {
        content_type: mime::content_type(rel),
        available,
        reps,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MountKind, MountSpec};

    #[test]
    fn open_descriptors_stay_within_the_share() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6 {
            std::fs::write(dir.path().join(format!("f{i}.css")), b"body").unwrap();
            std::fs::write(dir.path().join(format!("f{i}.css.gz")), b"gz").unwrap();
        }
        let mount = Mount::open(&MountSpec {
            prefix: "/static/".into(),
            dir: dir.path().into(),
            kind: MountKind::Static,
        })
        .unwrap();
        // Two descriptors per file (identity and gzip); room for two files and a half.
        let mut files = StaticFiles::new(1, 5);
        for round in 0..3 {
            for i in 0..6 {
                let found = files.lookup(0, &mount, &format!("f{i}.css")).unwrap();
                assert!(found.is_some(), "round {round}, file {i}");
                assert!(files.descriptors() <= 5, "{} held", files.descriptors());
            }
        }
        // Looking the same path up again within the second adds nothing.
        let before = files.descriptors();
        files.lookup(0, &mount, "f5.css").unwrap();
        assert_eq!(files.descriptors(), before);
        // Paths with nothing behind them hold none.
        files.lookup(0, &mount, "missing.css").unwrap();
        assert_eq!(files.descriptors(), before);
    }
}
