//! Typed errors: each names the file it is about and the category of problem, and maps to
//! the CLI's exit code (2 for anything the user's input or environment caused). Messages
//! speak in the library's own terms: a setting is named as its parameter, in backticks
//! (`max_pixels`, `resume`), which the CLI turns into its flag (`--max-pixels`) and Python
//! users read as the keyword argument it is.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read image: {msg}", path.display())]
    Image { path: PathBuf, msg: String },
    #[error("{}: image is {w}x{h} = {} pixels, over the limit of {limit} (raise `max_pixels` to read it)", path.display(), *w as u64 * *h as u64)]
    ImageTooLarge {
        path: PathBuf,
        w: u32,
        h: u32,
        limit: u64,
    },
    #[error("{}: invalid model file: {source}", path.display())]
    Model { path: PathBuf, source: ModelError },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write output: {msg}", path.display())]
    Output { path: PathBuf, msg: String },
    /// Bad arguments or settings that contradict each other.
    #[error("{0}")]
    Usage(String),
    /// Something the machine lacks: a program (ffmpeg), the VGG16 weights.
    #[error("{0}")]
    Environment(String),
    /// The requested device cannot be used: no GPU adapter, a build without the GPU
    /// backend, a picture larger than the adapter allows.
    #[error("{0}")]
    Device(String),
    /// A download failed (the Hugging Face hub).
    #[error("{0}")]
    Network(String),
    /// The server could not start its runtime or listen on its address.
    #[error("{0}")]
    Server(String),
    /// Another process holds what this one needs (a training run's lock): wait or stop it.
    #[error("{0}")]
    Locked(String),
    /// A folder of training or evaluation photos with nothing usable in it.
    #[error("{0}")]
    Data(String),
    /// Training diverged: a non-finite loss or gradient. The last checkpoint is intact.
    #[error("{0}")]
    Diverged(String),
    /// The work was stopped by its caller before it finished (a time limit, a client that
    /// left, an interrupt); nothing was written.
    #[error("stopped before it finished")]
    Cancelled,
}

/// A computation stopped by its caller's cancel (`stylize::Cancel`) before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stopped before it finished")]
pub struct Cancelled;

impl From<Cancelled> for Error {
    fn from(_: Cancelled) -> Self {
        Error::Cancelled
    }
}

impl From<crate::backend::DeviceError> for Error {
    fn from(e: crate::backend::DeviceError) -> Self {
        Error::Device(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is wrong with a model or weights file, for a caller that wants to act on it (the
/// CLI prints it after the file's path).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("unexpected tensor `{name}` for the {arch} architecture")]
    UnexpectedTensor { name: String, arch: String },
    #[error("tensor `{name}` holds a non-finite value ({value})")]
    NonFinite { name: String, value: f32 },
    /// Metadata that is missing or does not parse.
    #[error("bad `{key}` metadata: {msg}")]
    Metadata { key: String, msg: String },
    /// Anything else: not safetensors, an unsupported dtype, an implausible config, an
    /// ONNX graph that is not the network.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ModelError {
    fn from(s: String) -> Self {
        ModelError::Invalid(s)
    }
}

impl From<&str> for ModelError {
    fn from(s: &str) -> Self {
        ModelError::Invalid(s.into())
    }
}

impl From<ModelError> for String {
    fn from(e: ModelError) -> Self {
        e.to_string()
    }
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn model(path: impl AsRef<Path>, problem: impl Into<ModelError>) -> Self {
        Error::Model {
            path: path.as_ref().to_path_buf(),
            source: problem.into(),
        }
    }
    pub fn image(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Image {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn output(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Output {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The category, as a short word for JSON records and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Image { .. } => "image",
            Error::ImageTooLarge { .. } => "image-too-large",
            Error::Model { .. } => "model",
            Error::Io { .. } => "io",
            Error::Output { .. } => "output",
            Error::Usage(_) => "usage",
            Error::Environment(_) => "environment",
            Error::Device(_) => "device",
            Error::Network(_) => "network",
            Error::Server(_) => "server",
            Error::Locked(_) => "locked",
            Error::Data(_) => "data",
            Error::Diverged(_) => "diverged",
            Error::Cancelled => "cancelled",
        }
    }
}

/// At most `n` characters of something a client or a file sent, for echoing it in a message.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
