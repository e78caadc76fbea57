//! The plan from inputs to outputs: which pictures a batch reads, where each result goes,
//! and the guard that no output replaces an input. The CLI's `stylize`, the Python package
//! and its Ray runner all take their plan from here, so they keep the same guarantees: the
//! originals are never written over, every input gets its own output (`NAME-2.EXT` where two
//! would share a name), and links and special files are handled as [`crate::walk`] says.
//!
//! Every command that writes a file (`video`, `sheet`, `optimize`, training outputs,
//! `export`, `convert`, `import`) checks its output with [`guard_output`].

use crate::error::{Error, Result};
use crate::walk::WalkOptions;
use image::ImageFormat;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The picture files a batch looks for in folders (any case).
pub const IMAGE_EXTS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "jfif"];

/// The formats a batch writes.
pub const OUTPUT_FORMATS: [&str; 3] = ["png", "jpg", "webp"];

/// Where a picture comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    /// A file, and its path relative to the folder it was found in (its name for a file
    /// given directly).
    File {
        path: PathBuf,
        rel: PathBuf,
    },
}

impl Source {
    /// The name to show the user.
    pub fn name(&self) -> PathBuf {
        match self {
            Source::Stdin => PathBuf::from("<stdin>"),
            Source::File { path, .. } => path.clone(),
        }
    }
}

/// Where a result goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout(ImageFormat),
    File(PathBuf),
}

/// What a batch is asked to do: the inputs as the user gave them (files, folders, `-` for
/// stdin) and the output (a file, a folder, `-` for stdout, or none for the defaults).
#[derive(Debug, Clone, Default)]
pub struct BatchRequest {
    pub inputs: Vec<String>,
    pub output: Option<String>,
    /// `png`, `jpg` or `webp`; default: the input's own format where it can be written,
    /// else PNG.
    pub format: Option<String>,
    /// Allow a result to replace its input.
    pub overwrite_inputs: bool,
    pub walk: WalkOptions,
}

/// The plan: one target per source, and what the user should be told.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<(Source, Target)>,
    /// Whether the batch is several pictures (a folder or more than one input).
    pub many: bool,
    /// Outputs renamed because two inputs would share one (`NAME-2.EXT`): a note each.
    pub notes: Vec<String>,
    /// Link loops, skipped links and special files, folders without images: a warning each.
    pub warnings: Vec<String>,
    /// Folders that could not be read: an error each (the rest of the batch is still done).
    pub errors: Vec<String>,
}

/// The default output folder for several inputs.
pub const DEFAULT_FOLDER: &str = "stylized";

fn format_named(s: &str) -> ImageFormat {
    match s {
        "jpg" => ImageFormat::Jpeg,
        "webp" => ImageFormat::WebP,
        _ => ImageFormat::Png,
    }
}

/// The output extension for an input file: `format`, else the input's own if it can be
/// written, else png.
pub fn output_ext(format: Option<&str>, input: &Path) -> String {
    if let Some(f) = format {
        return f.to_string();
    }
    match input
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
    {
        Some(e) if e == "jpg" || e == "jpeg" => "jpg".into(),
        Some(e) if e == "webp" => "webp".into(),
        _ => "png".into(),
    }
}

/// Plan a batch: walk the folders, name every output, and refuse outputs that would
/// replace an input (unless `overwrite_inputs`).
pub fn plan(req: &BatchRequest) -> Result<Batch> {
    let mut batch = Batch::default();
    let mut sources = Vec::new();
    let mut any_dir = false;
    for s in &req.inputs {
        if s == "-" {
            sources.push(Source::Stdin);
            continue;
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            any_dir = true;
            let w = crate::walk::images_with(&p, &IMAGE_EXTS, req.walk);
            batch.warnings.extend(w.warnings());
            batch.errors.extend(w.errors());
            if w.files.is_empty() && w.unreadable.is_empty() {
                batch
                    .warnings
                    .push(format!("{}: no images found", p.display()));
            }
            sources.extend(w.files.into_iter().map(|f| Source::File {
                path: f.path,
                rel: f.rel,
            }));
        } else {
            let rel = PathBuf::from(p.file_name().unwrap_or(p.as_os_str()));
            sources.push(Source::File { path: p, rel });
        }
    }
    if sources
        .iter()
        .filter(|i| matches!(i, Source::Stdin))
        .count()
        > 1
    {
        return Err(Error::Usage("stdin (-) can be read only once".into()));
    }
    batch.many = any_dir || sources.len() > 1;
    if sources.is_empty() {
        return Ok(batch);
    }
    let targets = if batch.many {
        let dir = req.output.as_deref().unwrap_or(DEFAULT_FOLDER);
        if dir == "-" {
            return Err(Error::Usage(
                "several images cannot all go to stdout; give an output folder".into(),
            ));
        }
        folder_targets(&sources, Path::new(dir), req.format.as_deref())?
    } else {
        vec![single_target(
            &sources[0],
            req.output.as_deref(),
            req.format.as_deref(),
        )?]
    };
    let targets = distinct(&sources, targets, &mut batch.notes);
    if !req.overwrite_inputs {
        let inputs: Vec<&Path> = sources
            .iter()
            .filter_map(|s| match s {
                Source::File { path, .. } => Some(path.as_path()),
                Source::Stdin => None,
            })
            .collect();
        for t in &targets {
            if let Target::File(p) = t {
                guard_output(p, &inputs)?;
            }
        }
    }
    batch.items = sources.into_iter().zip(targets).collect();
    Ok(batch)
}

/// Refuse an output format the batch cannot write.
fn check_format(format: Option<&str>) -> Result<()> {
    match format {
        Some(f) if !OUTPUT_FORMATS.contains(&f) => Err(Error::Usage(format!(
            "output format {:?}: expected one of {}",
            crate::error::clip(f, 40),
            OUTPUT_FORMATS.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// The targets for sources written into folder `dir`, each under its relative name.
pub fn folder_targets(sources: &[Source], dir: &Path, format: Option<&str>) -> Result<Vec<Target>> {
    check_format(format)?;
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{}: several inputs need an output folder, and this is a file",
            dir.display()
        )));
    }
    Ok(sources
        .iter()
        .map(|s| match s {
            Source::Stdin => Target::File(dir.join(format!("stdin.{}", format.unwrap_or("png")))),
            Source::File { path, rel } => {
                Target::File(dir.join(rel).with_extension(output_ext(format, path)))
            }
        })
        .collect())
}

fn single_target(source: &Source, output: Option<&str>, format: Option<&str>) -> Result<Target> {
    check_format(format)?;
    let stem = |path: &Path| {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "image".into())
    };
    Ok(match (source, output) {
        (Source::Stdin, None) | (_, Some("-")) => {
            Target::Stdout(format_named(format.unwrap_or("png")))
        }
        (Source::File { path, .. }, None) => Target::File(path.with_file_name(format!(
            "{}.stylized.{}",
            stem(path),
            output_ext(format, path)
        ))),
        (s, Some(o)) => {
            let op = PathBuf::from(o);
            if op.is_dir() || o.ends_with('/') {
                let name = match s {
                    Source::Stdin => format!("stdin.{}", format.unwrap_or("png")),
                    Source::File { path, .. } => {
                        format!("{}.{}", stem(path), output_ext(format, path))
                    }
                };
                Target::File(op.join(name))
            } else {
                crate::imageio::format_for(&op)?;
                Target::File(op)
            }
        }
    })
}

/// The key under which two output paths are the same file: lower case, so that a
/// case-insensitive file system (macOS, Windows) cannot merge them either.
fn clash_key(p: &Path) -> String {
    p.to_string_lossy().to_lowercase()
}

/// Give every source its own target: where two map to one name (`a/x.jpg` and `b/x.jpg`
/// into one folder, `y.jpg` and `y.png` both to `y.png`), the later ones get `NAME-2.EXT`,
/// `NAME-3.EXT`, … and a note in `notes` says so.
pub fn distinct(sources: &[Source], targets: Vec<Target>, notes: &mut Vec<String>) -> Vec<Target> {
    let mut taken: HashSet<String> = targets
        .iter()
        .filter_map(|o| match o {
            Target::File(p) => Some(clash_key(p)),
            Target::Stdout(_) => None,
        })
        .collect();
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut result = Vec::with_capacity(targets.len());
    for (i, o) in targets.into_iter().enumerate() {
        let Target::File(p) = o else {
            result.push(o);
            continue;
        };
        let key = clash_key(&p);
        let Some(&j) = first.get(&key) else {
            first.insert(key, i);
            result.push(Target::File(p));
            continue;
        };
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = p
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let q = (2..)
            .map(|n| p.with_file_name(format!("{stem}-{n}{ext}")))
            .find(|q| !taken.contains(&clash_key(q)))
            .expect("some name is free");
        taken.insert(clash_key(&q));
        first.insert(clash_key(&q), i);
        notes.push(format!(
            "{} and {} would both be written to {}; writing the second to {}",
            sources[j].name().display(),
            sources[i].name().display(),
            p.display(),
            q.display()
        ));
        result.push(Target::File(q));
    }
    result
}

/// The file a path names once links are followed, if it exists (or its folder does).
fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

/// The one check every writer makes before it writes `output`: it must not be one of the
/// files the command reads (`inputs`), however either is spelled (`./../dir/x`, links,
/// hard links), and it must name a file, not stdout (`-`) or a folder.
pub fn guard_output(output: &Path, inputs: &[&Path]) -> Result<()> {
    if output.as_os_str() == "-" {
        return Err(Error::Usage(
            "this output is a file; `-` (stdout) cannot take it: give a file name".into(),
        ));
    }
    if output.is_dir() {
        return Err(Error::Usage(format!(
            "{}: is a folder; give the output a file name",
            output.display()
        )));
    }
    let out = resolved(output);
    let out_id = file_id(output);
    for input in inputs {
        let same =
            out.is_some() && out == resolved(input) || out_id.is_some() && out_id == file_id(input);
        if same {
            return Err(Error::Usage(format!(
                "{}: the output would overwrite the input {}; choose another output",
                output.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// The device and inode of an existing file (so that two hard links are one file).
#[cfg(unix)]
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn req(inputs: &[&Path], output: Option<&Path>) -> BatchRequest {
        BatchRequest {
            inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            output: output.map(|p| p.display().to_string()),
            ..Default::default()
        }
    }

    fn files(b: &Batch) -> Vec<PathBuf> {
        b.items
            .iter()
            .map(|(_, t)| match t {
                Target::File(p) => p.clone(),
                Target::Stdout(_) => PathBuf::from("-"),
            })
            .collect()
    }

    #[test]
    fn every_input_gets_its_own_output_and_originals_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["in/p/a.jpg", "in/q/a.jpg", "in/c.jpg", "in/c.png"] {
            touch(&r.join(f));
        }
        let out = r.join("out");
        let b = plan(&BatchRequest {
            format: Some("png".into()),
            ..req(&[&r.join("in")], Some(&out))
        })
        .unwrap();
        assert!(b.many);
        // Relative names are kept; c.jpg and c.png both want c.png: the second is c-2.png.
        assert_eq!(
            files(&b),
            ["c.png", "c-2.png", "p/a.png", "q/a.png"]
                .map(|f| out.join(f))
                .to_vec()
        );
        assert_eq!(b.notes.len(), 1, "{:?}", b.notes);
        // The output folder is the input folder: the originals would be replaced.
        let e = plan(&req(&[&r.join("in")], Some(&r.join("in")))).unwrap_err();
        assert!(e.to_string().contains("overwrite the input"), "{e}");
        // ... also spelled through `..` and a link.
        let e = plan(&req(&[&r.join("in/c.jpg")], Some(&r.join("in/p/../c.jpg")))).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(r.join("in/c.jpg"), r.join("link.jpg")).unwrap();
            std::fs::hard_link(r.join("in/c.png"), r.join("hard.png")).unwrap();
            assert!(plan(&req(&[&r.join("in/c.jpg")], Some(&r.join("link.jpg")))).is_err());
            assert!(plan(&req(&[&r.join("in/c.png")], Some(&r.join("hard.png")))).is_err());
        }
        // Asked to, it may.
        let ok = plan(&BatchRequest {
            overwrite_inputs: true,
            ..req(&[&r.join("in/c.jpg")], Some(&r.join("in/c.jpg")))
        });
        assert!(ok.is_ok());
    }

    #[test]
    fn the_guard_refuses_inputs_stdout_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("clip.mp4");
        touch(&v);
        let dotted = d.path().join(".").join("x").join("..").join("clip.mp4");
        std::fs::create_dir(d.path().join("x")).unwrap();
        assert!(guard_output(&dotted, &[&v]).is_err());
        assert!(guard_output(Path::new("-"), &[&v]).is_err());
        assert!(guard_output(d.path(), &[&v]).is_err());
        assert!(guard_output(&d.path().join("new.mp4"), &[&v]).is_ok());
    }
}
