//! The one comparison helper for tests (CPU vs transformers fixtures, CUDA vs CPU):
//! elementwise `|got - want| <= atol + rtol·|want|`, and relative L2 error per row. Failures
//! report the tensor, the first bad index, both values and the worst error, so a red test says
//! where to look. `assert_*` panic with that report; the others return it.

/// Elementwise check. Non-finite values in `got` always fail.
pub fn allclose(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} vs reference {}",
            got.len(),
            want.len()
        ));
    }
    let mut bad = 0usize;
    let mut first = None;
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        if !g.is_finite() || err > tol {
            bad += 1;
            first.get_or_insert(i);
        }
        if err > worst.1 || !g.is_finite() {
            worst = (i, if g.is_finite() { err } else { f32::INFINITY });
        }
    }
    match first {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: {bad} of {} elements outside atol {atol} + rtol {rtol}·|ref|; first at [{i}]: \
             got {} want {}; worst at [{}]: got {} want {} (|Δ| {})",
            got.len(),
            got[i],
            want[i],
            worst.0,
            got[worst.0],
            want[worst.0],
            worst.1
        )),
    }
}

/// ‖got - want‖ / ‖want‖ in f64.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut r) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let e = g as f64 - w as f64;
        d += e * e;
        r += w as f64 * w as f64;
    }
    if r == 0.0 {
        d.sqrt()
    } else {
        (d / r).sqrt()
    }
}

/// Checks `rel_l2 <= tol` for every row of `row_len` elements (one row = one position).
pub fn rows_rel_l2(
    what: &str,
    got: &[f32],
    want: &[f32],
    row_len: usize,
    tol: f64,
) -> Result<f64, String> {
    if got.len() != want.len() || got.len() % row_len != 0 {
        return Err(format!(
            "{what}: shapes differ ({} vs {} elements, rows of {row_len})",
            got.len(),
            want.len()
        ));
    }
    let mut worst = (0usize, 0f64);
    for (r, (g, w)) in got
        .chunks_exact(row_len)
        .zip(want.chunks_exact(row_len))
        .enumerate()
    {
        let e = rel_l2(g, w);
        if !e.is_finite() || e > worst.1 {
            worst = (r, if e.is_finite() { e } else { f64::INFINITY });
        }
    }
    if worst.1 > tol {
        let r = worst.0;
        let (g, w) = (
            &got[r * row_len..(r + 1) * row_len],
            &want[r * row_len..(r + 1) * row_len],
        );
        let i = (0..row_len)
            .max_by(|&a, &b| (g[a] - w[a]).abs().total_cmp(&(g[b] - w[b]).abs()))
            .unwrap_or(0);
        return Err(format!(
            "{what}: row {r} has ‖Δ‖/‖ref‖ = {:.3e} > {tol:.1e}; largest difference at column {i}: \
             got {} want {}",
            worst.1, g[i], w[i]
        ));
    }
    Ok(worst.1)
}

/// `rel_l2(got, want) <= tol` or panic (any non-finite value in `got` fails first, with its
/// index); prints and returns the error.
pub fn assert_rel_l2(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!(
            "{what}: element {i} is {} (unwritten or overflow); reference {}",
            got[i], want[i]
        );
    }
    let e = rel_l2(got, want);
    assert!(e <= tol, "{what}: ‖Δ‖/‖ref‖ = {e:.3e} > {tol:.1e}");
    eprintln!("{what}: ‖Δ‖/‖ref‖ = {e:.2e}");
    e
}

/// `rows_rel_l2` or panic; prints and returns the worst row error.
pub fn assert_rows_rel_l2(what: &str, got: &[f32], want: &[f32], row_len: usize, tol: f64) -> f64 {
    match rows_rel_l2(what, got, want, row_len, tol) {
        Ok(e) => {
            eprintln!("{what}: worst row ‖Δ‖/‖ref‖ = {e:.2e}");
            e
        }
        Err(e) => panic!("{e}"),
    }
}

/// `|got - want| <= atol + rtol·|want|` everywhere in f64, or panic naming the first index.
pub fn assert_close_f64(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: index {i}: {g} vs {w}"
        );
    }
}
