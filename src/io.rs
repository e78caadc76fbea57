//! File output that never leaves a half-written file: write to a temporary file in the same
//! folder, then rename over the destination.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

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
    let mut tmp = tempfile::Builder::new()
        .prefix(".impasto-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| {
            Error::output(
                path,
                format!("cannot create a file in {}: {e}", dir.display()),
            )
        })?;
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
}
