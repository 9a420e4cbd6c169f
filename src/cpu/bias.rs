//! Bias vectors of `nn.Linear` layers (Qwen2's q/k/v projections, Llama's with
//! `attention_bias`): added to every row after the bias-free GEMM.

use rayon::prelude::*;

/// `x[r, j] += b[j]` for every row r of `x` ([rows, b.len()]).
pub fn add_bias_rows(x: &mut [f32], b: &[f32]) {
    let n = b.len();
    assert!(
        n > 0 && x.len() % n == 0,
        "add_bias_rows: x is not [rows, {n}]"
    );
    let rows_per_task = ((1 << 14) / n).max(1);
    x.par_chunks_mut(n * rows_per_task).for_each(|rows| {
        for row in rows.chunks_exact_mut(n) {
            for (v, &c) in row.iter_mut().zip(b) {
                *v += c;
            }
        }
    });
}
