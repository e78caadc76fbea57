//! File output that never leaves a half-written file: write to a temporary file in the same
//! folder, then rename over the destination.
//!
//! The temporary files are named `.impasto-PID-XXXXXX.part`. While one is being written its
//! path is registered, so that a signal handler can remove it before the process exits
//! ([`remove_partial_files`]); one left by a process that was killed outright (`kill -9`,
//! power loss) is removed the next time impasto writes into that folder, once no process of
//! that id is alive.
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files being written right now.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Folders already cleaned of stale temporary files by this process.
static CLEANED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The prefix of this process's temporary files (`PREFIX…​.part…`).
pub fn prefix() -> String {
    format!(".impasto-{}-", std::process::id())
}

/// A temporary file being written, registered for [`remove_partial_files`] until dropped.
pub struct Partial(PathBuf);

impl Partial {
    pub fn register(path: &Path) -> Partial {
        PARTIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_path_buf());
        Partial(path.to_path_buf())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        PARTIAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != self.0);
    }
}

/// Remove every temporary file this process is writing (for signal handlers, just before
/// exiting). Never blocks: if the list is busy, it is skipped.
pub fn remove_partial_files() {
    if let Ok(list) = PARTIAL.try_lock() {
        for p in list.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether a process with this id is running (Linux: /proc; elsewhere assume it is, so
/// that only the age rule below removes files).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Remove our temporary files in `dir` that no running process is writing: those of a dead
/// process, and those without a process id (older versions) or of any id more than a day
/// old. Done once per folder per process.
pub fn remove_stale_partial_files(dir: &Path) {
    {
        let mut c = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
        if !c.get_or_insert_with(HashSet::new).insert(dir.to_path_buf()) {
            return;
        }
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(mid) = name
            .strip_prefix(".impasto-")
            .and_then(|n| n.split_once(".part"))
            .map(|(m, _)| m)
        else {
            continue;
        };
        let pid = mid.split_once('-').and_then(|(p, _)| p.parse::<u32>().ok());
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 24 * 3600);
        let stale = match pid {
            Some(p) if p == me => false,
            Some(p) => !alive(p) || old,
            None => old,
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What kind of thing a path names, in words, when it is not a regular file.
fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading if it is a regular file (links followed) of at most `max_bytes`.
/// Checked before opening: a named pipe would block the open itself, and a device such as
/// `/dev/zero` reports no size and never ends. `what` names the file's role in the message
/// ("image", "model file").
pub fn open_regular(path: &Path, max_bytes: u64, what: &str) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "is {}, not a file; only regular files are read as a {what}",
                    kind_of(meta.file_type())
                ),
            ),
        ));
    }
    if meta.len() > max_bytes {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} bytes, over the limit of {max_bytes} bytes for a {what}",
                    meta.len()
                ),
            ),
        ));
    }
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// The whole of a regular file of at most `max_bytes` (see [`open_regular`]); a file that
/// grows past the limit while it is read is refused too.
pub fn read_regular(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path, max_bytes, what)?;
    let mut bytes = Vec::new();
    f.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("grew past the limit of {max_bytes} bytes for a {what} while read"),
            ),
        ));
    }
    Ok(bytes)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    remove_stale_partial_files(dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix())
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| {
            Error::output(
                path,
                format!("cannot create a file in {}: {e}", dir.display()),
            )
        })?;
    let guard = Partial::register(tmp.path());
    let res = (|| {
        fill(tmp.as_file_mut()).map_err(|e| Error::output(path, e.to_string()))?;
        tmp.as_file_mut().sync_all().ok();
        #[cfg(unix)]
        {
            // tempfile creates 0600; give the result the usual permissions (umask applies on
            // creation only, so use the conventional 0644).
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        tmp.persist(path)
            .map_err(|e| Error::output(path, e.error.to_string()))?;
        Ok(())
    })();
    drop(guard);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_partial_files_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot be running (above Linux's pid_max limit of 2^22).
        let dead = d.path().join(".impasto-4999999-abc123.part");
        let mine = d.path().join(format!("{}zzz.part", prefix()));
        let other = d.path().join("keep.part");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        write_atomic(&d.path().join("out.txt"), b"hello").unwrap();
        assert_eq!(std::fs::read(d.path().join("out.txt")).unwrap(), b"hello");
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "a dead process's temporary file is removed");
        }
        assert!(mine.exists(), "this process's own files are left alone");
        assert!(other.exists(), "files that are not ours are left alone");
        assert!(PARTIAL.lock().unwrap().is_empty());
    }
}
