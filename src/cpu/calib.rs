//! `CpuBackend`: the calibration `Backend` on the CPU, the reference the CUDA backend
//! (`cuda::backend`) is tested against: f32 hidden states per batch, layers through
//! `cpu::model`'s blocks, statistics accumulated on the host from the MLP observer.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::safetensors::WeightStore;
use crate::cpu::convert::{round_bits, widen};
use crate::cpu::model::{attn_block, mlp_act, mlp_block, mlp_out, RopeCache};
use crate::engine::calib::{
    started, started_mut, Backend, Capture, HostCapture, Layout, MlpStats, StatsSpec, Stream,
    Streams,
};
use crate::engine::{EngineLayer, Event};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The calibration backend on the CPU (f32).
pub struct CpuBackend {
    rope: Option<RopeCache>,
    capture: Option<HostCapture>,
    streams: Option<Streams<Vec<f32>>>, // per batch [rows, H]
    /// Per batch, the pruned stream's down_proj input [rows, I] of the open statistics pass,
    /// when its spec keeps them (`StatsSpec::keep_acts`).
    acts: Vec<Option<Kept>>,
}

/// Kept activations: f32, or their bf16 bits where the bf16 kernel runs down_proj — it rounds
/// its input to bf16 anyway, so the widened bits give it the same input.
#[derive(Clone)]
enum Kept {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl Kept {
    /// Whether activations are kept as bf16 bits now (the bf16 kernel runs down_proj).
    fn as_bf16() -> bool {
        crate::cpu::bf16::active().is_some()
    }

    /// Bytes a kept value takes now.
    fn bytes() -> usize {
        if Self::as_bf16() {
            2
        } else {
            4
        }
    }

    fn new(a: Vec<f32>) -> Kept {
        if Self::as_bf16() {
            Kept::Bf16(a.par_iter().map(|&v| round_bits(v)).collect())
        } else {
            Kept::F32(a)
        }
    }

    fn len(&self) -> usize {
        match self {
            Kept::F32(a) => a.len(),
            Kept::Bf16(a) => a.len(),
        }
    }

    /// Columns `kept` of every row of width `i`: [rows, K] f32.
    fn gather(&self, i: usize, kept: &[usize]) -> Vec<f32> {
        let k = kept.len().max(1);
        let mut out = vec![0f32; self.len() / i.max(1) * kept.len()];
        match self {
            Kept::F32(a) => out
                .par_chunks_mut(k)
                .zip(a.par_chunks(i.max(1)))
                .for_each(|(dst, src)| dst.iter_mut().zip(kept).for_each(|(d, &j)| *d = src[j])),
            Kept::Bf16(a) => {
                out.par_chunks_mut(k)
                    .zip(a.par_chunks(i.max(1)))
                    .for_each(|(dst, src)| {
                        dst.iter_mut()
                            .zip(kept)
                            .for_each(|(d, &j)| *d = widen(src[j]))
                    })
            }
        }
        out
    }
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend {
            rope: None,
            capture: None,
            streams: None,
            acts: Vec::new(),
        }
    }

    /// Batches whose activations are kept for `run_pruned_mlp` now.
    pub fn kept_activation_batches(&self) -> usize {
        self.acts.iter().filter(|a| a.is_some()).count()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn start(
        &mut self,
        cfg: &ModelConfig,
        store: &WeightStore,
        ids: &[u32],
        layout: Layout,
        reference: bool,
    ) -> Result<()> {
        self.streams = None;
        let mut pruned = Vec::with_capacity(layout.sizes.len());
        for b in 0..layout.sizes.len() {
            pruned.push(self.embed(cfg, store, &ids[layout.tokens(b)])?);
        }
        let reference = if reference {
            pruned.clone()
        } else {
            Vec::new()
        };
        self.streams = Some(Streams {
            layout,
            pruned,
            reference,
        });
        Ok(())
    }

    fn finish(&mut self) {
        self.streams = None;
        self.acts.clear();
    }

    fn hidden(&self, s: Stream, b: usize) -> Result<Vec<f32>> {
        Ok(started(&self.streams)?.get(s, b)?.clone())
    }

    fn run_attention(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
    ) -> Result<()> {
        let st = started_mut(&mut self.streams)?;
        let batch = st.layout.batch(b);
        let h = st.get_mut(s, b)?;
        if self.rope.as_ref().map(|r| r.seq_len) != Some(batch.seq_len) {
            self.rope = Some(RopeCache::new(cfg, batch.seq_len));
        }
        let w = w.host("CPU")?;
        attn_block(cfg, l, w, h, batch, self.rope.as_ref().expect("set above"));
        Ok(())
    }

    fn run_mlp(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        w: &EngineLayer<'_>,
        s: Stream,
        b: usize,
        capture: Capture,
        write: bool,
    ) -> Result<()> {
        let w = w.host("CPU")?;
        let st = started_mut(&mut self.streams)?;
        let stored = st.get_mut(s, b)?;
        let mut copy;
        let h: &mut [f32] = if write {
            stored
        } else {
            copy = stored.clone();
            &mut copy
        };
        if capture == Capture::None {
            mlp_block(cfg, l, w, h, &mut None);
            return Ok(());
        }
        let cap = self.capture.as_mut().ok_or_else(|| {
            Error::Other("run_mlp asked for statistics before begin_stats".into())
        })?;
        let resid = cap.spec.token_weight.needs_resid().then(|| h.to_vec()); // [rows, H]
        let keep = cap.spec.keep_acts && capture == Capture::Stats && s == Stream::Pruned;
        let (hd, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let mut res = Ok(());
        let mut obs = |ev: Event<'_>| {
            if let Event::MlpAct { act, out, .. } = ev {
                res = cap.record(capture, act, out, resid.as_deref(), hd, eps);
            }
        };
        let a = mlp_act(cfg, w, h); // [rows, I]
        mlp_out(cfg, l, w, &a, h, &mut Some(&mut obs));
        if keep {
            if self.acts.len() <= b {
                self.acts.resize(b + 1, None);
            }
            self.acts[b] = Some(Kept::new(a));
        }
        res
    }

    fn kept_activation_bytes(&self) -> usize {
        Kept::bytes()
    }

    fn run_pruned_mlp(
        &mut self,
        cfg: &ModelConfig,
        l: usize,
        wp: &EngineLayer<'_>,
        kept: &[usize],
        b: usize,
    ) -> Result<()> {
        let Some(a) = self.acts.get_mut(b).and_then(Option::take) else {
            return self.run_mlp(cfg, l, wp, Stream::Pruned, b, Capture::None, true);
        };
        let w = wp.host("CPU")?;
        let h = started_mut(&mut self.streams)?.get_mut(Stream::Pruned, b)?;
        let rows = h.len() / cfg.hidden_size;
        let i = a.len() / rows.max(1);
        if w.width != kept.len() || a.len() != rows * i || kept.iter().any(|&j| j >= i) {
            return Err(Error::Other(format!(
                "run_pruned_mlp: layer {l}: a pruned MLP of {} neurons, {} kept indices, \
                 {i} activation columns kept",
                w.width,
                kept.len()
            )));
        }
        let ak = a.gather(i, kept); // [rows, K]
        drop(a);
        mlp_out(cfg, l, w, &ak, h, &mut None);
        Ok(())
    }

    fn begin_stats(&mut self, spec: StatsSpec) -> Result<()> {
        self.acts.clear();
        self.capture = Some(HostCapture::new(spec));
        Ok(())
    }

    fn take_stats(&mut self) -> Result<MlpStats> {
        self.capture
            .take()
            .map(HostCapture::into_stats)
            .ok_or_else(|| Error::Other("take_stats without begin_stats".into()))
    }
}
