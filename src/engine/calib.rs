//! The calibration interface between the compile pipeline and the engines: the `Backend` trait
//! that runs one decoder layer over a batch of calibration sequences (`cpu::calib::CpuBackend`,
//! `cuda::backend::CudaBackend`), what it records (`StatsSpec`, `Capture`, `Stream`, `Layout`),
//! and the per-layer MLP statistics both engines accumulate on the host (`MlpStats`,
//! `TokenWeight`, `HostCapture`).
//!
//! Statistics are taken at the input of `down_proj`, `a = act(gate)·up`: per neuron Σa and Σa²,
//! and when scoring or repair needs it the Gram matrix Σ a·aᵀ (and, for `--sequential`, the
//! cross matrix Σ a_ref·aᵀ between the original model's activations and the pruned stream's).
//! Each batch is reduced in f32 by a GEMM over at most a few thousand rows and added into f64
//! accumulators, so a million calibration tokens lose no precision. Every sum has a fixed order,
//! so results do not depend on the thread count.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::Half;
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::model::embed_from_store;
use crate::cpu::ops::{gemm_tn_strided, matmul_tn};
use crate::engine::{Batch, EngineLayer};
use crate::error::{Error, Result};
use crate::layer::Layer;
use rayon::prelude::*;

/// Per-layer activation statistics at the down_proj input.
#[derive(Debug, Clone)]
pub struct MlpStats {
    pub width: usize,
    pub count: u64,
    pub sum: Vec<f64>,   // [I]
    pub sumsq: Vec<f64>, // [I]
    /// Σ a·aᵀ, when the spec asked for it.
    pub gram: Option<Gram>,
    pub cross: Option<Vec<f64>>, // [I, I] Σ a_ref·aᵀ (sequential only)
    /// The CPU bf16 kernel the host Gram's products run on (`None`: f32): the engine's own
    /// precision, so the Gram is of the bf16 activations down_proj reads, as on the GPU
    /// (`gram_tn_bf16`: bf16 inputs, f32 accumulation).
    pub gram_kernel: Option<crate::cpu::bf16::Kernel>,
}

pub use crate::engine::DeviceGram;

/// Where the Gram matrix Σ a·aᵀ of `MlpStats` is held.
#[derive(Debug, Clone)]
pub enum Gram {
    /// [I, I] f64 on the host.
    Host(Vec<f64>),
    /// [I, I] f64 on the host while statistics are still added: only the block-upper triangle
    /// (`GRAM_BLOCK`) is summed, the rest is stale until [`MlpStats::finish`] mirrors it in (once,
    /// instead of adding every slab's products to both halves). `gram_host` reads None.
    HostUpper(Vec<f64>),
    /// Left on the GPU by a GPU backend (`StatsSpec::gram_on_device`): the device solver reads
    /// it there, no [I, I] round trip through the host.
    Device(DeviceGram),
}

impl MlpStats {
    pub fn new(width: usize, gram: bool, cross: bool) -> MlpStats {
        MlpStats {
            width,
            count: 0,
            sum: vec![0.0; width],
            sumsq: vec![0.0; width],
            gram: gram.then(|| Gram::Host(vec![0.0; width * width])),
            cross: cross.then(|| vec![0.0; width * width]),
            gram_kernel: crate::cpu::bf16::active(),
        }
    }

    /// The Gram matrix [I, I] when it is on the host.
    pub fn gram_host(&self) -> Option<&[f64]> {
        match &self.gram {
            Some(Gram::Host(g)) => Some(g),
            _ => None,
        }
    }

    /// The Gram matrix when a GPU backend left it on its device.
    pub fn gram_device(&self) -> Option<&DeviceGram> {
        match &self.gram {
            Some(Gram::Device(g)) => Some(g),
            _ => None,
        }
    }

    /// Adds a batch of activations `a` [rows, I].
    pub fn add(&mut self, a: &[f32]) {
        let w = self.width;
        assert_eq!(a.len() % w, 0, "activations are not [rows, {w}]");
        let rows = a.len() / w;
        self.count += rows as u64;
        // Columns in parallel, rows in order: the same sums whatever the thread count. A task
        // takes COLS adjacent columns so each row's read is one contiguous run (a column at a
        // time strides through memory and re-reads every cache line COLS times).
        const COLS: usize = 64;
        self.sum
            .par_chunks_mut(COLS)
            .zip(self.sumsq.par_chunks_mut(COLS))
            .enumerate()
            .for_each(|(c, (s, q))| {
                let (j0, n) = (c * COLS, s.len());
                let (mut s1, mut s2) = ([0f64; COLS], [0f64; COLS]);
                crate::cpu::wide::wide(|| {
                    for r in 0..rows {
                        let row = &a[r * w + j0..][..n];
                        for (i, &x) in row.iter().enumerate() {
                            let x = x as f64;
                            s1[i] += x;
                            s2[i] += x * x;
                        }
                    }
                });
                for i in 0..n {
                    s[i] += s1[i];
                    q[i] += s2[i];
                }
            });
        if let Some(gram) = &mut self.gram {
            if let Gram::Host(g) = gram {
                *gram = Gram::HostUpper(std::mem::take(g));
            }
            if let Gram::HostUpper(g) = gram {
                add_gram_upper(g, a, rows, w, self.gram_kernel);
            }
        }
    }

    /// Completes the Gram matrix after the last `add` (mirrors its block-upper sums into the
    /// lower triangle: the same f64 sums that adding each slab to both halves gives, bit for
    /// bit, since both halves receive the same f32 products in the same order).
    pub fn finish(&mut self) {
        if let Some(gram) = &mut self.gram {
            if let Gram::HostUpper(g) = gram {
                mirror_lower(g, self.width);
                *gram = Gram::Host(std::mem::take(g));
            }
        }
    }

    /// Adds a batch with per-token weights `wt` [rows]: Σ w·a, Σ w·a², Σ w·a·aᵀ.
    pub fn add_weighted(&mut self, a: &[f32], wt: Option<&[f32]>) {
        match wt {
            None => self.add(a),
            Some(wt) => self.add(&scale_rows(a, wt, self.width)),
        }
    }

    /// Σ w·a_ref·aᵀ, weighted as `add_weighted`.
    pub fn add_cross_weighted(&mut self, a_ref: &[f32], a: &[f32], wt: Option<&[f32]>) {
        match wt {
            None => self.add_cross(a_ref, a),
            Some(wt) => {
                let w = self.width;
                self.add_cross(&scale_rows(a_ref, wt, w), &scale_rows(a, wt, w))
            }
        }
    }

    /// Adds Σ a_ref·aᵀ for the sequential re-fit.
    pub fn add_cross(&mut self, a_ref: &[f32], a: &[f32]) {
        let w = self.width;
        let rows = a.len() / w;
        assert_eq!(a_ref.len(), a.len());
        if let Some(c) = &mut self.cross {
            add_gram(c, a_ref, a, rows, w);
        }
    }

    pub fn mean_sq(&self) -> Vec<f64> {
        self.sumsq
            .iter()
            .map(|&s| s / self.count.max(1) as f64)
            .collect()
    }
}

/// Rows of `a` [rows, w] times sqrt(wt[row]), so that Gram sums carry the weight once.
fn scale_rows(a: &[f32], wt: &[f32], w: usize) -> Vec<f32> {
    assert_eq!(a.len(), wt.len() * w, "one weight per row");
    let mut out = a.to_vec();
    out.par_chunks_mut(w).zip(wt).for_each(|(row, &t)| {
        let s = t.sqrt();
        crate::cpu::wide::wide(|| row.iter_mut().for_each(|x| *x *= s));
    });
    out
}

/// How calibration tokens are weighed in the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWeight {
    /// Every token counts the same: the down_proj output error itself.
    Uniform,
    /// 1/ms(y_t), y_t the down_proj output: the post-FFN RMSNorm divides each token's MLP output
    /// by its RMS, so an error on a token with a small output is amplified by that much.
    Out,
    /// 1/(ms(y_t)·ms(x_t)), x_t the residual entering the MLP: the error is also diluted by the
    /// residual it is added to.
    OutResid,
    /// 1/ms(x_t + y_t): the residual after the MLP's add, which the next layer's input norm
    /// divides by its RMS. For families without a post-FFN norm (the Llama family), where the
    /// MLP output enters the residual stream unnormalised.
    NextNorm,
}

impl TokenWeight {
    pub fn name(self) -> &'static str {
        match self {
            TokenWeight::Uniform => "uniform",
            TokenWeight::Out => "out",
            TokenWeight::OutResid => "out-resid",
            TokenWeight::NextNorm => "next-norm",
        }
    }

    /// The default for `cfg`'s family: `Out` where a post-FFN norm divides the MLP output by
    /// its RMS (Gemma, measured best there), `NextNorm` where the output joins the residual
    /// stream as it is (the Llama family; the README's weighting table).
    pub fn default_for(cfg: &crate::checkpoint::config::ModelConfig) -> TokenWeight {
        if cfg.norms.post_mlp.is_some() {
            TokenWeight::Out
        } else {
            TokenWeight::NextNorm
        }
    }

    /// Whether `weights` reads the residual entering the MLP.
    pub fn needs_resid(self) -> bool {
        matches!(self, TokenWeight::OutResid | TokenWeight::NextNorm)
    }

    pub fn parse(s: &str) -> Result<TokenWeight> {
        match s {
            "uniform" => Ok(TokenWeight::Uniform),
            "out" => Ok(TokenWeight::Out),
            "out-resid" => Ok(TokenWeight::OutResid),
            "next-norm" => Ok(TokenWeight::NextNorm),
            other => Err(Error::Arg {
                flag: "--token-weight",
                msg: format!(
                    "unknown token weighting \"{other}\"; choose uniform, out, out-resid or \
                     next-norm"
                ),
            }),
        }
    }

    /// Per-row weights for MLP outputs `out` [rows, H] entering the residual `resid` [rows, H]
    /// (needed where `needs_resid`); `None` for `Uniform`.
    pub fn weights(
        self,
        out: &[f32],
        resid: Option<&[f32]>,
        hd: usize,
        eps: f32,
    ) -> Option<Vec<f32>> {
        let ms =
            |row: &[f32]| row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / hd as f64;
        match self {
            TokenWeight::Uniform => None,
            TokenWeight::Out => Some(
                out.par_chunks(hd)
                    .map(|r| (1.0 / (ms(r) + eps as f64)) as f32)
                    .collect(),
            ),
            TokenWeight::OutResid => {
                let resid = resid.expect("OutResid needs the residual");
                Some(
                    out.par_chunks(hd)
                        .zip(resid.par_chunks(hd))
                        .map(|(o, x)| (1.0 / ((ms(o) + eps as f64) * (ms(x) + eps as f64))) as f32)
                        .collect(),
                )
            }
            TokenWeight::NextNorm => {
                let resid = resid.expect("NextNorm needs the residual");
                Some(
                    out.par_chunks(hd)
                        .zip(resid.par_chunks(hd))
                        .map(|(o, x)| {
                            let ms = o
                                .iter()
                                .zip(x)
                                .map(|(&o, &x)| ((o + x) as f64).powi(2))
                                .sum::<f64>()
                                / hd as f64;
                            (1.0 / (ms + eps as f64)) as f32
                        })
                        .collect(),
                )
            }
        }
    }
}

/// `acc[I, I] += xᵀ·y` for x, y [rows, I]: one f32 GEMM per ≤ 2048-row slab, added in f64.
fn add_gram(acc: &mut [f64], x: &[f32], y: &[f32], rows: usize, w: usize) {
    const SLAB: usize = 2048;
    let mut tmp = vec![0f32; w * w];
    for r0 in (0..rows).step_by(SLAB) {
        let m = (r0 + SLAB).min(rows) - r0;
        let (xs, ys) = (&x[r0 * w..(r0 + m) * w], &y[r0 * w..(r0 + m) * w]);
        matmul_tn(&mut tmp, xs, ys, m, w, w, false);
        acc.par_chunks_mut(1 << 14)
            .zip(tmp.par_chunks(1 << 14))
            .for_each(|(a, t)| a.iter_mut().zip(t).for_each(|(a, &t)| *a += t as f64));
    }
}

/// Row blocks of `add_gram_upper`: small enough that the skipped lower triangle is most of the
/// lower half (8 blocks at I = 2048: 56% of the full product's FLOPs), large enough for the GEMM.
const GRAM_BLOCK: usize = 256;

/// `acc[I, I] += xᵀ·x` for x [rows, I] on and above the block diagonal only (one GEMM per block
/// row, per ≤ 2048-row slab): about half the FLOPs of `add_gram(acc, x, x, ..)`, which it
/// matches there up to f32 summation order; [`mirror_lower`] completes it. With a bf16 `kernel`
/// the products are of x rounded to bf16 (`bf16::gram_upper`), summed in f32 per slab.
fn add_gram_upper(
    acc: &mut [f64],
    x: &[f32],
    rows: usize,
    w: usize,
    kernel: Option<crate::cpu::bf16::Kernel>,
) {
    const SLAB: usize = 2048;
    let mut tmp = vec![0f32; w * w]; // [w, w]; only block-upper entries are written
    for r0 in (0..rows).step_by(SLAB) {
        let m = (r0 + SLAB).min(rows) - r0;
        if let Some(kernel) = kernel {
            let xs = &x[r0 * w..(r0 + m) * w];
            crate::cpu::bf16::gram_upper(kernel, xs, m, w, GRAM_BLOCK, &mut tmp, w);
        } else {
            for b0 in (0..w).step_by(GRAM_BLOCK) {
                let bm = GRAM_BLOCK.min(w - b0);
                // Columns b0.. of rows r0.. of x: xᵀ reads columns b0..b0+bm, y columns b0..w;
                // dst is rows b0..b0+bm, columns b0..w of tmp [w, w].
                let xb = &x[r0 * w + b0..];
                gemm_tn_strided(
                    xb,
                    w,
                    xb,
                    w,
                    &mut tmp[b0 * w + b0..],
                    w,
                    bm,
                    w - b0,
                    m,
                    false,
                    true,
                );
            }
        }
        let tmp = &tmp;
        acc.par_chunks_mut(w).enumerate().for_each(|(i, row)| {
            let start = i / GRAM_BLOCK * GRAM_BLOCK;
            crate::cpu::wide::wide(|| {
                for (a, &t) in row[start..]
                    .iter_mut()
                    .zip(&tmp[i * w + start..(i + 1) * w])
                {
                    *a += t as f64;
                }
            })
        });
    }
}

/// The entries of acc [w, w] below the block diagonal copied from their mirror images above it,
/// a TILE × TILE square at a time (a column alone strides through all of acc).
fn mirror_lower(acc: &mut [f64], w: usize) {
    const TILE: usize = 32; // divides GRAM_BLOCK: a tile's rows share `start`
    let upper = acc.to_vec(); // [w, w] read-only copy: rows write only their own lower part
    acc.par_chunks_mut(TILE * w)
        .enumerate()
        .for_each(|(bi, rows_acc)| {
            let i0 = bi * TILE;
            let start = i0 / GRAM_BLOCK * GRAM_BLOCK;
            for j0 in (0..start).step_by(TILE) {
                let j1 = (j0 + TILE).min(start);
                for (r, row) in rows_acc.chunks_exact_mut(w).enumerate() {
                    let i = i0 + r;
                    for j in j0..j1 {
                        row[j] = upper[j * w + i];
                    }
                }
            }
        });
}

/// `acc += xᵀ·x` whole: [`add_gram_upper`] then [`mirror_lower`] (what `MlpStats` gives after
/// `finish`). Exact only for an acc whose lower triangle mirrors its upper one.
#[cfg(test)]
fn add_gram_sym(
    acc: &mut [f64],
    x: &[f32],
    rows: usize,
    w: usize,
    kernel: Option<crate::cpu::bf16::Kernel>,
) {
    add_gram_upper(acc, x, rows, w, kernel);
    mirror_lower(acc, w);
}

/// What the statistics of one layer hold (`Backend::begin_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSpec {
    /// MLP width I of the layer being measured.
    pub width: usize,
    /// Accumulate the Gram matrix Σ w·a·aᵀ.
    pub gram: bool,
    /// Accumulate the cross matrix Σ w·a_ref·aᵀ against the activations of the last
    /// `Capture::Reference` call on the same rows.
    pub cross: bool,
    pub token_weight: TokenWeight,
    /// A GPU backend may leave the Gram matrix on its device (`MlpStats::gram_device`, `gram`
    /// then None) instead of downloading it: for a consumer that solves on that device.
    pub gram_on_device: bool,
    /// Keep each `Capture::Stats` batch's down_proj input for `run_pruned_mlp` (backends that
    /// can: `Backend::kept_activation_bytes`).
    pub keep_acts: bool,
}

/// What one `run_mlp` call records about its down_proj input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Nothing: the layer only runs.
    None,
    /// Adds this batch to the statistics opened by `begin_stats`.
    Stats,
    /// Keeps this batch's activations as the reference the next `Stats` call pairs with in the
    /// cross matrix (the original model's stream for `--refit-target original`).
    Reference,
}

/// Which hidden-state stream a call works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The model being pruned (layers < l already pruned with `--sequential`).
    Pruned,
    /// The original model's stream beside it (`--refit-target original` only).
    Reference,
}

/// How the calibration sequences are cut into batches: `sizes[b]` sequences in batch b.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub seq_len: usize,
    pub sizes: Vec<usize>,
}

impl Layout {
    pub fn new(n_seq: usize, seq_len: usize, batch_seqs: usize) -> Layout {
        let bs = batch_seqs.max(1);
        Layout {
            seq_len,
            sizes: (0..n_seq)
                .step_by(bs)
                .map(|s0| bs.min(n_seq - s0))
                .collect(),
        }
    }

    pub fn batch(&self, b: usize) -> Batch {
        Batch {
            n_seq: self.sizes[b],
            seq_len: self.seq_len,
        }
    }

    /// The token range of batch `b` in the flat id list.
    pub fn tokens(&self, b: usize) -> std::ops::Range<usize> {
        let s0: usize = self.sizes[..b].iter().sum();
        s0 * self.seq_len..(s0 + self.sizes[b]) * self.seq_len
    }
}

/// Runs decoder layers over the calibration tokens and accumulates the MLP statistics. The
/// backend owns the hidden states between layers (`start` … `finish`), one buffer per batch of
/// sequences, so a GPU backend keeps them on the device (`cpu::calib::CpuBackend`,
/// `cuda::backend::CudaBackend`).
pub trait Backend {
    fn name(&self) -> String;

    /// The GPU kernels the hot ops chose (compile report; `None` on the CPU).
    fn kernels(&self, _cfg: &ModelConfig) -> Option<String> {
        None
    }

    /// Bytes of one hidden-state value in this backend's calibration streams (the CPU holds f32).
    fn stream_elem_bytes(&self) -> usize {
        4
    }

    /// Where scoring and repair solve their f64 linear algebra for this backend (the host unless
    /// the backend has a GPU).
    fn solver(&self) -> crate::cpu::linalg::Solver {
        crate::cpu::linalg::Solver::Cpu
    }

    /// The input of layer 0 for `ids`: the scaled embedding rows [rows, H], rounded the way this
    /// backend's forward pass rounds them (the CPU: f32 `e·sqrt(H)`).
    fn embed(&mut self, cfg: &ModelConfig, store: &WeightStore, ids: &[u32]) -> Result<Vec<f32>> {
        embed_from_store(cfg, store, ids)
    }

    /// Embeds the calibration `ids` ([n_seq·seq_len], cut as `layout` says) into the pruned
    /// stream, and into the reference stream too when `reference` is set.
    fn start(
        &mut self,
        cfg: &ModelConfig,
        store: &WeightStore,
        ids: &[u32],
        layout: Layout,
        reference: bool,
    ) -> Result<()>;

    /// Frees the streams.
    fn finish(&mut self);

    /// The hidden states of batch `b` of stream `s` as f32 [rows, H] (a copy).
    fn hidden(&self, s: Stream, b: usize) -> Result<Vec<f32>>;

    /// Layer `l` in this backend's form, for the run calls below. `host` is the layer as the
    /// caller loaded it in f32: the CPU computes from it; a GPU backend uploads the checkpoint's
    /// own tensors from `store` instead (bf16 bits as stored).
    fn load_layer<'w>(
        &mut self,
        _cfg: &ModelConfig,
        _store: &WeightStore,
        _l: usize,
        host: &'w Layer<Vec<f32>>,
    ) -> Result<EngineLayer<'w>> {
        Ok(EngineLayer::Host(host.view()))
    }

    /// The MLP half of `layer` with `mlp`'s matrices (`prune::slice_mlp`: gate, up and down at
    /// the pruned width `mlp.width`), for `run_mlp`.
    fn load_pruned<'w>(
        &mut self,
        _cfg: &ModelConfig,
        layer: &'w Layer<Vec<f32>>,
        mlp: &'w Layer<Vec<f32>>,
    ) -> Result<EngineLayer<'w>> {
        let half = layer.view().only(|t| t.half() == Half::Mlp);
        Ok(EngineLayer::Host(half.overlay(mlp.view())))
    }

    /// The attention half of layer `l` on batch `b` of stream `s`, in place.
    fn run_attention(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
    ) -> Result<()>;

    /// The MLP half of layer `l` on batch `b` of stream `s`, recording what `capture` asks for;
    /// the result replaces the batch's hidden states only when `write` is set.
    #[allow(clippy::too_many_arguments)]
    fn run_mlp(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
        capture: Capture,
        write: bool,
    ) -> Result<()>;

    /// Bytes a value of the activations this backend keeps from a statistics pass
    /// (`StatsSpec::keep_acts`) for `run_pruned_mlp` ([rows, I] of every batch); 0 when it
    /// keeps none.
    fn kept_activation_bytes(&self) -> usize {
        0
    }

    /// The pruned MLP `wp` (layer `l` cut to the neurons `kept`) on batch `b` of the pruned
    /// stream, in place. A backend that kept the batch's activations from the statistics pass
    /// on the same hidden states gathers the kept columns for down_proj instead of running gate
    /// and up again (the same values: `cpu::model::mlp_act`) and frees them; otherwise it runs
    /// the MLP.
    fn run_pruned_mlp(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        wp: &EngineLayer<'_>,
        _kept: &[usize],
        b: usize,
    ) -> Result<()> {
        self.run_mlp(cfg, l, wp, Stream::Pruned, b, Capture::None, true)
    }

    /// A whole layer, in place.
    fn run_layer(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
        capture: Capture,
    ) -> Result<()> {
        self.run_attention(cfg, l, w, s, b)?;
        self.run_mlp(cfg, l, w, s, b, capture, true)
    }

    /// Opens empty statistics for the next `Capture::Stats` calls (replacing any open ones).
    fn begin_stats(&mut self, spec: StatsSpec) -> Result<()>;

    /// The statistics accumulated since `begin_stats`, closing them.
    fn take_stats(&mut self) -> Result<MlpStats>;
}

/// Per-batch hidden states of the two streams, for backends that keep them in some buffer type.
pub(crate) struct Streams<T> {
    pub(crate) layout: Layout,
    pub(crate) pruned: Vec<T>,
    pub(crate) reference: Vec<T>,
}

impl<T> Streams<T> {
    pub(crate) fn get(&self, s: Stream, b: usize) -> Result<&T> {
        let v = match s {
            Stream::Pruned => &self.pruned,
            Stream::Reference => &self.reference,
        };
        v.get(b).ok_or_else(|| stream_err(s, b, v.len()))
    }

    pub(crate) fn get_mut(&mut self, s: Stream, b: usize) -> Result<&mut T> {
        let v = match s {
            Stream::Pruned => &mut self.pruned,
            Stream::Reference => &mut self.reference,
        };
        let n = v.len();
        v.get_mut(b).ok_or_else(|| stream_err(s, b, n))
    }
}

fn stream_err(s: Stream, b: usize, n: usize) -> Error {
    Error::Other(format!(
        "calibration batch {b} of the {s:?} stream does not exist ({n} batches; call start first)"
    ))
}

/// `streams` unwrapped, or the error saying `start` was not called.
pub(crate) fn started<T>(streams: &Option<Streams<T>>) -> Result<&Streams<T>> {
    streams
        .as_ref()
        .ok_or_else(|| Error::Other("calibration streams used before start".into()))
}

pub(crate) fn started_mut<T>(streams: &mut Option<Streams<T>>) -> Result<&mut Streams<T>> {
    streams
        .as_mut()
        .ok_or_else(|| Error::Other("calibration streams used before start".into()))
}

/// The statistics being accumulated, as a backend holds them on the host.
pub(crate) struct HostCapture {
    pub(crate) spec: StatsSpec,
    pub(crate) stats: MlpStats,
    reference: Vec<f32>, // [rows, I] of the last Capture::Reference call
}

impl HostCapture {
    /// The statistics, completed ([`MlpStats::finish`]).
    pub(crate) fn into_stats(self) -> MlpStats {
        let mut stats = self.stats;
        stats.finish();
        stats
    }

    pub(crate) fn new(spec: StatsSpec) -> HostCapture {
        HostCapture {
            spec,
            stats: MlpStats::new(spec.width, spec.gram, spec.cross),
            reference: Vec::new(),
        }
    }

    /// One MLP call's down_proj input `act` [rows, I] and output `out` [rows, H] (before the
    /// post-FFN norm), its input residual `resid` [rows, H] when the weighting needs it.
    pub(crate) fn record(
        &mut self,
        capture: Capture,
        act: &[f32],
        out: &[f32],
        resid: Option<&[f32]>,
        hd: usize,
        eps: f32,
    ) -> Result<()> {
        match capture {
            Capture::None => {}
            Capture::Reference => self.reference = act.to_vec(),
            Capture::Stats => {
                let wt = self.spec.token_weight.weights(out, resid, hd, eps);
                self.stats.add_weighted(act, wt.as_deref());
                if self.spec.cross {
                    if self.reference.len() != act.len() {
                        return Err(Error::Other(
                            "cross statistics need a Capture::Reference call on the same rows"
                                .into(),
                        ));
                    }
                    let r = std::mem::take(&mut self.reference);
                    self.stats.add_cross_weighted(&r, act, wt.as_deref());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_weights_are_inverse_mean_squares() {
        let hd = 4;
        let out = [1.0f32, -1.0, 1.0, -1.0, 2.0, 0.0, 0.0, 0.0]; // ms 1 and 1
        let resid = [3.0f32, 3.0, 3.0, 3.0, 0.5, 0.5, 0.5, 0.5]; // ms 9 and 0.25
        assert!(TokenWeight::Uniform.weights(&out, None, hd, 0.0).is_none());
        let w = TokenWeight::Out.weights(&out, None, hd, 0.0).unwrap();
        assert_eq!(w, vec![1.0, 1.0]);
        let w = TokenWeight::OutResid
            .weights(&out, Some(&resid), hd, 0.0)
            .unwrap();
        assert!(
            (w[0] - 1.0 / 9.0).abs() < 1e-7 && (w[1] - 4.0).abs() < 1e-6,
            "{w:?}"
        );
        // next-norm: the residual after the add, rows [4, 2, 4, 2] (ms 10) and [2.5, .5, .5, .5]
        // (ms 1.75).
        let w = TokenWeight::NextNorm
            .weights(&out, Some(&resid), hd, 0.0)
            .unwrap();
        assert!(
            (w[0] - 0.1).abs() < 1e-7 && (w[1] - 1.0 / 1.75).abs() < 1e-6,
            "{w:?}"
        );
        // eps keeps an all-zero output finite.
        let w = TokenWeight::Out.weights(&[0.0; 4], None, hd, 1e-6).unwrap();
        assert!((w[0] - 1e6).abs() < 1.0, "{w:?}");
    }

    #[test]
    fn block_triangle_gram_equals_the_full_product() {
        // Ragged blocks (w not a multiple of GRAM_BLOCK), w below one block, several slabs.
        for (rows, w) in [(2500usize, 300usize), (37, 5), (4100, 2 * GRAM_BLOCK + 1)] {
            let x: Vec<f32> = (0..rows * w)
                .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 11) as f32))
                .collect();
            let (mut full, mut sym) = (vec![0.5f64; w * w], vec![0.5f64; w * w]);
            add_gram(&mut full, &x, &x, rows, w);
            add_gram_sym(&mut sym, &x, rows, w, None);
            for i in 0..w {
                for j in 0..w {
                    let (a, b) = (full[i * w + j], sym[i * w + j]);
                    // Both sum the same f32 products; only the order may differ.
                    assert!(
                        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                        "rows {rows} w {w}: ({i}, {j}) {b} vs {a}"
                    );
                    assert_eq!(sym[i * w + j], sym[j * w + i], "symmetric at ({i}, {j})");
                }
            }
        }
    }

    /// With a bf16 kernel: every entry within f32 summation's bound of an f64 Gram of the
    /// bf16-rounded inputs (the products are exact in f32), symmetric, and the same bits for
    /// one thread and two.
    #[test]
    fn bf16_block_triangle_gram_is_the_gram_of_rounded_inputs() {
        use crate::cpu::bf16::Kernel;
        let kernels = Kernel::supported();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU has no bf16 kernel");
            return;
        }
        for kernel in kernels {
            for (rows, w) in [(2500usize, 300usize), (37, 5), (4100, 2 * GRAM_BLOCK + 1)] {
                let x: Vec<f32> = (0..rows * w)
                    .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i % 11) as f32))
                    .collect();
                let r: Vec<f64> = x
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f64())
                    .collect();
                let mut got = vec![0.5f64; w * w];
                add_gram_sym(&mut got, &x, rows, w, Some(kernel));
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let mut one = vec![0.5f64; w * w];
                pool.install(|| add_gram_sym(&mut one, &x, rows, w, Some(kernel)));
                assert!(got == one, "thread count changed the bf16 Gram");
                // Slabs of ≤ 2048 rows summed in f32: γ₂₀₄₈·Σ|products| bounds each slab.
                let gamma =
                    2048.0 * f32::EPSILON as f64 / 2.0 / (1.0 - 1024.0 * f32::EPSILON as f64);
                for i in 0..w {
                    for j in i..w {
                        let (mut want, mut abs) = (0.5f64, 0f64);
                        for t in 0..rows {
                            let p = r[t * w + i] * r[t * w + j];
                            want += p;
                            abs += p.abs();
                        }
                        let g = got[i * w + j];
                        assert!(
                            (g - want).abs() <= gamma * abs + 1e-12,
                            "{} rows {rows} w {w}: ({i}, {j}) {g} vs {want}",
                            kernel.name()
                        );
                        assert_eq!(g, got[j * w + i], "symmetric at ({i}, {j})");
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_statistics_are_sums_of_weighted_products() {
        let (rows, width) = (5, 3);
        let a: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.7).sin()).collect();
        let b: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.3).cos()).collect();
        let wt = [0.5f32, 2.0, 1.0, 4.0, 0.25];
        let mut s = MlpStats::new(width, true, true);
        s.add_weighted(&a, Some(&wt));
        s.add_cross_weighted(&b, &a, Some(&wt));
        assert!(
            s.gram_host().is_none(),
            "an unfinished Gram is not readable"
        );
        s.finish();
        let (g, c) = (s.gram_host().unwrap(), s.cross.as_ref().unwrap());
        for i in 0..width {
            let want_sq: f64 = (0..rows)
                .map(|r| wt[r] as f64 * (a[r * width + i] as f64).powi(2))
                .sum();
            assert!((s.sumsq[i] - want_sq).abs() < 1e-5, "Σw·a² {i}");
            for j in 0..width {
                let want_g: f64 = (0..rows)
                    .map(|r| wt[r] as f64 * a[r * width + i] as f64 * a[r * width + j] as f64)
                    .sum();
                let want_c: f64 = (0..rows)
                    .map(|r| wt[r] as f64 * b[r * width + i] as f64 * a[r * width + j] as f64)
                    .sum();
                assert!((g[i * width + j] - want_g).abs() < 1e-5, "Gram ({i},{j})");
                assert!((c[i * width + j] - want_c).abs() < 1e-5, "cross ({i},{j})");
            }
        }
        assert_eq!(s.count, rows as u64);
    }
}
