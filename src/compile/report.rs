//! The compile report, `whittle_report.json`: what was asked, what was kept, what it cost.
//!
//! Typed so that the CLI and the tests read fields, not string keys. It is written through a
//! `serde_json::Value` (`to_json`), whose map sorts the keys: the file's key order is
//! alphabetical, as it has always been.

use crate::compile::width::{Point, Width};
use serde::Serialize;
use serde_json::Value;

/// One compiled width's report.
#[derive(Debug, Clone, Serialize)]
pub struct CompileReport {
    pub whittle_version: &'static str,
    pub input: String,
    pub model_type: &'static str,
    pub method: &'static str,
    pub sequential: bool,
    /// `original` or `layer` with `sequential`; null one-shot.
    pub sequential_target: Option<&'static str>,
    pub repair: bool,
    pub damp: f64,
    pub token_weight: &'static str,
    pub width_request: WidthRequest,
    /// The rounding multiple actually used (clamped for small models).
    pub multiple_of: usize,
    pub intermediate_size_before: usize,
    pub intermediate_size_after: usize,
    pub params_before: u64,
    pub params_after: u64,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    pub weight_gib_before: f64,
    pub weight_gib_after: f64,
    pub passthrough_params: u64,
    pub passthrough_bytes: u64,
    /// Null when the method needs no calibration (magnitude without repair).
    pub calibration: Option<CalibrationReport>,
    pub backend: String,
    pub gpu_kernels: Option<String>,
    pub cpu_gemm: String,
    pub solver: &'static str,
    pub layers: Vec<LayerReport>,
    /// Only in a several-width run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchReport>,
    /// Only in a `--max-kl` / `--max-ppl-ratio` run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<CeilingReport>,
    /// Only with `--reconstruct`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<ReconReport>,
    /// Only with `--distill`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distillation: Option<crate::compile::distill::DistillReport>,
    pub timings_s: Timings,
    pub peak_rss_mib: Option<f64>,
    pub peak_heap_mib: Option<f64>,
}

impl CompileReport {
    /// The report as JSON, keys sorted (the layout of whittle_report.json).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a compile report is plain data")
    }

    /// Percent fewer parameters than the input.
    pub fn params_saved_pct(&self) -> f64 {
        100.0 * (1.0 - self.params_after as f64 / self.params_before as f64)
    }
}

/// `--reconstruct`'s settings and what it did layer by layer.
#[derive(Debug, Clone, Serialize)]
pub struct ReconReport {
    pub epochs: usize,
    pub lr: f64,
    pub tokens: usize,
    pub batch: usize,
    pub layers: Vec<crate::compile::reconstruct::LayerRecon>,
}

/// The width as the user asked for it: `{"tier": ..}`, `{"keep_ratio": ..}` or
/// `{"intermediate_size": ..}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WidthRequest {
    Tier(String),
    KeepRatio(f64),
    IntermediateSize(usize),
}

impl From<&Width> for WidthRequest {
    fn from(w: &Width) -> Self {
        match w {
            Width::Tier(t) => WidthRequest::Tier(t.clone()),
            Width::KeepRatio(r) => WidthRequest::KeepRatio(*r),
            Width::Size(s) => WidthRequest::IntermediateSize(*s),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub sequences: usize,
    pub seq_len: usize,
    pub tokens: usize,
    pub sources: Vec<SourceReport>,
    /// With a `self` source: how its sequences were sampled (the ids are saved beside the
    /// report as `calibration-ids.safetensors`, for `--calib-ids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_generated: Option<crate::compile::selfgen::SelfGenReport>,
}

impl CalibrationReport {
    pub fn of(c: &crate::compile::calib::CalibSet) -> CalibrationReport {
        CalibrationReport {
            sequences: c.n_seq,
            seq_len: c.seq_len,
            tokens: c.tokens(),
            sources: c
                .sources
                .iter()
                .map(|s| SourceReport {
                    path: s.path.display().to_string(),
                    weight: s.weight,
                    sequences: s.sequences,
                    tokens: s.tokens,
                })
                .collect(),
            self_generated: c.generated.as_ref().map(|g| g.report.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub path: String,
    pub weight: f64,
    pub sequences: usize,
    pub tokens: usize,
}

/// One layer: the kept neurons and the share of the activation energy they carry (null without
/// calibration or with zero energy).
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub kept: Vec<usize>,
    pub kept_activation_energy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub widths: Vec<usize>,
    pub outputs: Vec<String>,
    pub streams: usize,
    pub note: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub flag: &'static str,
    pub limit: f64,
    pub held_out: HeldOutReport,
    pub base_ppl: f64,
    pub chosen: usize,
    pub curve: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldOutReport {
    pub sequences: usize,
    pub tokens: usize,
}

/// Wall seconds per stage of one compile.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Timings {
    pub calibrate: f64,
    pub score: f64,
    pub repair: f64,
    /// `--reconstruct` (0 without it).
    pub reconstruct: f64,
    /// `--distill`, every width together (0 without it).
    pub distill: f64,
    pub write: f64,
}
