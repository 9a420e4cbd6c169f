//! One decoder layer's tensors, whatever holds them: the one layer type of every engine.
//!
//! `Layer<M, V>` has a slot per `registry::LayerTensor` — matrices (`Kind::Matrix`) stored as `M`,
//! vectors (norm weights, `Kind::Vector`) as `V` — built from the registry's list, so a model
//! family with other tensors adds registry entries, not structs. A slot is empty when the
//! architecture lacks the tensor (q/k norms before Gemma-3, biases and post-norms outside their
//! families) or when a layer holds only part of itself (the pruned MLP half that `--sequential`
//! re-runs).
//!
//! The storages in use:
//! - `Layer<Vec<f32>>`: f32 as loaded (compile's scoring, the CPU model of an F32 checkpoint);
//! - `Layer<&[f32]>`: a borrowed view, what the CPU blocks compute from (`view`, `overlay`);
//! - `Layer<Table, Vec<f32>>`: the CPU `Model`'s held layer (bf16 bits or f32 matrices);
//! - `Layer<Vec<bf16>, Vec<f32>>` and `Layer<DTensor<bf16>, DTensor<f32>>`: the GPU engine's
//!   host copy and device weights.
//!
//! Loading, widening, uploading and slicing are each one `build` / `map` / `try_map`.

use crate::checkpoint::config::ModelConfig;
use crate::checkpoint::registry::{layer_has, Kind, LayerTensor};

const N: usize = LayerTensor::ALL.len();

/// One decoder layer's tensors in HF `[out, in]` layout (shapes on the accessors below).
#[derive(Clone)]
pub struct Layer<M, V = M> {
    mats: [Option<M>; N],
    vecs: [Option<V>; N],
    /// MLP width I of this layer (pruning may change it layer by layer while compiling).
    pub width: usize,
}

impl<M, V> Layer<M, V> {
    /// Every tensor `cfg`'s architecture has, from `mat` (matrices) and `vec` (vectors).
    pub fn try_build<E>(
        cfg: &ModelConfig,
        mut mat: impl FnMut(LayerTensor) -> Result<M, E>,
        mut vec: impl FnMut(LayerTensor) -> Result<V, E>,
    ) -> Result<Self, E> {
        let mut w = Layer::empty(cfg.intermediate_size);
        for t in LayerTensor::ALL {
            if layer_has(cfg, t) {
                match t.kind() {
                    Kind::Matrix => w.mats[t.index()] = Some(mat(t)?),
                    Kind::Vector => w.vecs[t.index()] = Some(vec(t)?),
                }
            }
        }
        Ok(w)
    }

    /// A layer of width `width` with every slot empty.
    pub fn empty(width: usize) -> Self {
        Layer {
            mats: std::array::from_fn(|_| None),
            vecs: std::array::from_fn(|_| None),
            width,
        }
    }

    /// Sets the matrix `t` (replacing what was there).
    pub fn set_mat(&mut self, t: LayerTensor, m: M) {
        debug_assert_eq!(t.kind(), Kind::Matrix);
        self.mats[t.index()] = Some(m);
    }

    /// Takes the matrix `t` out, leaving its slot empty.
    pub fn take_mat(&mut self, t: LayerTensor) -> Option<M> {
        self.mats[t.index()].take()
    }

    /// The matrix `t` if held, to write into.
    pub fn mat_mut(&mut self, t: LayerTensor) -> Option<&mut M> {
        self.mats[t.index()].as_mut()
    }

    /// The vector `t` if held, to write into.
    pub fn vec_mut(&mut self, t: LayerTensor) -> Option<&mut V> {
        self.vecs[t.index()].as_mut()
    }

    /// The matrix `t` if held.
    pub fn mat_opt(&self, t: LayerTensor) -> Option<&M> {
        self.mats[t.index()].as_ref()
    }

    /// The vector `t` if held.
    pub fn vec_opt(&self, t: LayerTensor) -> Option<&V> {
        self.vecs[t.index()].as_ref()
    }

    /// The matrix `t`. Every engine loads the tensors its blocks read, so a missing one is a bug
    /// in the caller, not bad input.
    pub fn mat(&self, t: LayerTensor) -> &M {
        self.mat_opt(t)
            .unwrap_or_else(|| panic!("layer holds no {t:?} matrix"))
    }

    /// The vector `t` (see `mat`).
    pub fn vec(&self, t: LayerTensor) -> &V {
        self.vec_opt(t)
            .unwrap_or_else(|| panic!("layer holds no {t:?} vector"))
    }

    /// The held matrices, in registry order.
    pub fn mats(&self) -> impl Iterator<Item = (LayerTensor, &M)> {
        LayerTensor::ALL
            .into_iter()
            .filter_map(|t| self.mat_opt(t).map(|m| (t, m)))
    }

    /// The held vectors, in registry order.
    pub fn vecs(&self) -> impl Iterator<Item = (LayerTensor, &V)> {
        LayerTensor::ALL
            .into_iter()
            .filter_map(|t| self.vec_opt(t).map(|v| (t, v)))
    }

    /// Borrows every slot.
    pub fn as_ref(&self) -> Layer<&M, &V> {
        Layer {
            mats: std::array::from_fn(|i| self.mats[i].as_ref()),
            vecs: std::array::from_fn(|i| self.vecs[i].as_ref()),
            width: self.width,
        }
    }

    /// Keeps only the tensors `keep` accepts (the others' slots empty).
    pub fn only(mut self, keep: impl Fn(LayerTensor) -> bool) -> Self {
        for t in LayerTensor::ALL {
            if !keep(t) {
                self.mats[t.index()] = None;
                self.vecs[t.index()] = None;
            }
        }
        self
    }

    /// Each held slot replaced by `other`'s where `other` holds one; `other`'s width.
    pub fn overlay(mut self, other: Self) -> Self {
        for (mine, theirs) in self.mats.iter_mut().zip(other.mats) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        for (mine, theirs) in self.vecs.iter_mut().zip(other.vecs) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        self.width = other.width;
        self
    }

    /// Every held slot converted: matrices by `fm`, vectors by `fv`.
    pub fn map<M2, V2>(
        self,
        mut fm: impl FnMut(LayerTensor, M) -> M2,
        mut fv: impl FnMut(LayerTensor, V) -> V2,
    ) -> Layer<M2, V2> {
        let r: Result<_, std::convert::Infallible> =
            self.try_map(|t, m| Ok(fm(t, m)), |t, v| Ok(fv(t, v)));
        match r {
            Ok(w) => w,
            Err(e) => match e {},
        }
    }

    /// `map` with conversions that can fail (uploads, reads).
    pub fn try_map<M2, V2, E>(
        self,
        mut fm: impl FnMut(LayerTensor, M) -> Result<M2, E>,
        mut fv: impl FnMut(LayerTensor, V) -> Result<V2, E>,
    ) -> Result<Layer<M2, V2>, E> {
        let mut out = Layer::empty(self.width);
        for ((t, m), v) in LayerTensor::ALL.into_iter().zip(self.mats).zip(self.vecs) {
            if let Some(m) = m {
                out.mats[t.index()] = Some(fm(t, m)?);
            }
            if let Some(v) = v {
                out.vecs[t.index()] = Some(fv(t, v)?);
            }
        }
        Ok(out)
    }

    pub fn input_norm(&self) -> &V {
        self.vec(LayerTensor::InputNorm) // [H]
    }
    pub fn q(&self) -> &M {
        self.mat(LayerTensor::Q) // [nh·d, H]
    }
    pub fn k(&self) -> &M {
        self.mat(LayerTensor::K) // [nkv·d, H]
    }
    pub fn v(&self) -> &M {
        self.mat(LayerTensor::V) // [nkv·d, H]
    }
    pub fn o(&self) -> &M {
        self.mat(LayerTensor::O) // [H, nh·d]
    }
    /// The per-head query norm (Gemma-3, Qwen3), None without qk_norm.
    pub fn q_norm(&self) -> Option<&V> {
        self.vec_opt(LayerTensor::QNorm) // [d]
    }
    /// The per-head key norm (Gemma-3, Qwen3), None without qk_norm.
    pub fn k_norm(&self) -> Option<&V> {
        self.vec_opt(LayerTensor::KNorm) // [d]
    }
    /// q/k/v projection biases (Qwen2), None where the projections have none.
    pub fn qkv_bias(&self) -> Option<(&V, &V, &V)> {
        Some((
            self.vec_opt(LayerTensor::QBias)?, // [nh·d]
            self.vec_opt(LayerTensor::KBias)?, // [nkv·d]
            self.vec_opt(LayerTensor::VBias)?, // [nkv·d]
        ))
    }
    /// o_proj's bias, None where it has none.
    pub fn o_bias(&self) -> Option<&V> {
        self.vec_opt(LayerTensor::OBias) // [H]
    }
    /// Gemma's norm of the attention output, None in the Llama family.
    pub fn post_attn_norm(&self) -> Option<&V> {
        self.vec_opt(LayerTensor::PostAttnNorm) // [H]
    }
    pub fn pre_ffn_norm(&self) -> &V {
        self.vec(LayerTensor::PreFfnNorm) // [H]
    }
    pub fn gate(&self) -> &M {
        self.mat(LayerTensor::Gate) // [I, H]
    }
    pub fn up(&self) -> &M {
        self.mat(LayerTensor::Up) // [I, H]
    }
    pub fn down(&self) -> &M {
        self.mat(LayerTensor::Down) // [H, I]
    }
    /// Gemma's norm of the MLP output, None in the Llama family (the MLP output then enters the
    /// residual stream as it is).
    pub fn post_ffn_norm(&self) -> Option<&V> {
        self.vec_opt(LayerTensor::PostFfnNorm) // [H]
    }
}

impl<S> Layer<S, S> {
    /// Every held slot converted by one function (matrices and vectors stored alike).
    pub fn map_all<T>(self, mut f: impl FnMut(LayerTensor, S) -> T) -> Layer<T, T> {
        let r: Result<_, std::convert::Infallible> = self.try_map_all(|t, x| Ok(f(t, x)));
        match r {
            Ok(w) => w,
            Err(e) => match e {},
        }
    }

    /// `map_all` with a conversion that can fail.
    pub fn try_map_all<T, E>(
        self,
        f: impl FnMut(LayerTensor, S) -> Result<T, E>,
    ) -> Result<Layer<T, T>, E> {
        let f = std::cell::RefCell::new(f);
        self.try_map(|t, m| f.borrow_mut()(t, m), |t, v| f.borrow_mut()(t, v))
    }

    /// Every held tensor, matrices and vectors, in registry order.
    pub fn tensors(&self) -> impl Iterator<Item = (LayerTensor, &S)> {
        LayerTensor::ALL
            .into_iter()
            .filter_map(|t| self.mat_opt(t).or_else(|| self.vec_opt(t)).map(|x| (t, x)))
    }
}

impl Layer<Vec<f32>> {
    /// A borrowed view: what the CPU blocks compute from.
    pub fn view(&self) -> Layer<&[f32]> {
        self.as_ref().map_all(|_, x| &x[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::registry::Half;

    #[test]
    fn slots_follow_the_registry_order() {
        for (i, t) in LayerTensor::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
    }

    #[test]
    fn only_and_overlay_swap_one_half() {
        let mut full: Layer<u8> = Layer::empty(4);
        for t in LayerTensor::ALL {
            match t.kind() {
                Kind::Matrix => full.mats[t.index()] = Some(1),
                Kind::Vector => full.vecs[t.index()] = Some(1),
            }
        }
        let mlp = full
            .clone()
            .map_all(|_, _| 2u8)
            .only(|t| t.half() == Half::Mlp);
        let mut half = mlp.clone();
        half.width = 2;
        let both = full.overlay(half);
        assert_eq!(both.width, 2);
        for (t, &x) in both.tensors() {
            assert_eq!(x, if t.half() == Half::Mlp { 2 } else { 1 }, "{t:?}");
        }
        assert_eq!(mlp.tensors().count(), 5);
    }
}
