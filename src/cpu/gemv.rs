//! The CPU GEMV: one row times a weight matrix held as f32 or as bf16 bits, what a decode step
//! runs for every projection (and the bf16-input GEMM's matrix type, `Mat`).

use rayon::prelude::*;

/// Output rows per rayon task (rows of `k` elements; about 128 KiB of weights per task).
fn gemv_rows_per_task(k: usize) -> usize {
    ((32 << 10) / k.max(1)).max(1)
}

/// A weight element the GEMV can widen to f32 exactly: f32 itself, or bf16 bits (`u16`).
pub trait WeightElem: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl WeightElem for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        crate::cpu::convert::widen(self)
    }
}

/// A weight matrix `[n, k]` as a decode step reads it: f32, or the same values as bf16 bits
/// (a BF16 checkpoint's matrices as `Model` holds them, so widening is exact). A
/// step is memory-bound (it streams every weight once per token), so bf16 halves its time; the
/// products and their summation order are the same, so both give bit-identical results.
#[derive(Clone, Copy)]
pub enum Mat<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// `a · b` over 16 lanes (the order every CPU decode dot product uses).
#[inline(always)]
pub fn dot_body<T: WeightElem>(a: &[f32], b: &[T]) -> f32 {
    // 16 independent lanes: LLVM turns the fixed-size accumulator into SIMD registers without
    // needing reassociation of a single running sum.
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..L {
            acc[i] += x[i] * y[i].widen();
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y.widen();
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

#[inline(always)]
fn gemv_rows_body<T: WeightElem>(x: &[f32], w: &[T], k: usize, y: &mut [f32]) {
    for (o, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        *o = dot_body(x, row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemv_rows_avx2<T: WeightElem>(x: &[f32], w: &[T], k: usize, y: &mut [f32]) {
    gemv_rows_body(x, w, k, y)
}

fn gemv_rows<T: WeightElem>(x: &[f32], w: &[T], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { gemv_rows_avx2(x, w, k, y) };
        }
    }
    gemv_rows_body(x, w, k, y)
}

/// `y[n] = w[n, k] · x[k]`: one row of a HF Linear (weights `[out, in]`), parallel over output
/// rows. Memory-bound on real models: it streams `w` once.
pub fn gemv_mat(x: &[f32], w: Mat<'_>, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    match w {
        Mat::F32(w) => gemv_into_t(x, w, k, n, &mut y),
        Mat::Bf16(w) => gemv_into_t(x, w, k, n, &mut y),
    }
    y
}

fn gemv_into_t<T: WeightElem>(x: &[f32], w: &[T], k: usize, n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), k, "gemv: x is not [k={k}]");
    assert_eq!(w.len(), n * k, "gemv: w is not [n={n}, k={k}]");
    assert_eq!(y.len(), n, "gemv: y is not [n={n}]");
    let rpt = gemv_rows_per_task(k);
    if n * k < (1 << 16) || rayon::current_num_threads() == 1 {
        gemv_rows(x, w, k, y);
        return;
    }
    y.par_chunks_mut(rpt)
        .zip(w.par_chunks(rpt * k))
        .for_each(|(ys, ws)| gemv_rows(x, ws, k, ys));
}
