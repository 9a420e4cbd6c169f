//! AMX-BF16 (`tdpbf16ps`, Intel since Sapphire Rapids) under every bf16 product of the CPU
//! engine: [`super::bf16::linear`] (projections, LM head), [`super::bf16::gram_upper`] (the
//! calibration Gram matrix) and [`super::bf16::gemm_serial`] (attention blocks).
//!
//! Arithmetic (Intel SDM, TDPBF16PS; the same in Bochs 3.0's `amx.cc`): one instruction takes a
//! 16-row A tile of 16 k-pairs and a B tile of 16 k-pair rows × 16 columns. For each output it
//! runs two f32 accumulators from +0 over the tile's 16 pairs — one over the even k, one over the
//! odd — each step an FMA (round to nearest even, bf16 denormal inputs read as zero, denormal
//! results flushed to zero), then adds even + odd, then adds that to the output. So a product
//! over kp pairs is summed in 16-pair steps, not in one chain as `vdpbf16ps` sums it, and its
//! bits differ from the AVX-512 BF16 kernel's. [`model`] is this arithmetic in scalar code.
//!
//! Layout: x as bf16 k-pairs row-major, `[m padded to 32][kp padded to 16]` u32
//! ([`AmxRows`]); w as `bf16`'s column panels of NR = 32 with kp padded to 16 (`[kpp][32]`:
//! each panel row is two B tiles' rows side by side). A 32 × 32 output block is four C tiles
//! (tmm0–3) fed by two A tiles (tmm4–5) and two B tiles (tmm6–7) per 16-pair step.
//!
//! Status: checked under `tests/cpu_amx.rs`, which emulates the six AMX instructions in a SIGILL
//! handler on CPUs without AMX (this one, AMD Zen 5); **never run on AMX hardware**, so it is
//! opt-in (`WHITTLE_CPU_AMX=on`) until a machine with AMX has run that test natively and
//! `bench-cpu-bf16.sh` has timed it.

use crate::cpu::convert::{ftz, round_pairs, round_zip, widen_daz};
use crate::cpu::shared_out::SharedOut;
use rayon::prelude::*;
use std::sync::OnceLock;

/// k-pairs per tile row (64 bytes) and rows per tile.
pub const TILE_KP: usize = 16;
pub const TILE_ROWS: usize = 16;
/// Rows of x per output block (two A tiles).
pub const BLOCK_M: usize = 32;
/// Columns per output block: one bf16 panel (two B tiles).
pub const BLOCK_N: usize = 32;

/// Environment variable that opts in to the AMX kernel (`on`) until it has run on AMX hardware.
pub const ENABLE_ENV: &str = "WHITTLE_CPU_AMX";

/// Whether this process may run AMX tiles: the CPU reports AMX-TILE and AMX-BF16, the OS
/// enables their XSAVE state (XCR0 bits 17–18), and Linux grants the tile-data permission
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, once per process). Decided once.
pub fn usable() -> bool {
    static U: OnceLock<bool> = OnceLock::new();
    *U.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    const AMX_BF16: u32 = 1 << 22; // CPUID.(7,0):EDX
    const AMX_TILE: u32 = 1 << 24;
    const OSXSAVE: u32 = 1 << 27; // CPUID.1:ECX
    const XTILE: u64 = 0b11 << 17; // XTILECFG, XTILEDATA
                                   // Leaf 7 is read whatever leaf 0 says; its bits count only when leaf 0 lists it.
    let (max, l1, l7) = (__cpuid(0).eax, __cpuid(1), __cpuid_count(7, 0));
    if max < 7 || l7.edx & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE || l1.ecx & OSXSAVE == 0 {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is enabled.
    if unsafe { _xgetbv(0) } & XTILE != XTILE {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_ulong = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether [`ENABLE_ENV`] holds `on`/`1`.
pub fn enabled(env: Option<&str>) -> bool {
    matches!(env, Some("on") | Some("1"))
}

/// x [m, k] rounded to bf16 k-pairs, row-major `[mp][kpp]` (mp = m rounded up to 32, kpp = ⌈k/2⌉
/// rounded up to 16; the padding is zero).
pub struct AmxRows {
    pub a: Vec<u32>,
    pub m: usize,
    pub k: usize,
    pub kpp: usize,
}

/// k-pairs of a k-long row, padded to whole tiles.
pub fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(TILE_KP) * TILE_KP
}

impl AmxRows {
    pub fn new(x: &[f32], m: usize, k: usize) -> AmxRows {
        assert_eq!(x.len(), m * k, "amx pack: x is not [m={m}, k={k}]");
        let (kp, kpp) = (k.div_ceil(2), padded_pairs(k));
        let mut a = vec![0u32; m.div_ceil(BLOCK_M) * BLOCK_M * kpp];
        if kpp > 0 {
            a.par_chunks_mut(kpp)
                .take(m)
                .enumerate()
                .for_each(|(r, row)| round_pairs(&x[r * k..][..k], &mut row[..kp]));
        }
        AmxRows { a, m, k, kpp }
    }
}

impl AmxRows {
    /// [`AmxRows::new`] of the m rows of a row-major matrix with row stride `lda` (its first k
    /// columns), on this thread.
    pub fn strided(a: &[f32], lda: usize, m: usize, k: usize) -> AmxRows {
        let (kp, kpp) = (k.div_ceil(2), padded_pairs(k));
        let mut rows = vec![0u32; m.div_ceil(BLOCK_M) * BLOCK_M * kpp];
        if kpp > 0 {
            for (r, row) in rows.chunks_mut(kpp).take(m).enumerate() {
                round_pairs(&a[r * lda..][..k], &mut row[..kp]);
            }
        }
        AmxRows { a: rows, m, k, kpp }
    }
}

/// One thread's product for the attention blocks: `c[r·ldc + j] = scale · (x·bᵀ)[r, j]` for
/// r < m, j < n, in [`model`]'s arithmetic (scale applied after), with `panel_of(j, panel)`
/// writing the j-th 32-column panel of b as `[kpp][32]` k-pairs (`bf16::gemm_serial` packs K or
/// V there).
///
/// # Safety
/// As [`linear`]. c holds `(m − 1)·ldc + n` floats, ldc ≥ n.
pub unsafe fn gemm_serial(
    x: &AmxRows,
    n: usize,
    panel_of: impl Fn(usize, &mut [u32]),
    c: &mut [f32],
    ldc: usize,
    scale: f32,
) {
    let (m, kpp) = (x.m, x.kpp);
    let mut panel = vec![0u32; kpp * BLOCK_N];
    let mut blk = [[0f32; BLOCK_N]; BLOCK_M];
    // SAFETY: the caller guarantees AMX.
    unsafe { load_config() };
    for j in 0..n.div_ceil(BLOCK_N) {
        panel_of(j, &mut panel);
        let cols = BLOCK_N.min(n - j * BLOCK_N);
        for i in 0..m.div_ceil(BLOCK_M) {
            let a = &x.a[i * BLOCK_M * kpp..][..BLOCK_M * kpp];
            // SAFETY: a holds 32 rows of kpp pairs, panel kpp rows of 32 pairs.
            unsafe { block_product(a, &panel, kpp, &mut blk) };
            let rows = BLOCK_M.min(m - i * BLOCK_M);
            let dst = &mut c[i * BLOCK_M * ldc + j * BLOCK_N..][..(rows - 1) * ldc + cols];
            // SAFETY: dst holds rows × cols cells at stride ldc.
            unsafe { store(&blk, dst.as_mut_ptr(), ldc, rows, cols, scale) };
        }
    }
    // SAFETY: releases this thread's tile state.
    unsafe { release() };
}

/// The 64-byte tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn full() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // colsb (u16, little-endian)
            c[48 + t] = TILE_ROWS as u8; // rows
            t += 1;
        }
        TileConfig(c)
    }
}

static CONFIG: TileConfig = TileConfig::full();

/// Panels per task: a task's x block stays in L1/L2 while the panels stream past.
const NB_TASK: usize = 8;

/// `y[r·ld + c] = Σ bf16(x[r, ·]) · bf16(w[c, ·])` for r < m, c < n in [`model`]'s arithmetic.
/// `b`: w packed as `[n/32][kpp][32]` panels (`bf16::pack` with the padded pair count).
///
/// # Safety
/// The CPU must execute AMX-TILE and AMX-BF16 and the process must hold the tile-data
/// permission ([`usable`]), or an emulator must stand in (tests/cpu_amx.rs). `y` must hold
/// `(m − 1)·ld + n` floats, ld ≥ n, and `b` `n.div_ceil(32)·kpp·32` pairs.
pub unsafe fn linear(x: &AmxRows, b: &[u32], n: usize, y: *mut f32, ld: usize) {
    let (m, kpp) = (x.m, x.kpp);
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(b.len() >= n.div_ceil(BLOCK_N) * kpp * BLOCK_N);
    let (mb, nb) = (m.div_ceil(BLOCK_M), n.div_ceil(BLOCK_N));
    let tn = nb.div_ceil(NB_TASK);
    let out = SharedOut(y);
    (0..mb * tn).into_par_iter().for_each(|t| {
        let (i, tj) = (t % mb, t / mb);
        let mut c = [[0f32; BLOCK_N]; BLOCK_M];
        // SAFETY: the caller guarantees AMX; the configuration is valid for palette 1.
        unsafe { load_config() };
        for j in tj * NB_TASK..nb.min((tj + 1) * NB_TASK) {
            let a = &x.a[i * BLOCK_M * kpp..][..BLOCK_M * kpp];
            let panel = &b[j * kpp * BLOCK_N..][..kpp * BLOCK_N];
            // SAFETY: a holds 32 rows of kpp pairs, panel kpp rows of 32 pairs, c 32 × 32.
            unsafe { block_product(a, panel, kpp, &mut c) };
            let rows = BLOCK_M.min(m - i * BLOCK_M);
            let cols = BLOCK_N.min(n - j * BLOCK_N);
            // SAFETY: rows i·32 .. i·32 + rows ≤ m and columns j·32 .. j·32 + cols ≤ n lie
            // inside y, and block (i, j) belongs to this task alone.
            unsafe {
                let dst = out.get().add(i * BLOCK_M * ld + j * BLOCK_N);
                store(&c, dst, ld, rows, cols, 1.0)
            };
        }
        // SAFETY: releases this thread's tile state.
        unsafe { release() };
    });
}

/// Token pairs per packing task of [`gram_upper`]: one 64-byte line of each feature's row.
const GRAM_PAIRS: usize = TILE_KP;

/// [`super::bf16::gram_upper`] on AMX: the upper block triangle of xᵀx for x [t, w], entry
/// (i, j) summed over the tokens as [`model`]`(xᵀ, xᵀ)` sums k (token pairs in 16-pair steps).
/// Both operands come from one pass over x, 16 token pairs per task: each pair of token rows is
/// rounded once (`round_zip`), copied into the column panels (`[w/32][kpp][32]`, as `linear`'s
/// w) and transposed into the feature rows (`[w padded to 32][kpp]`, as `linear`'s x).
///
/// # Safety
/// As [`linear`]. `block` is a positive multiple of 32, y holds `[w, w]` at row stride ld ≥ w.
pub unsafe fn gram_upper(x: &[f32], t: usize, w: usize, block: usize, y: *mut f32, ld: usize) {
    let kpp = padded_pairs(t);
    if w == 0 || t == 0 {
        return;
    }
    let kp = t.div_ceil(2);
    let nb = w.div_ceil(BLOCK_N);
    let mut panels = vec![0u32; nb * kpp * BLOCK_N]; // [nb][kpp][32]
    let mut rows = vec![0u32; nb * BLOCK_M * kpp]; // [w padded to 32][kpp]
    let (pp, rp) = (SharedOut(panels.as_mut_ptr()), SharedOut(rows.as_mut_ptr()));
    (0..kp.div_ceil(GRAM_PAIRS)).into_par_iter().for_each(|c| {
        let p0 = c * GRAM_PAIRS;
        let np = GRAM_PAIRS.min(kp - p0);
        let mut pairs = vec![0u32; GRAM_PAIRS * w]; // [16][w]: token pair p0 + q's features
        for q in 0..np {
            let p = p0 + q;
            let lo = &x[2 * p * w..][..w];
            let hi = (2 * p + 1 < t).then(|| &x[(2 * p + 1) * w..][..w]);
            round_zip(lo, hi, &mut pairs[q * w..][..w]);
        }
        let (panels, rows) = (pp.get(), rp.get());
        for q in 0..np {
            for j in 0..nb {
                let n = BLOCK_N.min(w - j * BLOCK_N);
                // SAFETY: cell (j, p0 + q, 0..n) of panels [nb][kpp][32] is in bounds and token
                // pair p0 + q belongs to this task alone.
                unsafe {
                    let dst = panels.add((j * kpp + p0 + q) * BLOCK_N);
                    std::ptr::copy_nonoverlapping(pairs.as_ptr().add(q * w + j * BLOCK_N), dst, n);
                }
            }
        }
        for i in 0..w {
            // SAFETY: row i's pairs p0..p0 + np of rows [w′][kpp] are in bounds and this task's.
            let dst = unsafe { std::slice::from_raw_parts_mut(rows.add(i * kpp + p0), np) };
            for (q, d) in dst.iter_mut().enumerate() {
                *d = pairs[q * w + i];
            }
        }
    });
    // Tasks: one 32-row block of a block row × the panels on or right of its diagonal.
    let tasks: Vec<(usize, usize)> = (0..w)
        .step_by(BLOCK_M)
        .flat_map(|r0| {
            let b0 = r0 / block * block;
            (b0 / BLOCK_N..nb).step_by(NB_TASK).map(move |j0| (r0, j0))
        })
        .collect();
    let out = SharedOut(y);
    tasks.into_par_iter().for_each(|(r0, j0)| {
        let b_end = (r0 / block * block + block).min(w);
        let mut c = [[0f32; BLOCK_N]; BLOCK_M];
        // SAFETY: the caller guarantees AMX.
        unsafe { load_config() };
        let a = &rows[r0 * kpp..][..BLOCK_M * kpp];
        for j in j0..nb.min(j0 + NB_TASK) {
            let panel = &panels[j * kpp * BLOCK_N..][..kpp * BLOCK_N];
            // SAFETY: a holds 32 rows of kpp pairs, panel kpp rows of 32 pairs.
            unsafe { block_product(a, panel, kpp, &mut c) };
            let cols = BLOCK_N.min(w - j * BLOCK_N);
            // SAFETY: rows r0 .. b_end ≤ w and columns j·32 .. j·32 + cols ≤ w lie inside y;
            // the (row block, panel) pair is this task's alone.
            unsafe {
                let dst = out.get().add(r0 * ld + j * BLOCK_N);
                store(&c, dst, ld, BLOCK_M.min(b_end - r0), cols, 1.0)
            };
        }
        // SAFETY: releases this thread's tile state.
        unsafe { release() };
    });
}

/// The first `rows` × `cols` cells of a block to `dst` at row stride `ld`, times `scale`
/// (attention's; exactly the value when it is 1).
///
/// # Safety
/// `dst` points at rows × cols writable cells at stride ld.
unsafe fn store(
    c: &[[f32; BLOCK_N]; BLOCK_M],
    dst: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
    scale: f32,
) {
    for (r, cr) in c.iter().enumerate().take(rows) {
        let d = std::slice::from_raw_parts_mut(dst.add(r * ld), cols);
        if scale == 1.0 {
            d.copy_from_slice(&cr[..cols]);
        } else {
            d.iter_mut().zip(cr).for_each(|(d, &v)| *d = v * scale);
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn load_config() {
    std::arch::asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
}

#[cfg(target_arch = "x86_64")]
unsafe fn release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// One 32 × 32 block: C = A[32, kpp pairs] · panel[kpp pairs, 32], in 16-pair steps.
#[cfg(target_arch = "x86_64")]
unsafe fn block_product(a: &[u32], panel: &[u32], kpp: usize, c: &mut [[f32; BLOCK_N]; BLOCK_M]) {
    let sa = kpp * 4; // bytes per x row
    let sb = BLOCK_N * 4; // bytes per panel row
    let steps = kpp / TILE_KP;
    let a0 = a.as_ptr();
    let a1 = a0.add(TILE_ROWS * kpp);
    let c0 = c.as_mut_ptr() as *mut f32;
    let c1 = c0.add(TILE_ROWS * BLOCK_N);
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "test {steps}, {steps}",
        "jz 3f",
        "2:",
        "tileloadd tmm4, [{a0} + {sa}*1]",
        "tileloadd tmm5, [{a1} + {sa}*1]",
        "tileloadd tmm6, [{b} + {sb}*1]",
        "tileloadd tmm7, [{b} + {sb}*1 + 64]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 64",
        "add {a1}, 64",
        "add {b}, {bstep}",
        "dec {steps}",
        "jnz 2b",
        "3:",
        "tilestored [{c0} + {sc}*1], tmm0",
        "tilestored [{c0} + {sc}*1 + 64], tmm1",
        "tilestored [{c1} + {sc}*1], tmm2",
        "tilestored [{c1} + {sc}*1 + 64], tmm3",
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b = inout(reg) panel.as_ptr() => _,
        steps = inout(reg) steps => _,
        sa = in(reg) sa,
        sb = in(reg) sb,
        bstep = in(reg) TILE_KP * sb,
        c0 = in(reg) c0,
        c1 = in(reg) c1,
        sc = in(reg) BLOCK_N * 4,
        options(nostack),
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_config() {
    unreachable!("AMX exists on x86_64 only")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_product(_: &[u32], _: &[u32], _: usize, _: &mut [[f32; BLOCK_N]; BLOCK_M]) {
    unreachable!("AMX exists on x86_64 only")
}

/// One `tdpbf16ps` output: `acc + (even + odd)` over 16 k-pairs `(x[2p], x[2p+1])`, `(w[..])`
/// given as bf16 bits (pairs past the data zero).
pub fn tile_step(acc: f32, x: &[u16; 2 * TILE_KP], w: &[u16; 2 * TILE_KP]) -> f32 {
    let (mut even, mut odd) = (0f32, 0f32);
    for p in 0..TILE_KP {
        even = ftz(widen_daz(x[2 * p]).mul_add(widen_daz(w[2 * p]), even));
        odd = ftz(widen_daz(x[2 * p + 1]).mul_add(widen_daz(w[2 * p + 1]), odd));
    }
    ftz(acc + ftz(even + odd))
}

/// The scalar model of [`linear`]: same rounding, same order. `y` is `[m, n]`; `xb` [m, k] and
/// `wb` [n, k] are bf16 bits.
pub fn model(xb: &[u16], wb: &[u16], m: usize, k: usize, n: usize) -> Vec<f32> {
    let steps = padded_pairs(k) / TILE_KP;
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f32;
            for s in 0..steps {
                let (mut xs, mut ws) = ([0u16; 2 * TILE_KP], [0u16; 2 * TILE_KP]);
                for e in 0..2 * TILE_KP {
                    let kk = s * 2 * TILE_KP + e;
                    if kk < k {
                        xs[e] = xb[r * k + kk];
                        ws[e] = wb[c * k + kk];
                    }
                }
                acc = tile_step(acc, &xs, &ws);
            }
            y[r * n + c] = acc;
        }
    }
    y
}
