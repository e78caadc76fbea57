//! The device behind the wgpu backend: adapter choice, the compiled pipelines (one per
//! kernel, whatever the shapes: shapes travel as parameters), a pool of storage buffers, one
//! pending command encoder that every op records into (submitted only when a result is read
//! back, or after many ops) and the readback itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::shaders;

pub use crate::backend::device::AdapterSummary;
use crate::backend::DeviceError;

fn summary(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let limits = a.limits();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend).to_lowercase(),
        kind: kind_name(info.device_type).into(),
        driver: [info.driver, info.driver_info]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        max_buffer_bytes: limits.max_buffer_size,
        max_binding_bytes: limits.max_storage_buffer_binding_size,
    }
}

fn kind_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Preference order: discrete, integrated, virtual, other, software.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // Compute needs Vulkan, Metal or DX12 (OpenGL has no storage buffers worth the name).
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    // `WGPU_BACKEND` narrows the choice.
    wgpu::Instance::new(desc.with_env())
}

fn adapters() -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    all.sort_by_key(|a| rank(a.get_info().device_type));
    all
}

/// Every compute adapter on this machine, best first.
pub fn list() -> Vec<AdapterSummary> {
    adapters().iter().map(summary).collect()
}

/// The kernels, in the order of [`Kernel::source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    ConvForward,
    ConvWeightGrad,
    ConvInputGrad,
    Gram,
    GramBackward,
    SumSplits,
    PlaneSums,
    LossSums,
    Pointwise,
    NormApply,
    NormOwn,
    NormBackward,
    Centre,
    ChannelAffine,
    Output,
    MaxPool,
    LossGrad,
    PlaneTotals,
    NormTrain,
    Adam,
    Permute,
}

impl Kernel {
    fn source(self) -> String {
        match self {
            Kernel::ConvForward => shaders::conv_forward(),
            Kernel::ConvWeightGrad => shaders::conv_weight_grad(),
            Kernel::ConvInputGrad => shaders::conv_input_grad(),
            Kernel::Gram => shaders::gram(),
            Kernel::GramBackward => shaders::gram_backward(),
            Kernel::SumSplits => shaders::SUM_SPLITS.into(),
            Kernel::PlaneSums => shaders::PLANE_SUMS.into(),
            Kernel::LossSums => shaders::LOSS_SUMS.into(),
            Kernel::Pointwise => shaders::pointwise(),
            Kernel::NormApply => shaders::norm_apply(),
            Kernel::NormOwn => shaders::norm_own(),
            Kernel::NormBackward => shaders::norm_backward(),
            Kernel::Centre => shaders::centre(),
            Kernel::ChannelAffine => shaders::channel_affine(),
            Kernel::Output => shaders::output(),
            Kernel::MaxPool => shaders::max_pool(),
            Kernel::LossGrad => shaders::loss_grad(),
            Kernel::PlaneTotals => shaders::plane_totals(),
            Kernel::NormTrain => shaders::norm_train(),
            Kernel::Adam => shaders::adam(),
            Kernel::Permute => shaders::permute(),
        }
    }
}

/// Ops recorded since the last submission; submitted when a result is read back or when
/// this many have piled up.
const MAX_PENDING: usize = 512;
/// Bytes of idle buffers kept for reuse.
const POOL_BYTES: u64 = 1 << 30;

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    ops: usize,
}

#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// The device and everything that lives as long as it.
pub struct Ctx {
    pub device: wgpu::Device,
    queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pipelines: Mutex<HashMap<Kernel, Arc<wgpu::ComputePipeline>>>,
    pending: Mutex<Pending>,
    pool: Mutex<Pool>,
    /// The first error the device reported (validation, out of memory, lost device).
    error: Arc<Mutex<Option<Fault>>>,
    /// Bound where a kernel's optional input is absent.
    pub dummy: wgpu::Buffer,
    /// How many times results were read back (each one a synchronisation).
    pub readbacks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.adapter.name, self.adapter.backend)
    }
}

/// Why no device could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no GPU adapter was found (Vulkan, Metal or DX12{})", env_note())]
    NoAdapter,
    #[error("the adapter `{name}` refused a device: {msg}")]
    Refused { name: String, msg: String },
}

/// What the device reported, typed when it is read back ([`Ctx::fault`]).
#[derive(Clone, Debug)]
enum Fault {
    OutOfMemory(String),
    Lost(String),
    Failed(String),
}

fn env_note() -> String {
    match std::env::var("WGPU_BACKEND") {
        Ok(v) => format!("; WGPU_BACKEND={v} narrows the search"),
        Err(_) => String::new(),
    }
}

impl Ctx {
    /// Opens the best adapter; `hardware_only` skips CPU and software adapters.
    pub fn open(hardware_only: bool) -> Result<Ctx, OpenError> {
        let adapter = adapters()
            .into_iter()
            .find(|a| !hardware_only || a.get_info().device_type != wgpu::DeviceType::Cpu)
            .ok_or(OpenError::NoAdapter)?;
        let summary = summary(&adapter);
        // Everything the adapter can give: activations of large pictures are large buffers.
        let desc = wgpu::DeviceDescriptor {
            label: Some("impasto"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| OpenError::Refused {
                name: summary.name.clone(),
                msg: e.to_string(),
            })?;
        let error = Arc::new(Mutex::new(None::<Fault>));
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(match e {
                    wgpu::Error::OutOfMemory { .. } => Fault::OutOfMemory(e.to_string()),
                    _ => Fault::Failed(e.to_string()),
                });
            }
        }));
        let slot = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                s.get_or_insert(Fault::Lost(msg));
            }
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Ctx {
            device,
            queue,
            adapter: summary,
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                encoder: None,
                ops: 0,
            }),
            pool: Mutex::new(Pool::default()),
            error,
            dummy,
            readbacks: Default::default(),
        })
    }

    fn pipeline(&self, k: Kernel) -> Arc<wgpu::ComputePipeline> {
        let mut map = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(k)
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(&format!("{k:?}")),
                        source: wgpu::ShaderSource::Wgsl(k.source().into()),
                    });
                Arc::new(
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(&format!("{k:?}")),
                            layout: None,
                            module: &module,
                            entry_point: Some("main"),
                            compilation_options: Default::default(),
                            cache: None,
                        }),
                )
            })
            .clone()
    }

    /// The largest tensor (bytes) one kernel can bind.
    pub fn max_tensor_bytes(&self) -> u64 {
        self.adapter
            .max_binding_bytes
            .min(self.adapter.max_buffer_bytes)
    }

    /// A storage buffer of at least `bytes` (contents unspecified), from the pool if one
    /// fits exactly.
    pub fn alloc(&self, bytes: u64) -> wgpu::Buffer {
        let size = bytes.max(4).next_multiple_of(4);
        let max = self.max_tensor_bytes();
        assert!(
            size <= max,
            "a tensor of {} MiB is larger than the adapter's limit of {} MiB ({})",
            size >> 20,
            max >> 20,
            self.adapter.name
        );
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = pool.free.get_mut(&size).and_then(Vec::pop) {
                pool.bytes -= size;
                return b;
            }
        }
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Hands a buffer back. Ops already recorded that read it stay correct: whatever reuses
    /// it is recorded after them in the same queue.
    pub fn recycle(&self, b: wgpu::Buffer) {
        let size = b.size();
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.bytes + size <= POOL_BYTES {
            pool.bytes += size;
            pool.free.entry(size).or_default().push(b);
        }
    }

    /// A new buffer holding `data` (parameters, small host vectors, uploads).
    pub fn buffer_with(&self, data: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: data,
                usage,
            })
    }

    /// A storage buffer holding `data`, from the pool.
    pub fn upload(&self, data: &[f32]) -> wgpu::Buffer {
        let b = self.alloc(4 * data.len() as u64);
        if !data.is_empty() {
            // Queue writes land before the next submission: submit what is pending first, so
            // that earlier ops which read this (recycled) buffer see its old contents.
            self.flush();
            self.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
        }
        b
    }

    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = p.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(enc);
        p.ops += 1;
        if p.ops >= MAX_PENDING {
            let enc = p.encoder.take().expect("encoder");
            p.ops = 0;
            self.queue.submit([enc.finish()]);
        }
    }

    /// Submits what is pending.
    pub fn flush(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(enc) = p.encoder.take() {
            p.ops = 0;
            self.queue.submit([enc.finish()]);
        }
    }

    /// Records one dispatch of `kernel` with parameter words `params` and the buffers
    /// bound from binding 1 on, over `groups` workgroups.
    pub fn dispatch(
        &self,
        kernel: Kernel,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.pipeline(kernel);
        let pbuf = self.buffer_with(bytemuck::cast_slice(params), wgpu::BufferUsages::STORAGE);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: pbuf.as_entire_binding(),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
    }

    /// Records a copy of `bytes` from `src` to `dst`.
    pub fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        if bytes > 0 {
            self.record(|enc| enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes));
        }
    }

    /// The first `len` floats of `b`, after everything recorded so far; a device error
    /// panics with the adapter named (see [`Ctx::read_many`] for the typed error).
    pub fn read(&self, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
        match self.read_many(&[(b, len)]) {
            Ok(mut v) => v.pop().expect("one result"),
            Err(e) => panic!("{e}"),
        }
    }

    /// The first `len` floats of each buffer, after everything recorded so far, with one
    /// synchronisation; the device's error, typed, if the work failed.
    pub fn read_many(&self, bufs: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>, DeviceError> {
        let total: usize = bufs.iter().map(|b| b.1).sum();
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if total == 0 {
            self.fault()?;
            return Ok(bufs.iter().map(|_| Vec::new()).collect());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: 4 * total as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0u64;
        for &(b, len) in bufs {
            let bytes = 4 * len as u64;
            if bytes > 0 {
                let dst = &staging;
                self.record(|enc| enc.copy_buffer_to_buffer(b, 0, dst, at, bytes));
            }
            at += bytes;
        }
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.fault()?;
        let name = || self.adapter.name.clone();
        if let Err(e) = polled {
            return Err(DeviceError::Lost {
                adapter: name(),
                msg: format!("it stopped answering ({e})"),
            });
        }
        if !matches!(rx.recv(), Ok(Ok(()))) {
            return Err(DeviceError::Failed {
                adapter: name(),
                msg: "a result could not be mapped for reading".into(),
            });
        }
        let all = bytemuck::cast_slice::<u8, f32>(&staging.get_mapped_range(..).expect("mapped"))
            .to_vec();
        staging.unmap();
        let mut out = Vec::with_capacity(bufs.len());
        let mut at = 0;
        for &(_, len) in bufs {
            out.push(all[at..at + len].to_vec());
            at += len;
        }
        Ok(out)
    }

    /// The device's first reported error, typed (and cleared).
    fn fault(&self) -> Result<(), DeviceError> {
        let taken = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        let adapter = self.adapter.name.clone();
        match taken {
            None => Ok(()),
            Some(Fault::OutOfMemory(msg)) => Err(DeviceError::OutOfMemory { adapter, msg }),
            Some(Fault::Lost(msg)) => Err(DeviceError::Lost { adapter, msg }),
            Some(Fault::Failed(msg)) => Err(DeviceError::Failed { adapter, msg }),
        }
    }
}

/// Workgroups for `n` threads of 256 in a 2-D grid (at most 65,535 along x).
pub fn groups_1d(n: usize) -> [u32; 3] {
    let g = n.div_ceil(256);
    let x = g.min(65_535);
    [x as u32, g.div_ceil(x.max(1)) as u32, 1]
}
