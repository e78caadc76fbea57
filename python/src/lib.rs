//! `impasto._impasto`: the Python extension (PyO3, abi3). numpy `uint8` arrays in and out;
//! the GIL is released while the engine computes; impasto's errors become Python
//! exceptions with the CLI's messages. The Python-facing API (PIL images, docstrings, type
//! stubs) is in `python/impasto/`.

use impasto::backend::{Device, DeviceChoice};
use impasto::imageio::Decoded;
use impasto::model::Transformer;
use impasto::stylize::{self, StylizeOptions};
use impasto::Error;
use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray3, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

create_exception!(
    _impasto,
    ImpastoError,
    PyException,
    "An impasto error that is not about a bad argument or a missing file."
);
create_exception!(
    _impasto,
    ModelError,
    ImpastoError,
    "A model file that is not a valid impasto model."
);

/// The CLI's message, as the exception a Python caller expects.
fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Image { .. } | Error::ImageTooLarge { .. } | Error::Usage(_) | Error::Data(_) => {
            PyValueError::new_err(msg)
        }
        Error::Model { .. } => ModelError::new_err(msg),
        Error::Device(_) => PyRuntimeError::new_err(msg),
        _ => ImpastoError::new_err(msg),
    }
}

/// An H×W (gray), H×W×1, H×W×3 or H×W×4 `uint8` array as an image.
fn to_image(a: &PyReadonlyArrayDyn<u8>) -> PyResult<Decoded> {
    let shape = a.shape().to_vec();
    let (h, w, c) = match shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] if [1, 3, 4].contains(c) => (*h, *w, *c),
        _ => {
            return Err(PyValueError::new_err(format!(
                "expected an H×W, H×W×1, H×W×3 or H×W×4 uint8 array, got shape {shape:?}"
            )))
        }
    };
    if h == 0 || w == 0 {
        return Err(PyValueError::new_err(format!(
            "the image is empty (shape {shape:?})"
        )));
    }
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| PyValueError::new_err("image too wide"))?,
        u32::try_from(h).map_err(|_| PyValueError::new_err("image too tall"))?,
    );
    if w as u64 * h as u64 > impasto::imageio::DEFAULT_MAX_PIXELS {
        return Err(to_py(Error::ImageTooLarge {
            path: PathBuf::from("array"),
            w: w32,
            h: h32,
            limit: impasto::imageio::DEFAULT_MAX_PIXELS,
        }));
    }
    // Logical (C) order whatever the array's strides.
    let v: Vec<u8> = a.as_array().iter().copied().collect();
    let bad = || PyValueError::new_err("array size does not match its shape");
    let image = match c {
        1 => image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w32, h32, v).ok_or_else(bad)?,
        ),
        3 => {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w32, h32, v).ok_or_else(bad)?)
        }
        _ => image::DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(w32, h32, v).ok_or_else(bad)?,
        ),
    };
    Ok(Decoded {
        image,
        has_alpha: c == 4,
        notes: Vec::new(),
    })
}

fn to_array(img: image::DynamicImage) -> Array3<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, v) = if img.color().has_alpha() {
        (4, img.into_rgba8().into_raw())
    } else {
        (3, img.into_rgb8().into_raw())
    };
    Array3::from_shape_vec((h, w, c), v).expect("pixel buffer matches its size")
}

/// A decoded file as H×W×3, or H×W×4 when it has alpha.
fn decoded_array(d: Decoded) -> Array3<u8> {
    let img = if d.has_alpha {
        image::DynamicImage::ImageRgba8(d.image.into_rgba8())
    } else {
        image::DynamicImage::ImageRgb8(d.image.into_rgb8())
    };
    to_array(img)
}

fn options(strength: f32, preserve_color: bool, max_size: Option<i64>) -> PyResult<StylizeOptions> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(PyValueError::new_err(format!(
            "strength {strength} must be between 0 and 1"
        )));
    }
    let max_size = match max_size {
        None => None,
        Some(m) => Some(u32::try_from(m).ok().filter(|&m| m >= 1).ok_or_else(|| {
            PyValueError::new_err(format!(
                "max_size {m} must be a whole number of pixels from 1 to {}",
                u32::MAX
            ))
        })?),
    };
    Ok(StylizeOptions {
        strength,
        preserve_color,
        max_size,
        ..Default::default()
    })
}

/// Ctrl-C while the engine computes: Python sees a signal only when it runs, so the
/// computation asks it (with the GIL, at most every 50 ms, between layers) and stops
/// there; the `KeyboardInterrupt` is kept to be raised once the GIL is back.
struct Interrupt {
    error: Arc<std::sync::Mutex<Option<PyErr>>>,
}

impl Interrupt {
    fn new() -> Self {
        Interrupt {
            error: Arc::default(),
        }
    }

    fn cancel(&self) -> stylize::Cancel {
        let error = self.error.clone();
        let last = std::sync::Mutex::new(std::time::Instant::now());
        stylize::Cancel::when(move || {
            if error.lock().map(|e| e.is_some()).unwrap_or(true) {
                return true;
            }
            {
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                if l.elapsed() < std::time::Duration::from_millis(50) {
                    return false;
                }
                *l = std::time::Instant::now();
            }
            // Signals are delivered to the main thread only; elsewhere this is a no-op.
            match Python::with_gil(|py| py.check_signals()) {
                Ok(()) => false,
                Err(e) => {
                    *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    true
                }
            }
        })
    }

    /// The result, or the exception that stopped it.
    fn result<T>(&self, r: Result<T, stylize::Stopped>) -> PyResult<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e @ stylize::Stopped::Device(_)) => Err(to_py(e.into())),
            Err(stylize::Stopped::Cancelled) => Err(self
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| ImpastoError::new_err("stopped before it finished"))),
        }
    }
}

/// A style: a transformation network loaded once, usable from many threads.
#[pyclass(frozen, module = "impasto._impasto")]
struct Model {
    inner: Arc<Transformer<Device>>,
    #[pyo3(get)]
    name: String,
    /// The networks of recent mixes (a model of several styles).
    mixes: impasto::model::mix::Mixes<Device>,
}

impl Model {
    /// The network of `mix`: None (the first style), a style's name, `"a=0.7,b=0.3"` or a
    /// dict of weights; a ValueError names the model's styles when it does not fit them.
    fn network(&self, mix: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<Transformer<Device>>> {
        let Some(mix) = mix.filter(|m| !m.is_none()) else {
            return Ok(self.mixes.get(&self.inner, None));
        };
        let parsed = if let Ok(text) = mix.extract::<String>() {
            impasto::model::Mix::parse(&text).map_err(PyValueError::new_err)?
        } else if let Ok(map) = mix.downcast::<pyo3::types::PyDict>() {
            let mut parts = Vec::new();
            for (k, v) in map.iter() {
                let name: String = k
                    .extract()
                    .map_err(|_| PyValueError::new_err("mix: the keys are style names (str)"))?;
                let w: f64 = v.extract().map_err(|_| {
                    PyValueError::new_err(format!("mix: the weight of {name:?} is not a number"))
                })?;
                if !(w.is_finite() && w >= 0.0) {
                    return Err(PyValueError::new_err(format!(
                        "mix: the weight of {name:?} is {w}; weights are finite numbers, 0 or more"
                    )));
                }
                parts.push((name, w));
            }
            impasto::model::Mix(parts)
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "mix: a style name, \"a=0.7,b=0.3\" or a dict {name: weight}",
            ));
        };
        let w = parsed
            .weights(&self.inner.style_names())
            .map_err(|e| PyValueError::new_err(format!("{}: {e}", self.name)))?;
        Ok(self.mixes.get(&self.inner, Some(&w)))
    }
}

#[pymethods]
impl Model {
    /// A built-in style's name (see `styles()`) or a model file's path, run on `device`
    /// ("auto", "cpu" or "gpu"; by default `IMPASTO_DEVICE`, else "auto").
    #[new]
    #[pyo3(signature = (style, device = None))]
    fn new(py: Python<'_>, style: PathBuf, device: Option<&str>) -> PyResult<Self> {
        let spec = style.to_string_lossy().to_string();
        let choice: DeviceChoice = match device {
            Some(d) => d.parse().map_err(PyValueError::new_err)?,
            None => DeviceChoice::from_env().map_err(PyValueError::new_err)?,
        };
        let inner = py
            .allow_threads(|| {
                let m = impasto::styles::resolve(&spec)?;
                Ok(m.to_backend(open_device(choice)?))
            })
            .map_err(to_py)?;
        Ok(Model {
            inner: Arc::new(inner),
            name: spec,
            mixes: Default::default(),
        })
    }

    /// The styles the model holds, in order (one for an ordinary model): the names
    /// `stylize(..., mix=...)` takes.
    #[getter]
    fn styles(&self) -> Vec<String> {
        self.inner.style_names()
    }

    /// Where the network runs, e.g. "cpu (8 threads)" or "gpu: NVIDIA … (vulkan, discrete)".
    #[getter]
    fn device(&self) -> String {
        self.inner.backend().describe()
    }

    /// The architecture ("johnson" or "seed").
    #[getter]
    fn arch(&self) -> String {
        format!("{:?}", self.inner.config.arch).to_lowercase()
    }

    /// The number of learnable parameters.
    #[getter]
    fn parameters(&self) -> usize {
        self.inner.plan().param_count()
    }

    #[pyo3(signature = (image, strength = 1.0, preserve_color = false, max_size = None, mix = None))]
    fn stylize<'py>(
        &self,
        py: Python<'py>,
        image: PyReadonlyArrayDyn<'py, u8>,
        strength: f32,
        preserve_color: bool,
        max_size: Option<i64>,
        mix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let model = self.network(mix)?;
        let interrupt = Interrupt::new();
        let opts = StylizeOptions {
            cancel: interrupt.cancel(),
            ..options(strength, preserve_color, max_size)?
        };
        let input = to_image(&image)?;
        drop(image);
        let out = py.allow_threads(move || stylize::stylize(&model, input, &opts, None));
        Ok(to_array(interrupt.result(out)?).into_pyarray(py))
    }

    #[pyo3(signature = (images, strength = 1.0, preserve_color = false, max_size = None, mix = None))]
    fn stylize_batch<'py>(
        &self,
        py: Python<'py>,
        images: Vec<PyReadonlyArrayDyn<'py, u8>>,
        strength: f32,
        preserve_color: bool,
        max_size: Option<i64>,
        mix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyArray3<u8>>>> {
        let model = self.network(mix)?;
        let interrupt = Interrupt::new();
        let opts = StylizeOptions {
            cancel: interrupt.cancel(),
            ..options(strength, preserve_color, max_size)?
        };
        let inputs = images.iter().map(to_image).collect::<PyResult<Vec<_>>>()?;
        drop(images);
        let outs = py.allow_threads(move || {
            inputs
                .into_iter()
                .map(|i| stylize::stylize(&model, i, &opts, None).map(to_array))
                .collect::<Result<Vec<Array3<u8>>, _>>()
        });
        Ok(interrupt
            .result(outs)?
            .into_iter()
            .map(|a| a.into_pyarray(py))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "impasto.Model({:?}, arch={:?}, parameters={})",
            self.name,
            self.arch(),
            self.parameters()
        )
    }
}

/// The built-in styles' names, then the networks that hold several of them (`builtins`:
/// blend its styles with `mix=`).
#[pyfunction]
fn styles() -> Vec<&'static str> {
    let mut v = impasto::styles::names();
    v.extend(impasto::styles::blends());
    v
}

/// Read an image file with impasto's own (strict) decoders: the pixels the CLI sees.
#[pyfunction]
fn read_image<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let d = py
        .allow_threads(|| impasto::imageio::read_path(&path, &Default::default()))
        .map_err(to_py)?;
    Ok(decoded_array(d).into_pyarray(py))
}

/// Decode an encoded image (the bytes of a PNG, JPEG, WebP, TIFF or BMP file) with impasto's
/// strict decoders; `name` is what errors call it.
/// Each device is opened once per process and shared by the models on it.
fn open_device(choice: DeviceChoice) -> impasto::Result<Device> {
    static OPEN: std::sync::Mutex<Vec<(DeviceChoice, Device)>> = std::sync::Mutex::new(Vec::new());
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = open.iter().find(|(c, _)| *c == choice) {
        return Ok(d.clone());
    }
    let d = Device::open(choice)?;
    open.push((choice, d.clone()));
    Ok(d)
}

/// The GPU adapters impasto can run on, best first, as JSON text (see `impasto.devices()`).
#[pyfunction]
fn devices_json() -> String {
    serde_json::to_string(&impasto::backend::device::survey()).expect("a survey serialises")
}

#[pyfunction]
#[pyo3(signature = (data, name = "bytes"))]
fn decode_image<'py>(
    py: Python<'py>,
    data: &[u8],
    name: &str,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let name = PathBuf::from(name);
    let d = py
        .allow_threads(|| impasto::imageio::read_bytes(data, &name, &Default::default()))
        .map_err(to_py)?;
    Ok(decoded_array(d).into_pyarray(py))
}

/// Write an image (format from the extension), atomically: a failed write leaves nothing.
#[pyfunction]
fn write_image(py: Python<'_>, path: PathBuf, image: PyReadonlyArrayDyn<'_, u8>) -> PyResult<()> {
    let img = to_image(&image)?.image;
    drop(image);
    py.allow_threads(|| impasto::imageio::write_path(&img, &path))
        .map_err(to_py)
}

/// A plan's targets as file names (a plan from Python never writes to stdout).
fn target_paths(items: Vec<(impasto::batch::Source, impasto::batch::Target)>) -> PyResult<Pairs> {
    use impasto::batch::Target;
    items
        .into_iter()
        .map(|(s, t)| match t {
            Target::File(p) => Ok((s.name().display().to_string(), p.display().to_string())),
            Target::Stdout(_) => Err(PyValueError::new_err(
                "the output must be a file or folder, not - (stdout)",
            )),
        })
        .collect()
}

/// `(input, output)` pairs.
type Pairs = Vec<(String, String)>;
type Plan = (Pairs, Vec<String>, Vec<String>, Vec<String>);

/// The CLI's plan from inputs to outputs (`impasto stylize`'s walking, naming and guard):
/// `(items, notes, warnings, errors)` with `items` as `(input, output)` paths.
#[pyfunction]
#[pyo3(signature = (inputs, output = None, format = None, overwrite_inputs = false, follow_links = false))]
fn plan_batch(
    py: Python<'_>,
    inputs: Vec<String>,
    output: Option<String>,
    format: Option<String>,
    overwrite_inputs: bool,
    follow_links: bool,
) -> PyResult<Plan> {
    let req = impasto::batch::BatchRequest {
        inputs,
        output,
        format,
        overwrite_inputs,
        walk: impasto::walk::WalkOptions { follow_links },
    };
    let b = py
        .allow_threads(|| impasto::batch::plan(&req))
        .map_err(to_py)?;
    Ok((target_paths(b.items)?, b.notes, b.warnings, b.errors))
}

/// Targets in folder `output` for files listed elsewhere (`(path, relative name)` pairs,
/// e.g. objects under an `s3://` prefix), named as [`plan_batch`] names them:
/// `(items, notes)`.
#[pyfunction]
#[pyo3(signature = (sources, output, format = None))]
fn plan_named(
    sources: Vec<(String, String)>,
    output: PathBuf,
    format: Option<String>,
) -> PyResult<(Pairs, Vec<String>)> {
    use impasto::batch::{self, Source};
    let sources: Vec<Source> = sources
        .into_iter()
        .map(|(path, rel)| Source::File {
            path: path.into(),
            rel: rel.into(),
        })
        .collect();
    let targets = batch::folder_targets(&sources, &output, format.as_deref()).map_err(to_py)?;
    let mut notes = Vec::new();
    let targets = batch::distinct(&sources, targets, &mut notes);
    Ok((
        target_paths(sources.into_iter().zip(targets).collect())?,
        notes,
    ))
}

/// `impasto evaluate` as JSON text (the Python wrapper turns it into a dict).
#[pyfunction]
#[pyo3(signature = (model, style, photos, vgg = None, image_size = 256, style_size = 256, margin = None, device = None, mix = None))]
#[allow(clippy::too_many_arguments)]
fn evaluate_json(
    py: Python<'_>,
    model: PathBuf,
    style: PathBuf,
    photos: PathBuf,
    vgg: Option<PathBuf>,
    image_size: usize,
    style_size: u32,
    margin: Option<usize>,
    device: Option<&str>,
    mix: Option<String>,
) -> PyResult<String> {
    let choice = match device {
        Some(d) => d.parse().map_err(PyValueError::new_err)?,
        None => DeviceChoice::from_env().map_err(PyValueError::new_err)?,
    };
    if image_size < 16 || !image_size.is_multiple_of(4) {
        return Err(PyValueError::new_err(format!(
            "image_size {image_size} must be a multiple of 4, at least 16"
        )));
    }
    py.allow_threads(|| {
        let d = open_device(choice)?;
        let spec = model.to_string_lossy();
        let mix = mix
            .as_deref()
            .map(impasto::model::Mix::parse)
            .transpose()
            .map_err(impasto::Error::Usage)?;
        let m = impasto::styles::resolve(&spec)?
            .select(mix.as_ref())
            .map_err(|e| impasto::Error::Usage(format!("{spec}: {e}")))?
            .to_backend(d.clone());
        let v = impasto::model::Vgg16::load_on(d, &impasto::model::vgg::locate(vgg.as_deref())?)?;
        let defaults = impasto::train::evaluate::EvalOptions::default();
        let opts = impasto::train::evaluate::EvalOptions {
            image_size,
            style_size,
            margin: margin.or(defaults.margin),
            ..defaults
        };
        let e = impasto::train::evaluate::evaluate(&m, &model, &v, &style, &photos, &opts)?;
        Ok(e.to_json())
    })
    .map_err(to_py)
}

/// Reports training progress to a Python callable; a callback that raises (or a pending
/// Ctrl-C) stops the run at the next step, with its checkpoint saved.
struct Progress {
    callback: Option<PyObject>,
    stop: Arc<AtomicBool>,
    error: Option<PyErr>,
    messages: Vec<String>,
}

impl impasto::train::trainer::Observer for Progress {
    fn step(&mut self, step: u64, total: u64, l: &impasto::train::step::Losses, ips: f64) {
        Python::with_gil(|py| {
            if let Err(e) = py.check_signals() {
                self.error.get_or_insert(e);
                self.stop.store(true, Ordering::SeqCst);
                return;
            }
            let Some(cb) = &self.callback else { return };
            let info = pyo3::types::PyDict::new(py);
            let r = (|| {
                info.set_item("step", step)?;
                info.set_item("steps", total)?;
                info.set_item("content", l.content)?;
                info.set_item("style", l.style)?;
                info.set_item("tv", l.tv)?;
                info.set_item("total", l.total)?;
                info.set_item("images_per_second", ips)?;
                cb.call1(py, (info,)).map(|_| ())
            })();
            if let Err(e) = r {
                self.error.get_or_insert(e);
                self.stop.store(true, Ordering::SeqCst);
            }
        });
    }

    fn message(&mut self, msg: &str) {
        self.messages.push(msg.to_string());
    }
}

/// `impasto train` (see the Python wrapper's docstring); returns the run's outcome.
#[pyfunction]
#[pyo3(signature = (style, data, output, steps = None, epochs = None, batch_size = None, image_size = None,
    style_size = None, lr = None, content_weight = None, style_weight = None, tv_weight = None,
    arch = "johnson", seed = None, checkpoint_every = None, val = None, resume = false, vgg = None,
    half = false, on_progress = None, device = None, base = None, fast = true, style_weights = None, balance = true))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    style: Vec<String>,
    data: PathBuf,
    output: PathBuf,
    steps: Option<u64>,
    epochs: Option<u64>,
    batch_size: Option<usize>,
    image_size: Option<usize>,
    style_size: Option<u32>,
    lr: Option<f64>,
    content_weight: Option<f64>,
    style_weight: Option<f64>,
    tv_weight: Option<f64>,
    arch: &str,
    seed: Option<u64>,
    checkpoint_every: Option<u64>,
    val: Option<PathBuf>,
    resume: bool,
    vgg: Option<PathBuf>,
    half: bool,
    on_progress: Option<PyObject>,
    device: Option<&str>,
    base: Option<String>,
    fast: bool,
    style_weights: Option<Vec<(String, f64)>>,
    balance: bool,
) -> PyResult<(String, u64, Vec<String>, String, String)> {
    use impasto::train::trainer::{self, Outcome, RunFiles, TrainRequest};
    // Checked before anything runs: a bad callback found after the first step would leave
    // a checkpoint that refuses the identical retry.
    if let Some(cb) = &on_progress {
        if !cb.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "on_progress must be callable (a function taking one dict), got {}",
                cb.bind(py).get_type().name()?
            )));
        }
    }
    let arch = match arch {
        "johnson" => impasto::model::Arch::Johnson,
        "seed" => impasto::model::Arch::Seed,
        other => {
            return Err(PyValueError::new_err(format!(
                "arch {other:?}: expected \"johnson\" or \"seed\""
            )))
        }
    };
    // Unset arguments take the library's defaults; the library checks every range
    // (`TrainRequest::validate`, a ValueError naming the argument).
    let mut req = TrainRequest::new(PathBuf::new(), data, output);
    req.styles = style
        .iter()
        .map(|s| trainer::StyleSource::parse(s))
        .collect();
    req.base = base;
    req.run.steps = steps;
    req.run.epochs = epochs;
    if let Some(v) = batch_size {
        req.run.batch_size = v;
    }
    if let Some(v) = image_size {
        req.run.image_size = v;
    }
    if let Some(v) = style_size {
        req.style_size = v;
    }
    req.lr = trainer::defaults::lr(lr, req.base.is_some());
    if let Some(v) = content_weight {
        req.loss.content_weight = v;
    }
    if let Some(v) = style_weight {
        req.loss.style_weight = v;
    }
    if let Some(v) = tv_weight {
        req.loss.tv_weight = v;
    }
    req.arch = arch;
    if let Some(v) = seed {
        req.run.seed = v;
    }
    if let Some(v) = checkpoint_every {
        req.run.checkpoint_every = v;
    }
    req.run.val = val;
    req.run.resume = resume;
    req.run.vgg = vgg;
    req.run.half = half;
    req.precise = !fast;
    req.balance = balance;
    if let Some(w) = &style_weights {
        req.set_style_weights(w).map_err(to_py)?;
    }
    let choice = match device {
        Some(d) => d.parse().map_err(PyValueError::new_err)?,
        None => DeviceChoice::from_env().map_err(PyValueError::new_err)?,
    };
    req.run.device = py.allow_threads(|| open_device(choice)).map_err(to_py)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut progress = Progress {
        callback: on_progress,
        stop: stop.clone(),
        error: None,
        messages: Vec::new(),
    };
    let out = py.allow_threads(|| trainer::run(&req, &mut progress, &stop));
    if let Some(e) = progress.error {
        return Err(e);
    }
    let files = RunFiles::new(&req.run.output);
    let (outcome, step) = match out.map_err(to_py)? {
        Outcome::Finished => ("finished", 0),
        Outcome::Interrupted { step } => ("interrupted", step),
    };
    Ok((
        outcome.into(),
        step,
        progress.messages,
        files.checkpoint.display().to_string(),
        files.metrics.display().to_string(),
    ))
}

#[pymodule]
fn _impasto(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(styles, m)?)?;
    m.add_function(wrap_pyfunction!(devices_json, m)?)?;
    m.add_function(wrap_pyfunction!(read_image, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_json, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(decode_image, m)?)?;
    m.add_function(wrap_pyfunction!(write_image, m)?)?;
    m.add_function(wrap_pyfunction!(plan_batch, m)?)?;
    m.add_function(wrap_pyfunction!(plan_named, m)?)?;
    m.add("ImpastoError", m.py().get_type::<ImpastoError>())?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    Ok(())
}
