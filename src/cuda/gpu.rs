//! `Gpu`: one device context, one stream, the embedded kernel module and a cache of its
//! functions; and `DTensor`, a device buffer with a row-major shape.
//!
//! Everything runs on the one stream, in order, so cudarc's per-buffer event tracking is turned
//! off: a buffer freed on the host is released stream-ordered after the work already queued that
//! uses it. Host copies (`to_host`) synchronise.
//!
//! Debugging: with `WHITTLE_CUDA_SYNC=1` (or `Gpu::set_sync(true)`, or in this crate's unit tests)
//! every launch is followed by a stream synchronise, so an asynchronous fault is reported with the
//! name of the kernel that caused it.

use super::device::{probe, GpuInfo};
use super::error::{CudaError, CudaResult};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// kernels/*.cu compiled by build.rs: SASS for sm_80/86/89/90a plus compute_80 PTX.
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/whittle.fatbin"));

/// ptxas' register / spill / shared-memory table for every kernel and target.
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas-report.txt"));

pub struct Gpu {
    pub info: GpuInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// Loaded kernels, each with the dynamic shared memory (bytes) it has been opted in to.
    funcs: Mutex<HashMap<&'static str, (CudaFunction, u32)>>,
    sync: AtomicBool,
    /// Whether `gemm_nt` uses the sm_90a wgmma kernel: decided once, on first use
    /// (`ops::sm90_kernel_enabled`).
    pub(crate) sm90_gemm: OnceLock<bool>,
    /// Whether `gemm_nt` uses the TMA-fed wgmma kernel (same rule, its own self-check).
    pub(crate) sm90_tma: OnceLock<bool>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.info)
    }
}

impl Gpu {
    /// Opens device `ordinal`: checks driver and device first (clear errors, no panics), then
    /// creates the context and stream and loads the embedded fatbin.
    pub fn new(ordinal: usize) -> CudaResult<Gpu> {
        let info = probe(ordinal)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| CudaError::driver("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: whittle issues all work on the single stream below, in order; buffers are freed
        // stream-ordered (cudarc frees with cuMemFreeAsync on that stream, or synchronises first).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver("cuStreamCreate", e))?;
        let module = ctx
            .load_module(Ptx::from_binary(FATBIN.to_vec()))
            .map_err(|e| CudaError::driver("cuModuleLoadData (embedded kernels fatbin)", e))?;
        let sync = std::env::var("WHITTLE_CUDA_SYNC").is_ok_and(|v| v != "0") || cfg!(test);
        Ok(Gpu {
            info,
            ctx,
            stream,
            module,
            funcs: Mutex::new(HashMap::new()),
            sync: AtomicBool::new(sync),
            sm90_gemm: OnceLock::new(),
            sm90_tma: OnceLock::new(),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Synchronise after every launch (to attribute asynchronous faults to a kernel).
    pub fn set_sync(&self, on: bool) {
        self.sync.store(on, Ordering::Relaxed);
    }

    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("cuStreamSynchronize", e))
    }

    /// The kernel `name` from the embedded module (loaded once, then cached), allowed `smem`
    /// bytes of dynamic shared memory: a kernel may use more than the default 48 KB window only
    /// once its function has opted in (`MAX_DYNAMIC_SHARED_SIZE_BYTES`), so the first launch that
    /// asks for more than the function allows raises its limit to exactly that.
    fn func(&self, name: &'static str, smem: u32) -> CudaResult<CudaFunction> {
        let mut cache = self.funcs.lock().unwrap_or_else(|p| p.into_inner());
        let (f, allowed) = match cache.get(name) {
            Some((f, allowed)) if smem <= *allowed => return Ok(f.clone()),
            Some((f, allowed)) => (f.clone(), *allowed),
            None => {
                let f = self
                    .module
                    .load_function(name)
                    .map_err(|e| CudaError::driver(format!("cuModuleGetFunction({name})"), e))?;
                (f, 0)
            }
        };
        if smem > allowed {
            if smem as i32 > self.info.max_smem_per_block {
                return Err(CudaError::pre(
                    name,
                    format!(
                        "needs {smem} bytes of shared memory per block; {} allows {}",
                        self.info.name, self.info.max_smem_per_block
                    ),
                ));
            }
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| {
                CudaError::driver(format!("cuFuncSetAttribute({name}, max dynamic smem)"), e)
            })?;
        }
        cache.insert(name, (f.clone(), smem.max(allowed)));
        Ok(f)
    }

    /// Launches `name` with `args` (raw kernel parameters in order) and, in sync mode, waits for it.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list exactly (types and order);
    /// `cfg.shared_mem_bytes` must cover the dynamic shared memory the kernel uses for this launch
    /// (the launcher next to each kernel passes its own size); every device pointer among `args`
    /// must address memory of at least the extent the kernel touches for this
    /// `cfg` and these scalars, and that memory must stay allocated until the kernel completes
    /// (true for buffers owned by callers on this `Gpu`: they are freed stream-ordered).
    pub(crate) unsafe fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[KArg],
    ) -> CudaResult<()> {
        let f = self.func(name, cfg.shared_mem_bytes)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                KArg::Ptr(v) | KArg::U64(v) => b.arg(v),
                KArg::I32(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
                KArg::F64(v) => b.arg(v),
                KArg::Tma(v) => b.arg(v),
            };
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { b.launch(cfg) }.map_err(|e| CudaError::launch(name, e))?;
        if self.sync.load(Ordering::Relaxed) {
            self.stream
                .synchronize()
                .map_err(|e| CudaError::launch(name, e))?;
        }
        Ok(())
    }

    /// Events for timing (benchmarks): `(start, end)`, both with timing enabled.
    pub fn timing_events(
        &self,
    ) -> CudaResult<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)> {
        let mk = || {
            self.ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| CudaError::driver("cuEventCreate", e))
        };
        Ok((mk()?, mk()?))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> CudaResult<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| CudaError::driver("cuMemGetInfo", e))
    }
}

/// One kernel parameter by value (device pointers as raw addresses).
#[derive(Debug, Clone, Copy)]
pub(crate) enum KArg {
    Ptr(u64),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
    /// A TMA tensor map, by value (`const __grid_constant__ TmaMap`).
    Tma(super::tma::TmaDesc),
}

/// A device buffer with a logical row-major shape. The allocation may be larger than the shape
/// (reusable buffers: `set_shape` within `capacity`); kernels only see the shape's extent.
pub struct DTensor<T> {
    data: CudaSlice<T>,
    shape: Vec<usize>,
}

impl<T> std::fmt::Debug for DTensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DTensor{:?}", self.shape)
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Clone + Default> DTensor<T> {
    /// Zero-filled (memset on the stream).
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> CudaResult<DTensor<T>> {
        let n: usize = shape.iter().product();
        let data = gpu.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            CudaError::driver(
                format!("cuMemAlloc({} bytes)", n * std::mem::size_of::<T>()),
                e,
            )
        })?;
        Ok(DTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    pub fn from_host(gpu: &Gpu, host: &[T], shape: &[usize]) -> CudaResult<DTensor<T>> {
        let n: usize = shape.iter().product();
        if n != host.len() {
            return Err(CudaError::Other(format!(
                "upload: {} host elements for shape {shape:?}",
                host.len()
            )));
        }
        let mut t = Self::zeros(gpu, shape)?;
        t.copy_from_host(gpu, host)?;
        Ok(t)
    }

    /// Overwrites the first `host.len()` elements (must equal the shape's element count).
    pub fn copy_from_host(&mut self, gpu: &Gpu, host: &[T]) -> CudaResult<()> {
        if host.len() != self.numel() {
            return Err(CudaError::Other(format!(
                "upload: {} host elements into a tensor of shape {:?}",
                host.len(),
                self.shape
            )));
        }
        if host.is_empty() {
            return Ok(());
        }
        let mut view = self.data.slice_mut(0..host.len());
        gpu.stream
            .memcpy_htod(host, &mut view)
            .map_err(|e| CudaError::driver("cuMemcpyHtoDAsync", e))
    }

    /// Copies elements `src_start..src_start + n` of `src` to `dst_start..dst_start + n` of this
    /// tensor, on the stream (no host round trip). Both ranges must lie within the shapes.
    pub fn copy_from_device(
        &mut self,
        gpu: &Gpu,
        dst_start: usize,
        src: &DTensor<T>,
        src_start: usize,
        n: usize,
    ) -> CudaResult<()> {
        let (src_end, dst_end) = (src_start.checked_add(n), dst_start.checked_add(n));
        let fits = |end: Option<usize>, len: usize| matches!(end, Some(e) if e <= len);
        if !fits(src_end, src.numel()) || !fits(dst_end, self.numel()) {
            return Err(CudaError::Other(format!(
                "device copy of {n} elements from [{src_start}..] of a tensor of shape {:?} to \
                 [{dst_start}..] of a tensor of shape {:?} is out of bounds",
                src.shape, self.shape
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let from = src.data.slice(src_start..src_start + n);
        let mut to = self.data.slice_mut(dst_start..dst_start + n);
        gpu.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| CudaError::driver("cuMemcpyDtoDAsync", e))
    }

    /// Downloads the shape's elements (synchronises the stream).
    pub fn to_host(&self, gpu: &Gpu) -> CudaResult<Vec<T>> {
        let n = self.numel();
        let mut out = vec![T::default(); n];
        if n > 0 {
            let view = self.data.slice(0..n);
            gpu.stream
                .memcpy_dtoh(&view, &mut out)
                .map_err(|e| CudaError::driver("cuMemcpyDtoHAsync", e))?;
        }
        gpu.synchronize()?;
        Ok(out)
    }
}

impl<T> DTensor<T> {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements allocated.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Last dimension (1 for a scalar shape).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Product of all dimensions but the last.
    pub fn rows(&self) -> usize {
        match self.shape.len() {
            0 => 1,
            n => self.shape[..n - 1].iter().product(),
        }
    }

    /// Reinterprets the buffer with another shape that fits the allocation.
    pub fn set_shape(&mut self, shape: &[usize]) -> CudaResult<()> {
        let n: usize = shape.iter().product();
        if n > self.data.len() {
            return Err(CudaError::Other(format!(
                "shape {shape:?} needs {n} elements; the buffer holds {}",
                self.data.len()
            )));
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// The raw device address (for kernel parameters).
    pub(crate) fn ptr(&self, gpu: &Gpu) -> u64 {
        let (p, _sync) = self.data.device_ptr(&gpu.stream);
        p
    }
}
