//! Finding images in folders: recursive, sorted, following links once.
//!
//! Every directory is entered at most once (tracked by its canonical path), so a link back
//! to a parent (`loop -> .`) or two links to each other are reported and skipped instead of
//! repeating images or walking forever. A subfolder that cannot be read is reported and the
//! rest of the tree is still walked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// An image file found under a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// The path relative to the root it was found under.
    pub rel: PathBuf,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<Found>,
    /// Folders skipped because they were already visited (link loops); a warning each.
    pub loops: Vec<PathBuf>,
    /// Folders (or entries) that could not be read, with why: an error each.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

impl Walk {
    /// One line per problem, for the user.
    pub fn messages(&self) -> impl Iterator<Item = String> + '_ {
        let loops = self.loops.iter().map(|p| {
            format!(
                "{}: skipped: a link to a folder already searched (link loop)",
                p.display()
            )
        });
        let bad = self
            .unreadable
            .iter()
            .map(|(p, e)| format!("{}: cannot read folder: {e}", p.display()));
        loops.chain(bad)
    }
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

/// Walk `root` recursively for files whose extension (any case) is in `exts`.
pub fn images(root: &Path, exts: &[&str]) -> Walk {
    let mut w = Walk::default();
    let mut seen = HashSet::new();
    match std::fs::canonicalize(root) {
        Ok(c) => {
            seen.insert(c);
        }
        Err(e) => {
            w.unreadable.push((root.to_path_buf(), e));
            return w;
        }
    }
    walk_dir(root, root, exts, &mut seen, &mut w);
    w
}

fn walk_dir(dir: &Path, root: &Path, exts: &[&str], seen: &mut HashSet<PathBuf>, w: &mut Walk) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            w.unreadable.push((dir.to_path_buf(), e));
            return;
        }
    };
    let mut entries = Vec::new();
    for e in rd {
        match e {
            Ok(e) => entries.push(e.path()),
            Err(e) => w.unreadable.push((dir.to_path_buf(), e)),
        }
    }
    entries.sort();
    for p in entries {
        // `is_dir` follows links; a dangling link is neither and is passed over.
        if p.is_dir() {
            match std::fs::canonicalize(&p) {
                Ok(c) => {
                    if seen.insert(c) {
                        walk_dir(&p, root, exts, seen, w);
                    } else {
                        w.loops.push(p);
                    }
                }
                Err(e) => w.unreadable.push((p, e)),
            }
        } else if has_ext(&p, exts) {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            w.files.push(Found { path: p, rel });
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn link_loops_are_skipped_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("a.jpg"));
        std::fs::create_dir(r.join("sub")).unwrap();
        touch(&r.join("sub/b.png"));
        std::os::unix::fs::symlink(".", r.join("loop")).unwrap();
        std::os::unix::fs::symlink(".", r.join("loop2")).unwrap();
        std::os::unix::fs::symlink("../sub", r.join("sub/up")).unwrap();
        // Two links to each other: neither resolves, neither is a folder.
        std::os::unix::fs::symlink("y", r.join("x")).unwrap();
        std::os::unix::fs::symlink("x", r.join("y")).unwrap();
        let w = images(r, &["jpg", "png"]);
        let rels: Vec<_> = w.files.iter().map(|f| f.rel.clone()).collect();
        assert_eq!(
            rels,
            vec![PathBuf::from("a.jpg"), PathBuf::from("sub/b.png")]
        );
        assert_eq!(w.loops.len(), 3, "{:?}", w.loops);
        assert!(w.unreadable.is_empty(), "{:?}", w.unreadable);
    }
}
