//! The files a run keeps beside its model: the lock, the checkpoint (parameters, Adam
//! state and the data position, so a resume is exact), the metrics log.
use super::*;
use crate::train::step::Adam;

/// Files a run writes beside its output model.
pub struct RunFiles {
    pub model: PathBuf,
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    pub preview: PathBuf,
    pub curve: PathBuf,
    pub lock: PathBuf,
}

impl RunFiles {
    pub fn new(model: &Path) -> Self {
        let stem = model.with_extension("");
        let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
        RunFiles {
            model: model.to_path_buf(),
            checkpoint: with(".ckpt.safetensors"),
            metrics: with(".metrics.jsonl"),
            preview: with(".preview.png"),
            curve: with(".loss.png"),
            lock: with(".lock"),
        }
    }

    /// Take the run's lock (`OUTPUT.lock`, holding the process id), so that two runs on the
    /// same output cannot interleave their checkpoints and metrics. A lock left by a
    /// process that is no longer running is taken over.
    pub fn lock(&self) -> Result<RunLock> {
        let me = std::process::id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.lock)
            {
                Ok(mut f) => {
                    writeln!(f, "{me}").map_err(|e| Error::io(&self.lock, e))?;
                    return Ok(RunLock(self.lock.clone()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(&self.lock)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    let running = pid.is_some_and(|p| {
                        p != me
                            && (!cfg!(target_os = "linux")
                                || Path::new(&format!("/proc/{p}")).exists())
                    });
                    if running {
                        return Err(Error::Locked(format!(
                            "{}: another training run (process {}) is writing {}; wait for it to finish, or stop it",
                            self.lock.display(),
                            pid.unwrap_or_default(),
                            self.model.display()
                        )));
                    }
                    // Stale: its process is gone.
                    let _ = std::fs::remove_file(&self.lock);
                }
                Err(e) => return Err(Error::io(&self.lock, e)),
            }
        }
        Err(Error::Locked(format!(
            "{}: cannot take the training lock",
            self.lock.display()
        )))
    }
}

/// Held while a run writes its files; removes the lock file when dropped.
pub struct RunLock(PathBuf);

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let bytes = crate::io::read_regular(path, crate::model::format::MAX_FILE_BYTES, "file")?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// SHA-256 of a model given as a built-in name (its embedded bytes) or a file.
pub fn model_sha256(spec: &str) -> Result<String> {
    use sha2::Digest;
    match crate::styles::builtin_bytes(spec) {
        Some(bytes) => Ok(format!("{:x}", sha2::Sha256::digest(bytes))),
        None => sha256_file(Path::new(spec)),
    }
}

/// Everything needed to continue a run exactly.
pub struct Checkpoint {
    pub config: TrainConfig,
    pub model: Transformer,
    pub adam: Adam,
    /// The styles' recent gradient norms of a balanced run of several.
    pub balance: Balance,
    pub step: u64,
    pub data: DataPos,
}

#[derive(Serialize, Deserialize)]
pub(super) struct CkptMeta {
    step: u64,
    adam_t: u64,
    lr: f64,
    data: DataPos,
    train: TrainConfig,
    model: TransformerConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    balance: Vec<Option<f64>>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut f = TensorFile::default();
        for (id, (p, v)) in self.model.params().enumerate() {
            let (n, s) = (&p.key(), &p.shape);
            f.tensors
                .insert(format!("param.{n}"), (s.clone(), v.to_vec()));
            if let (Some(m), Some(vv)) = (self.adam.m.get(id), self.adam.v.get(id)) {
                if m.len() == v.len() {
                    f.tensors
                        .insert(format!("adam.m.{n}"), (s.clone(), m.clone()));
                    f.tensors
                        .insert(format!("adam.v.{n}"), (s.clone(), vv.clone()));
                }
            }
        }
        let meta = CkptMeta {
            step: self.step,
            adam_t: self.adam.t,
            lr: self.adam.lr,
            data: self.data,
            train: self.config.clone(),
            model: self.model.config.clone(),
            balance: self.balance.norms.clone(),
        };
        f.metadata.insert(
            "impasto.checkpoint".into(),
            serde_json::to_string(&meta).expect("serialises"),
        );
        f.write(path, false)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let mut f = TensorFile::read(path)?;
        let bad = |m: crate::error::ModelError| Error::model(path, m);
        let meta: CkptMeta = serde_json::from_str(
            f.metadata
                .get("impasto.checkpoint")
                .ok_or_else(|| bad("not an impasto checkpoint".into()))?,
        )
        .map_err(|e| {
            bad(crate::error::ModelError::Metadata {
                key: "impasto.checkpoint".into(),
                msg: e.to_string(),
            })
        })?;
        let mut params = Vec::new();
        let mut adam = Adam::new(meta.lr);
        adam.t = meta.adam_t;
        meta.model.validate().map_err(|m| bad(m.into()))?;
        for (name, shape) in meta.model.param_shapes() {
            params.push(f.take(&format!("param.{name}"), &shape).map_err(bad)?);
            if meta.adam_t > 0 {
                // A tensor no step has reached yet (another style's row, a frozen
                // parameter) has no moments.
                let (m, v) = (format!("adam.m.{name}"), format!("adam.v.{name}"));
                if f.tensors.contains_key(&m) || f.tensors.contains_key(&v) {
                    adam.m.push(f.take(&m, &shape).map_err(bad)?);
                    adam.v.push(f.take(&v, &shape).map_err(bad)?);
                } else {
                    adam.m.push(Vec::new());
                    adam.v.push(Vec::new());
                }
            }
        }
        let model = Transformer::from_params(meta.model, params).map_err(bad)?;
        Ok(Checkpoint {
            config: meta.train,
            model,
            adam,
            balance: Balance {
                norms: meta.balance,
            },
            step: meta.step,
            data: meta.data,
        })
    }
}

/// Drop metrics logged after `step` (a killed run may have got further than its checkpoint).
pub(super) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::io::write_atomic(path, kept.as_bytes())
}

pub(super) fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// The output's folder and its lock.
pub(super) fn lock_output(output: &Path) -> Result<(RunFiles, RunLock)> {
    let files = RunFiles::new(output);
    if let Some(d) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::output(output, e.to_string()))?;
    }
    let lock = files.lock()?;
    Ok((files, lock))
}

/// With `resume`, the checkpoint beside the output (which must exist); without, refuse to
/// overwrite one, and start a fresh metrics log.
pub(super) fn checkpoint_to_resume(files: &RunFiles, resume: bool) -> Result<Option<Checkpoint>> {
    if resume {
        if !files.checkpoint.exists() {
            return Err(Error::Usage(format!(
                "`resume`: no checkpoint at {}",
                files.checkpoint.display()
            )));
        }
        Ok(Some(Checkpoint::load(&files.checkpoint)?))
    } else {
        if files.checkpoint.exists() {
            return Err(Error::Usage(format!(
                "{} exists: set `resume` to continue that run, or delete it to start over",
                files.checkpoint.display()
            )));
        }
        let _ = std::fs::remove_file(&files.metrics);
        Ok(None)
    }
}
