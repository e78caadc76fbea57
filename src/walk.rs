//! Finding images in folders: recursive, sorted, the way ripgrep and fd walk.
//!
//! Links are followed only while they stay inside the folder being searched (a link to a
//! subfolder, or to a photo elsewhere in the tree): one that leads out of it (`up -> ..`,
//! `photos -> /home`) is skipped and reported, unless the caller asks to follow links
//! ([`WalkOptions::follow_links`]). Every directory is entered at most once (tracked by its
//! canonical path), so a link back to a parent (`loop -> .`) is reported and skipped instead
//! of repeating images or walking forever. Only regular files are listed: a named pipe or a
//! device with an image's name would block or never end, so it is reported and skipped. A
//! subfolder that cannot be read is reported and the rest of the tree is still walked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// An image file found under a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// The path relative to the root it was found under.
    pub rel: PathBuf,
}

/// How a walk treats links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// Follow links that lead outside the root too (loops are still caught).
    pub follow_links: bool,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<Found>,
    /// Folders skipped because they were already visited (link loops); a warning each.
    pub loops: Vec<PathBuf>,
    /// Entries passed over, with why (a link out of the root, not a regular file); a
    /// warning each.
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// Folders (or entries) that could not be read, with why: an error each.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

impl Walk {
    /// One line per warning (loops and skipped entries), for the user.
    pub fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        let loops = self.loops.iter().map(|p| {
            format!(
                "{}: skipped: a link to a folder already searched (link loop)",
                p.display()
            )
        });
        let skipped = self
            .skipped
            .iter()
            .map(|(p, why)| format!("{}: skipped: {why}", p.display()));
        loops.chain(skipped)
    }

    /// One line per folder that could not be read, for the user.
    pub fn errors(&self) -> impl Iterator<Item = String> + '_ {
        self.unreadable
            .iter()
            .map(|(p, e)| format!("{}: cannot read folder: {e}", p.display()))
    }
}

/// Why a link is skipped when it leads out of the root.
pub const OUTSIDE_ROOT: &str =
    "a link that leads outside the folder being searched (links are followed only inside it)";
const NOT_REGULAR: &str = "not a regular file (a named pipe, socket or device)";

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

/// Walk `root` recursively for files whose extension (any case) is in `exts`, following
/// links only inside `root`.
pub fn images(root: &Path, exts: &[&str]) -> Walk {
    images_with(root, exts, WalkOptions::default())
}

/// [`images`] with the link policy given.
pub fn images_with(root: &Path, exts: &[&str], opts: WalkOptions) -> Walk {
    let mut w = Walk::default();
    let canon = match std::fs::canonicalize(root) {
        Ok(c) => c,
        Err(e) => {
            w.unreadable.push((root.to_path_buf(), e));
            return w;
        }
    };
    let mut walker = Walker {
        root,
        canon_root: canon.clone(),
        exts,
        opts,
        seen: HashSet::from([canon]),
        w,
    };
    walker.dir(root);
    walker.w
}

struct Walker<'a> {
    root: &'a Path,
    canon_root: PathBuf,
    exts: &'a [&'a str],
    opts: WalkOptions,
    seen: HashSet<PathBuf>,
    w: Walk,
}

impl Walker<'_> {
    fn dir(&mut self, dir: &Path) {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                self.w.unreadable.push((dir.to_path_buf(), e));
                return;
            }
        };
        let mut entries = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push(e.path()),
                Err(e) => self.w.unreadable.push((dir.to_path_buf(), e)),
            }
        }
        entries.sort();
        for p in entries {
            self.entry(p);
        }
    }

    fn entry(&mut self, p: PathBuf) {
        let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        // `metadata` follows links; a dangling link or a loop of links has none and is
        // passed over.
        let Ok(meta) = std::fs::metadata(&p) else {
            return;
        };
        if !meta.is_dir() && !has_ext(&p, self.exts) {
            return;
        }
        let canon = if is_link || meta.is_dir() {
            match std::fs::canonicalize(&p) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.w.unreadable.push((p, e));
                    return;
                }
            }
        } else {
            None
        };
        if is_link && !self.opts.follow_links {
            if let Some(c) = &canon {
                if !c.starts_with(&self.canon_root) {
                    self.w.skipped.push((p, OUTSIDE_ROOT));
                    return;
                }
            }
        }
        if meta.is_dir() {
            let c = canon.expect("folders are resolved");
            if self.seen.insert(c) {
                self.dir(&p);
            } else {
                self.w.loops.push(p);
            }
        } else if meta.is_file() {
            let rel = p.strip_prefix(self.root).unwrap_or(&p).to_path_buf();
            self.w.files.push(Found { path: p, rel });
        } else {
            self.w.skipped.push((p, NOT_REGULAR));
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

    #[test]
    fn links_out_of_the_root_and_special_files_are_skipped_and_said() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("in");
        std::fs::create_dir_all(r.join("sub")).unwrap();
        touch(&d.path().join("outside.jpg"));
        touch(&r.join("a.jpg"));
        touch(&r.join("sub/b.jpg"));
        std::os::unix::fs::symlink("..", r.join("up")).unwrap();
        std::os::unix::fs::symlink("../outside.jpg", r.join("far.jpg")).unwrap();
        std::os::unix::fs::symlink("sub/b.jpg", r.join("near.jpg")).unwrap();
        let fifo = r.join("pipe.jpg");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
        let have_fifo = ok.is_ok_and(|s| s.success());
        let w = images(&r, &["jpg"]);
        let rels: Vec<_> = w.files.iter().map(|f| f.rel.clone()).collect();
        // `near.jpg` is a link that stays inside the root: followed.
        assert_eq!(
            rels,
            ["a.jpg", "near.jpg", "sub/b.jpg"]
                .map(PathBuf::from)
                .to_vec()
        );
        let skipped: Vec<_> = w.skipped.iter().map(|(p, _)| p.clone()).collect();
        let mut want = vec![r.join("far.jpg")];
        if have_fifo {
            want.push(fifo.clone());
        }
        want.push(r.join("up"));
        assert_eq!(skipped, want);
        assert!(w.warnings().any(|m| m.contains("outside the folder")));
        // Asked to, the walk follows links out of the root (the parent's images too).
        let all = images_with(&r, &["jpg"], WalkOptions { follow_links: true });
        assert!(all.files.iter().any(|f| f.rel == Path::new("far.jpg")));
        assert!(all
            .files
            .iter()
            .any(|f| f.rel == Path::new("up/outside.jpg")));
    }
}
