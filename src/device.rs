//! `--device auto|cpu|cuda[:N]`: where `whittle eval`, `compile`, `bench` and `generate` run. This module
//! exists in every build. The GPU half is behind the `cuda` feature, so a CPU-only build
//! (`--no-default-features`) parses the same flag, picks the CPU for `auto`, and refuses `cuda`.
//!
//! - `auto` uses the first GPU when a driver and a usable device are there, else the CPU. The
//!   reason for falling back (`select`'s) is shown to the user.
//! - `cpu` is always the CPU (f32, the reference path).
//! - `cuda[:N]` is GPU N or an error (exit 1) that names `--device` and the cause, for example a
//!   missing driver.
//!
//! On a GPU, `eval` runs `cuda::GpuModel`. All its decoder layers are resident on the device
//! when the bf16 weights of every model being evaluated, plus 10% and 2 GiB of headroom, fit in
//! the free GPU memory. Otherwise it uses `Residency::Streamed`, uploading one layer at a time.
//! `compile` runs `cuda::CudaBackend`. `bench` and `generate` run `cuda::GpuModel` as a
//! `decode::Engine` (batched prefill and `cuda::GpuDecoder`), with the same residency rule as
//! `eval`. `bench --forward` has no GPU path: it says so and runs on the CPU.

use crate::cpu::calib::CpuBackend;
use crate::cpu::model::Model;
use crate::engine::calib::Backend;
use crate::engine::Engine;
use crate::engine::LogitModel;
use crate::error::{Error, Result};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

/// What `--device cuda` says in a build without the `cuda` feature.
pub const BUILT_WITHOUT_CUDA: &str =
    "this whittle was built without CUDA (rebuild with the default `cuda` feature)";

/// The `--device` flag: `auto` (GPU when usable, else CPU), `cpu`, `cuda` (= `cuda:0`), `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = crate::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || crate::Error::Arg {
            flag: "--device",
            msg: format!("\"{s}\" is not a device; use auto, cpu, cuda or cuda:N (N = GPU index)"),
        };
        match t.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    n.parse().map(DeviceChoice::Cuda).map_err(|_| bad())
                }
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A resolved device.
pub enum Device {
    /// `reason` says why the CPU was picked when it was not asked for.
    Cpu { reason: Option<String> },
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<crate::cuda::Gpu>),
}

/// Where work will run.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// `reason` says why `auto` fell back to the CPU (None when the CPU was asked for).
    Cpu {
        reason: Option<String>,
    },
    Cuda(crate::cuda::GpuInfo),
}

/// Resolves a `--device` choice. `auto` never fails (it falls back to the CPU with a reason);
/// an explicit `cuda[:N]` that cannot be used is an error naming the flag and the cause.
#[cfg(feature = "cuda")]
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    use crate::cuda::probe;
    match choice {
        DeviceChoice::Cpu => Ok(Selected::Cpu { reason: None }),
        DeviceChoice::Auto => Ok(match probe(0) {
            Ok(info) => Selected::Cuda(info),
            Err(e) => Selected::Cpu {
                reason: Some(format!("no usable GPU: {e}")),
            },
        }),
        DeviceChoice::Cuda(n) => probe(n).map(Selected::Cuda).map_err(|e| Error::Arg {
            flag: "--device",
            msg: format!("cuda:{n} is not usable: {e}"),
        }),
    }
}

impl Device {
    /// Resolves `choice` and, for a GPU, opens it. `auto` never fails: if the GPU cannot be used,
    /// it falls back to the CPU and gives the reason. An explicit `cuda[:N]` that cannot be used
    /// is an `Error::Arg` naming `--device`.
    pub fn open(choice: DeviceChoice) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            use crate::cuda::Gpu;
            match select(choice)? {
                Selected::Cpu { reason } => Ok(Device::Cpu { reason }),
                Selected::Cuda(info) => match Gpu::new(info.ordinal) {
                    Ok(g) => Ok(Device::Cuda(std::sync::Arc::new(g))),
                    Err(e) if choice == DeviceChoice::Auto => Ok(Device::Cpu {
                        reason: Some(format!("no usable GPU: {info} could not be opened: {e}")),
                    }),
                    Err(e) => Err(Error::Arg {
                        flag: "--device",
                        msg: format!("{choice} could not be opened: {e}"),
                    }),
                },
            }
        }
        #[cfg(not(feature = "cuda"))]
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu { reason: None }),
            DeviceChoice::Auto => Ok(Device::Cpu {
                reason: Some("this whittle was built without CUDA".into()),
            }),
            DeviceChoice::Cuda(_) => Err(Error::Arg {
                flag: "--device",
                msg: BUILT_WITHOUT_CUDA.into(),
            }),
        }
    }

    /// For commands with no GPU path yet (`what`: "bench --forward"). Resolves `choice` like
    /// `open`, so an explicit GPU that cannot be used is still an error, and then returns the
    /// CPU. When a GPU was chosen, the reason says that it is not used.
    pub fn open_cpu_only(choice: DeviceChoice, what: &str) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            match select(choice)? {
                Selected::Cpu { reason } => Ok(Device::Cpu { reason }),
                Selected::Cuda(info) => Ok(Device::Cpu {
                    reason: Some(format!(
                        "{what} is not yet on the GPU; running on the CPU ({info} not used)"
                    )),
                }),
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = what;
            Device::open(choice)
        }
    }

    pub fn is_gpu(&self) -> bool {
        !matches!(self, Device::Cpu { .. })
    }

    /// One line for the user, for example `cpu (no usable GPU: no NVIDIA driver found ...)` or
    /// `cuda:0 NVIDIA H100 ... (sm_90, ...)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu { reason: None } => "cpu".into(),
            Device::Cpu { reason: Some(r) } => format!("cpu ({r})"),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => g.info.to_string(),
        }
    }

    /// The calibration backend `compile` runs on this device.
    pub fn backend(&self) -> Box<dyn Backend> {
        match self {
            Device::Cpu { .. } => Box::new(CpuBackend::new()),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => Box::new(crate::cuda::CudaBackend::new(g.clone())),
        }
    }

    /// Loads the models `bench` and `generate` run (the model, then `--against` if given) as
    /// serving engines on this device, reporting each load on stderr: `Model` (f32) on the CPU,
    /// `GpuModel` (bf16; resident or streamed as for `eval`) on a GPU.
    pub fn load_engines(&self, dirs: &[&Path]) -> Result<Vec<Box<dyn Engine>>> {
        self.load_each(
            dirs,
            |m| Box::new(m) as Box<dyn Engine>,
            #[cfg(feature = "cuda")]
            |m| Box::new(m) as Box<dyn Engine>,
        )
    }

    /// Loads the models `eval` scores (the model, then the base if there is one) on this device
    /// and reports each load on stderr. On a GPU, see the module comment for the residency.
    pub fn load_eval_models(&self, dirs: &[&Path]) -> Result<Vec<Box<dyn LogitModel>>> {
        self.load_each(
            dirs,
            |m| Box::new(m) as Box<dyn LogitModel>,
            #[cfg(feature = "cuda")]
            |m| Box::new(m) as Box<dyn LogitModel>,
        )
    }

    /// Loads every model of `dirs` on this device and wraps it (`cpu` or `gpu`).
    fn load_each<T>(
        &self,
        dirs: &[&Path],
        cpu: impl Fn(Model) -> T,
        #[cfg(feature = "cuda")] gpu: impl Fn(crate::cuda::GpuModel) -> T,
    ) -> Result<Vec<T>> {
        let ctx =
            |dir: &Path, e: Error| Error::Other(format!("loading model {}: {e}", dir.display()));
        match self {
            Device::Cpu { .. } => dirs
                .iter()
                .map(|&dir| {
                    let t = Instant::now();
                    let m = Model::load(dir).map_err(|e| ctx(dir, e))?;
                    eprintln!(
                        "loaded {} in {:.1}s (cpu, {})",
                        dir.display(),
                        t.elapsed().as_secs_f64(),
                        crate::cpu::bf16::in_use()
                    );
                    Ok(cpu(m))
                })
                .collect(),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => {
                use crate::cuda::{GpuModel, Residency};
                let residency = eval_residency(g, dirs)?;
                dirs.iter()
                    .map(|&dir| {
                        let t = Instant::now();
                        let m =
                            GpuModel::load(dir, g.clone(), residency).map_err(|e| ctx(dir, e))?;
                        eprintln!(
                            "loaded {} in {:.1}s (cuda:{}, bf16, layers {})",
                            dir.display(),
                            t.elapsed().as_secs_f64(),
                            g.info.ordinal,
                            match residency {
                                Residency::Resident => "resident",
                                Residency::Streamed => "streamed",
                            }
                        );
                        Ok(gpu(m))
                    })
                    .collect()
            }
        }
    }
}

/// bf16 bytes of every tensor of the models in `dirs` (the LM head counted as untied: an upper
/// bound).
#[cfg(feature = "cuda")]
fn bf16_weight_bytes(dirs: &[&Path]) -> Result<u64> {
    let mut total = 0u64;
    for dir in dirs {
        let cfg = crate::checkpoint::config::ModelConfig::from_dir(dir)?;
        total += crate::checkpoint::registry::registry(&cfg, true)
            .iter()
            .map(|s| 2 * s.numel() as u64)
            .sum::<u64>();
    }
    Ok(total)
}

/// `Resident` when the weights of all of `dirs`, plus 10% and 2 GiB, fit in free GPU memory.
#[cfg(feature = "cuda")]
fn eval_residency(gpu: &crate::cuda::Gpu, dirs: &[&Path]) -> Result<crate::cuda::Residency> {
    use crate::cuda::Residency;
    let need = bf16_weight_bytes(dirs)?;
    let need = need + need / 10 + (2u64 << 30);
    let (free, _) = gpu.mem_info()?;
    Ok(if need <= free as u64 {
        Residency::Resident
    } else {
        Residency::Streamed
    })
}
