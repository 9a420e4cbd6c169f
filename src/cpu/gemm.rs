//! The one safe door to the `gemm` crate: strided matrix views whose constructors check that
//! every element they address is in bounds, and `gemm`, which passes the views' sizes and
//! strides through unchanged (so results are bitwise what the raw call gives). The only other
//! raw call is the in-place trailing update of the blocked Cholesky in `cpu::linalg`, whose
//! operands are disjoint regions of one buffer.

pub use gemm::Parallelism;

/// A read-only strided view: element (i, j) at `data[i·rs + j·cs]`, `rows × cols`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A writable strided view (same addressing as [`View`]).
pub struct ViewMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

fn check_bounds(len: usize, rows: usize, cols: usize, rs: usize, cs: usize, what: &str) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(
            last < len,
            "gemm: {what} view [{rows}, {cols}] with strides ({rs}, {cs}) reaches element {last} of {len}"
        );
    }
}

impl<'a, T> View<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check_bounds(data.len(), rows, cols, rs, cs, "input");
        View {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major `[rows, cols]` with row stride `rs`.
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self::new(data, rows, cols, rs, 1)
    }

    /// The transpose of row-major `[cols, rows]` with row stride `rs` (element (i, j) at
    /// `data[j·rs + i]`).
    pub fn transposed(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self::new(data, rows, cols, 1, rs)
    }
}

impl<'a, T> ViewMut<'a, T> {
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        check_bounds(data.len(), rows, cols, rs, cs, "output");
        ViewMut {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major `[rows, cols]` with row stride `rs`.
    pub fn rows(data: &'a mut [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self::new(data, rows, cols, rs, 1)
    }
}

/// `dst = beta·a·b`, or `dst = alpha·dst + beta·a·b` when `alpha` is `Some` (the `gemm` crate's
/// naming: alpha scales the destination, beta the product).
pub fn gemm<T: Copy + Default + 'static>(
    dst: ViewMut<'_, T>,
    a: View<'_, T>,
    b: View<'_, T>,
    alpha: Option<T>,
    beta: T,
    parallelism: Parallelism,
) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm: [{m}, {n}] = [{}, {}]·[{}, {}] does not match",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    let read_dst = alpha.is_some();
    let alpha = alpha.unwrap_or_default();
    // SAFETY: the constructors checked that every element each view addresses is in bounds; `dst`
    // is borrowed mutably, so it cannot overlap `a` or `b`; the shapes agree (asserted above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            read_dst,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
