//! bf16-input, f32-accumulate GEMM for the CPU engine's large products (projections, LM head:
//! [`linear`]; the calibration Gram matrix: [`gram_upper`]; attention blocks: [`gemm_serial`]):
//! `y[m, n] = bf16(x)[m, k] · bf16(w)[n, k]ᵀ`, chosen by `--precision bf16` where the CPU has
//! AVX-512 BF16; anything else runs the f32 path (`gemm` crate) in `cpu::ops`.
//!
//! Rounding points: x is rounded to bf16 round-to-nearest-even exactly as the GPU engine rounds
//! activations (`half::bf16::from_f32`, the host twin of `__float2bfloat16_rn` in kernels/), so
//! the CPU and GPU compile paths see the same GEMM inputs; w is rounded the same way (exact for a
//! BF16 checkpoint). A product of two bf16 is exact in f32. Each output is one f32 accumulator
//! running over k in order, two k at a time as `vdpbf16ps` does (Intel SDM):
//! `acc = fma(x[2p+1], w[2p+1], acc); acc = fma(x[2p], w[2p], acc)`, bf16 denormal inputs read as
//! zero and a denormal result flushed to zero. [`linear_model`] is that arithmetic in scalar
//! code; every kernel equals it bitwise (tests/cpu_bf16.rs).
//!
//! Kernels: AVX-512 BF16 (`vdpbf16ps`: Intel since Cooper Lake, AMD Zen 4/5), and AMX-BF16
//! (`tdpbf16ps`, Intel since Sapphire Rapids; opt-in, `cpu::amx`), whose sums run in 16-pair
//! steps ([`linear_model_for`]).
//!
//! Layout: x is packed in blocks of MR rows as `[k/2][MR]` u32 pairs (low half = even k), w in
//! panels of NR columns as `[k/2][NR]` pairs; k is padded to even, rows to MR and columns to NR
//! with zeros. The micro-kernel keeps an MR × NR tile in 24 zmm accumulators over the whole k (no
//! k blocking, so the summation order is the scalar model's at every shape).

use crate::cpu::amx;
use crate::cpu::convert::{ftz, round_bits, round_pairs, round_zip, widen_daz};
use crate::cpu::gemv::Mat;
use crate::cpu::shared_out::SharedOut;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Arithmetic of the CPU engine's projections and LM head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 inputs and accumulation (the reference: equal to transformers fp32).
    F32,
    /// Inputs rounded to bf16, f32 accumulation (AVX-512 BF16; f32 where the CPU lacks it).
    Bf16,
}

impl Precision {
    /// `compile`'s default on this CPU: [`Precision::compile_default_for`] of the kernel the
    /// process may use and the CPU's vendor.
    pub fn compile_default() -> Precision {
        Self::compile_default_for(Kernel::detect(), Vendor::detect())
    }

    /// `compile`'s default: the fastest precision whose compile keeps KL within 1% of the f32
    /// compile's, as measured per CPU kind (README, "CPU bf16 GEMM"). AMD Zen 5: `vdpbf16ps`
    /// retires at 2.0× the flop rate of f32 FMA, and the bf16 compile is faster with KL within
    /// 1% → bf16. Intel Emerald Rapids: `vdpbf16ps` at under half the rate of f32 FMA → f32.
    /// Zen 4 (the same instruction, double-pumped like its f32 FMA) is taken to follow Zen 5;
    /// other Intel parts follow Emerald Rapids until measured. No kernel → f32.
    pub fn compile_default_for(kernel: Option<Kernel>, vendor: Vendor) -> Precision {
        match (kernel, vendor) {
            (Some(Kernel::Avx512Bf16), Vendor::Amd) => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision \"{s}\"; use f32 or bf16")),
        }
    }
}

/// Who made the CPU: the bf16 kernel's speed against f32 FMA differs by vendor (see
/// [`Precision::compile_default_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Amd,
    Intel,
    Other,
}

impl Vendor {
    /// From CPUID leaf 0's vendor string.
    pub fn detect() -> Vendor {
        #[cfg(target_arch = "x86_64")]
        {
            let r = std::arch::x86_64::__cpuid(0); // leaf 0: the vendor string
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&r.ebx.to_le_bytes());
            id[4..8].copy_from_slice(&r.edx.to_le_bytes());
            id[8..].copy_from_slice(&r.ecx.to_le_bytes());
            match &id {
                b"AuthenticAMD" => Vendor::Amd,
                b"GenuineIntel" => Vendor::Intel,
                _ => Vendor::Other,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Vendor::Other
    }
}

/// A bf16 GEMM kernel this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` on zmm registers (target features avx512f + avx512bf16).
    Avx512Bf16,
    /// `tdpbf16ps` tiles (`cpu::amx`) for [`linear`], [`gram_upper`] and [`gemm_serial`].
    Amx,
}

/// Environment variable that hides every bf16 kernel (`off`): the f32 path runs as on a CPU
/// without BF16 support.
pub const DISABLE_ENV: &str = "WHITTLE_CPU_BF16";

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 => "avx512-bf16",
            Kernel::Amx => "amx-bf16",
        }
    }

    /// Every kernel this CPU supports, best first (tests run each), decided once per process.
    /// AMX only with `WHITTLE_CPU_AMX=on` (`cpu::amx`: not yet run on AMX hardware).
    pub fn supported() -> Vec<Kernel> {
        static S: OnceLock<Vec<Kernel>> = OnceLock::new();
        S.get_or_init(|| {
            let mut v = Vec::new();
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bf16")
            {
                if amx::enabled(std::env::var(amx::ENABLE_ENV).ok().as_deref()) && amx::usable() {
                    v.push(Kernel::Amx);
                }
                v.push(Kernel::Avx512Bf16);
            }
            v
        })
        .clone()
    }

    /// The best supported kernel unless `env` (the value of [`DISABLE_ENV`]) is `off`/`0`.
    pub fn choose(env: Option<&str>) -> Option<Kernel> {
        match env {
            Some("off") | Some("0") => None,
            _ => Self::supported().first().copied(),
        }
    }

    /// [`Kernel::choose`] with this process's environment, decided once.
    pub fn detect() -> Option<Kernel> {
        static K: OnceLock<Option<Kernel>> = OnceLock::new();
        *K.get_or_init(|| Self::choose(std::env::var(DISABLE_ENV).ok().as_deref()))
    }
}

// Process-wide like rayon's thread pool: the CLI sets it once from `--precision` before any
// work starts; the library's default is the f32 reference.
static PRECISION: AtomicU8 = AtomicU8::new(0);

pub fn set_precision(p: Precision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
}

pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => Precision::F32,
        _ => Precision::Bf16,
    }
}

/// The kernel the CPU engine's GEMMs use now (`None`: the f32 path).
pub fn active() -> Option<Kernel> {
    match precision() {
        Precision::F32 => None,
        Precision::Bf16 => Kernel::detect(),
    }
}

/// The arithmetic in use: `bf16` when a kernel runs it, else `f32` (engine names, log lines).
pub fn in_use() -> &'static str {
    active().map_or(Precision::F32, |_| Precision::Bf16).name()
}

/// What the CPU engine's GEMMs run, for `bench --json` and whittle_report.json.
pub fn describe() -> String {
    match (precision(), active()) {
        (Precision::F32, _) => "f32 (gemm crate)".into(),
        (Precision::Bf16, Some(k)) => format!("bf16 {} (f32 accumulate)", k.name()),
        (Precision::Bf16, None) => format!(
            "f32 (gemm crate; bf16 requested but this CPU has no AVX-512 BF16 or {DISABLE_ENV}=off)"
        ),
    }
}

/// Rows per packed block of x (the micro-kernel's tile height).
const MR: usize = 12;
/// Columns per packed panel of w (two zmm of f32).
const NR: usize = 32;
/// Row blocks and column panels per rayon task: a task's x blocks (96 rows) stay in L2 while
/// its panels stream past them.
const MB_TASK: usize = 8;
const NB_TASK: usize = 8;

/// x [m, k] → blocks of MR rows, each `[kp][MR]` pairs (missing rows and the odd k are zero).
fn pack_rows(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    pack::<MR>(Mat::F32(x), m, k, k.div_ceil(2))
}

/// w [n, k] → panels of NR columns, each `[kpp][NR]` pairs (missing columns, the odd k and the
/// pairs from ⌈k/2⌉ to kpp zero).
fn pack_cols(w: Mat<'_>, n: usize, k: usize, kpp: usize) -> Vec<u32> {
    pack::<NR>(w, n, k, kpp)
}

/// Pairs per row converted before they are transposed into a block: B rows of them stay in L1.
const PACK_CHUNK: usize = 64;

/// Rows of a [rows, k] matrix in blocks of B, each `[kpp][B]` k-pairs (kpp ≥ ⌈k/2⌉, the rest
/// zero): row r's pair p of block b at `b·kpp·B + p·B + r` ([`pack_block`] per block, blocks in
/// parallel).
fn pack<const B: usize>(src: Mat<'_>, rows: usize, k: usize, kpp: usize) -> Vec<u32> {
    let mut out = vec![0u32; rows.div_ceil(B) * kpp * B];
    if kpp == 0 {
        return out;
    }
    out.par_chunks_mut(kpp * B)
        .enumerate()
        .for_each(|(b, blk)| pack_block::<B>(src, k, b * B, B.min(rows - b * B), k, blk));
    out
}

/// Rows r0..r0+n (n ≤ B) of a row-major matrix with row stride `ld`, k columns, as one `[kp][B]`
/// block of k-pairs into `blk` (zeroed: rows past n and the odd k stay zero). Each row is rounded
/// a chunk of pairs at a time (contiguous, SIMD: `round_pairs`), the chunk of B rows then
/// transposed into the block.
fn pack_block<const B: usize>(
    src: Mat<'_>,
    ld: usize,
    r0: usize,
    n: usize,
    k: usize,
    blk: &mut [u32],
) {
    let kp = k.div_ceil(2);
    let mut chunk = [[0u32; PACK_CHUNK]; B]; // [B][pairs]
    for p0 in (0..kp).step_by(PACK_CHUNK) {
        let pc = PACK_CHUNK.min(kp - p0);
        let (e0, e1) = (2 * p0, (2 * (p0 + pc)).min(k)); // elements of the chunk
        for (r, dst) in chunk.iter_mut().enumerate().take(n) {
            let row = (r0 + r) * ld;
            match src {
                Mat::F32(x) => round_pairs(&x[row + e0..row + e1], &mut dst[..pc]),
                Mat::Bf16(x) => {
                    let bits = &x[row + e0..row + e1];
                    for (d, pair) in dst[..pc].iter_mut().zip(bits.chunks(2)) {
                        let hi = pair.get(1).copied().unwrap_or(0);
                        *d = pair[0] as u32 | (hi as u32) << 16;
                    }
                }
            }
        }
        for p in 0..pc {
            let d = &mut blk[(p0 + p) * B..][..n];
            for (r, d) in d.iter_mut().enumerate() {
                *d = chunk[r][p];
            }
        }
    }
}

/// Columns c0..c0+n (n ≤ B) of a row-major [k, ·] matrix with row stride `ld` as one `[kp][B]`
/// block of k-pairs (two rows zipped: `round_zip`) into `blk` (zeroed).
fn pack_block_t<const B: usize>(
    b: &[f32],
    ld: usize,
    c0: usize,
    n: usize,
    k: usize,
    blk: &mut [u32],
) {
    for p in 0..k.div_ceil(2) {
        let lo = &b[2 * p * ld + c0..][..n];
        let hi = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * ld + c0..][..n]);
        round_zip(lo, hi, &mut blk[p * B..][..n]);
    }
}

/// One thread's bf16 product for the attention blocks: `c[r·ldc + j] = scale · Σᵢ bf16(a[r·lda
/// + i]) · bf16(bᵢⱼ)` for r < m, j < n, with `bᵢⱼ = b[j·ldb + i]` (`b_rows`: b holds the n
/// rows of the right-hand side's transpose, as K for q·kᵀ) or `b[i·ldb + j]` (b row-major
/// [k, n], as V for p·v). The sums are [`linear_model_for`]'s (scale applied after).
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    kernel: Kernel,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_rows: bool,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    scale: f32,
) {
    assert!(
        Kernel::supported().contains(&kernel),
        "bf16 gemm: this CPU cannot run {}",
        kernel.name()
    );
    // SAFETY: the CPU runs `kernel` (checked above).
    unsafe { gemm_serial_unchecked(kernel, a, lda, b, ldb, b_rows, m, n, k, c, ldc, scale) }
}

/// [`gemm_serial`] without asking the CPU whether it runs `kernel` (tests/cpu_amx.rs).
///
/// # Safety
/// As [`linear_packed_unchecked`].
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_serial_unchecked(
    kernel: Kernel,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    b_rows: bool,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let b_end = if b_rows {
        (n - 1) * ldb + k
    } else {
        (k.max(1) - 1) * ldb + n
    };
    assert!(
        a.len() >= (m - 1) * lda + k,
        "bf16 gemm: a cannot hold [m={m}, k={k}] at stride {lda}"
    );
    assert!(
        k == 0 || b.len() >= b_end,
        "bf16 gemm: b is short for [k={k}, n={n}] at stride {ldb}"
    );
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "bf16 gemm: c cannot hold [m={m}, n={n}]"
    );
    let pack_panel = |j: usize, panel: &mut [u32]| {
        let cols = NR.min(n - j * NR);
        panel.fill(0);
        if b_rows {
            pack_block::<NR>(Mat::F32(b), ldb, j * NR, cols, k, panel);
        } else {
            pack_block_t::<NR>(b, ldb, j * NR, cols, k, panel);
        }
    };
    if kernel == Kernel::Amx {
        let rows = amx::AmxRows::strided(a, lda, m, k);
        // SAFETY: the caller guarantees AMX; c holds [m, n] at stride ldc (checked above).
        return unsafe { amx::gemm_serial(&rows, n, pack_panel, c, ldc, scale) };
    }
    let kp = k.div_ceil(2);
    let (mb, nb) = (m.div_ceil(MR), n.div_ceil(NR));
    let mut blocks = vec![0u32; mb * kp * MR]; // [mb][kp][MR]
    for (i, blk) in blocks.chunks_mut(kp * MR).enumerate().take(mb) {
        pack_block::<MR>(Mat::F32(a), lda, i * MR, MR.min(m - i * MR), k, blk);
    }
    let mut panel = vec![0u32; kp * NR]; // [kp][NR], one at a time
    for j in 0..nb {
        let cols = NR.min(n - j * NR);
        pack_panel(j, &mut panel);
        for i in 0..mb {
            let rows = MR.min(m - i * MR);
            let blk = &blocks[i * kp * MR..][..kp * MR];
            let out = &mut c[i * MR * ldc + j * NR..];
            // SAFETY: cells r·ldc + col (r < rows, col < cols) of `out` lie inside c (checked
            // above); blk and panel hold kp·MR and kp·NR pairs.
            unsafe {
                tile(
                    kernel,
                    blk.as_ptr(),
                    panel.as_ptr(),
                    kp,
                    out.as_mut_ptr(),
                    ldc,
                    rows,
                    cols,
                )
            };
            if scale != 1.0 {
                for r in 0..rows {
                    out[r * ldc..][..cols].iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
    }
}

/// x [m, k] rounded and packed for `kernel` once, for several products with it
/// ([`linear_packed`]: q, k and v of one input; gate and up).
pub struct PackedRows {
    kernel: Kernel,
    rows: Rows,
    m: usize,
    k: usize,
}

/// The packed x in the layout of its kernel.
enum Rows {
    Blocks(Vec<u32>), // [mb][kp][MR]
    Amx(amx::AmxRows),
}

impl PackedRows {
    pub fn new(kernel: Kernel, x: &[f32], m: usize, k: usize) -> PackedRows {
        assert_eq!(x.len(), m * k, "bf16 pack: x is not [m={m}, k={k}]");
        let rows = match kernel {
            Kernel::Avx512Bf16 => Rows::Blocks(pack_rows(x, m, k)),
            Kernel::Amx => Rows::Amx(amx::AmxRows::new(x, m, k)),
        };
        PackedRows { kernel, rows, m, k }
    }
}

/// `y[r·ld + c] = Σₖ bf16(x[r, k]) · bf16(w[c, k])` for r < m, c < n, with `kernel` (one the CPU
/// supports: [`Kernel::supported`]). Columns of `y` from n to ld are left alone.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    kernel: Kernel,
    x: &[f32],
    w: Mat<'_>,
    m: usize,
    k: usize,
    n: usize,
    y: &mut [f32],
    ld: usize,
) {
    linear_packed(kernel, &PackedRows::new(kernel, x, m, k), w, n, y, ld)
}

/// [`linear`] of an x packed beforehand (for `kernel`).
pub fn linear_packed(
    kernel: Kernel,
    x: &PackedRows,
    w: Mat<'_>,
    n: usize,
    y: &mut [f32],
    ld: usize,
) {
    assert!(
        Kernel::supported().contains(&kernel),
        "bf16 linear: this CPU cannot run {}",
        kernel.name()
    );
    // SAFETY: the CPU runs `kernel` (checked above).
    unsafe { linear_packed_unchecked(kernel, x, w, n, y, ld) }
}

/// [`linear_packed`] without asking the CPU whether it runs `kernel` (tests/cpu_amx.rs runs the
/// AMX kernel under its emulator this way).
///
/// # Safety
/// The CPU, or an emulator in this process, must execute `kernel`'s instructions (and, for AMX,
/// this process hold the tile-data permission).
#[doc(hidden)]
pub unsafe fn linear_packed_unchecked(
    kernel: Kernel,
    x: &PackedRows,
    w: Mat<'_>,
    n: usize,
    y: &mut [f32],
    ld: usize,
) {
    let (m, k) = (x.m, x.k);
    let w_len = match w {
        Mat::F32(w) => w.len(),
        Mat::Bf16(w) => w.len(),
    };
    assert_eq!(w_len, n * k, "bf16 linear: w is not [n={n}, k={k}]");
    assert!(
        ld >= n && (m == 0 || y.len() >= (m - 1) * ld + n),
        "bf16 linear: y cannot hold [m={m}, n={n}] at row stride {ld}"
    );
    assert_eq!(
        x.kernel,
        kernel,
        "bf16 linear: x was packed for {}",
        x.kernel.name()
    );
    if m == 0 || n == 0 {
        return;
    }
    let a = match &x.rows {
        Rows::Blocks(a) => a, // [mb][kp][MR]
        Rows::Amx(a) => {
            // [nb][kpp][NR]
            let b = pack_cols(w, n, k, a.kpp);
            // SAFETY: the caller guarantees AMX; y holds [m, n] at stride ld (checked above),
            // b is [⌈n/32⌉][kpp][32].
            return unsafe { amx::linear(a, &b, n, y.as_mut_ptr(), ld) };
        }
    };
    let kp = k.div_ceil(2);
    let b = pack_cols(w, n, k, kp); // [nb][kp][NR]
    let (mb, nb) = (m.div_ceil(MR), n.div_ceil(NR));
    let (tm, tn) = (mb.div_ceil(MB_TASK), nb.div_ceil(NB_TASK));
    let out = SharedOut(y.as_mut_ptr());
    (0..tm * tn).into_par_iter().for_each(|t| {
        let (ti, tj) = (t % tm, t / tm);
        for j in tj * NB_TASK..nb.min((tj + 1) * NB_TASK) {
            let panel = &b[j * kp * NR..][..kp * NR];
            let cols = NR.min(n - j * NR);
            for i in ti * MB_TASK..mb.min((ti + 1) * MB_TASK) {
                let block = &a[i * kp * MR..][..kp * MR];
                let rows = MR.min(m - i * MR);
                // SAFETY: the tile's cells (i·MR + r)·ld + j·NR + c, r < rows ≤ m − i·MR,
                // c < cols ≤ n − j·NR, lie inside y (length checked above) and belong to this
                // (i, j) only, which one task owns; block and panel hold kp·MR and kp·NR pairs.
                unsafe {
                    tile(
                        kernel,
                        block.as_ptr(),
                        panel.as_ptr(),
                        kp,
                        out.get().add(i * MR * ld + j * NR),
                        ld,
                        rows,
                        cols,
                    )
                }
            }
        }
    });
}

/// The upper block triangle of the Gram matrix of x [t, w] (t tokens of w features):
/// `y[i·ld + j] = Σₛ bf16(x[s, i]) · bf16(x[s, j])` for every block row b0 = 0, block, 2·block, …
/// (rows b0..b0+block, columns b0..w), each entry summed over s as
/// [`linear_model_for`]`(kernel, xᵀ, xᵀ)` sums k. Entries below the block diagonal are left
/// alone. Both operands are packed straight from x (a pair of tokens at a time, contiguous
/// features), the column panels once for every block row — no transpose, no repacking per
/// block (AMX: `amx::gram_upper`).
#[allow(clippy::too_many_arguments)]
pub fn gram_upper(
    kernel: Kernel,
    x: &[f32],
    t: usize,
    w: usize,
    block: usize,
    y: &mut [f32],
    ld: usize,
) {
    assert!(
        Kernel::supported().contains(&kernel),
        "bf16 gram: this CPU cannot run {}",
        kernel.name()
    );
    // SAFETY: the CPU runs `kernel` (checked above).
    unsafe { gram_upper_unchecked(kernel, x, t, w, block, y, ld) }
}

/// [`gram_upper`] without asking the CPU whether it runs `kernel` (tests/cpu_amx.rs).
///
/// # Safety
/// As [`linear_packed_unchecked`].
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gram_upper_unchecked(
    kernel: Kernel,
    x: &[f32],
    t: usize,
    w: usize,
    block: usize,
    y: &mut [f32],
    ld: usize,
) {
    assert_eq!(x.len(), t * w, "bf16 gram: x is not [t={t}, w={w}]");
    assert!(
        block > 0 && block.is_multiple_of(NR),
        "bf16 gram: block {block} is not a multiple of {NR}"
    );
    assert!(
        ld >= w && (w == 0 || y.len() >= (w - 1) * ld + w),
        "bf16 gram: y cannot hold [{w}, {w}] at row stride {ld}"
    );
    if kernel == Kernel::Amx {
        // SAFETY: the caller guarantees AMX; block and y checked above.
        return unsafe { amx::gram_upper(x, t, w, block, y.as_mut_ptr(), ld) };
    }
    let kp = t.div_ceil(2);
    if w == 0 || kp == 0 {
        return;
    }
    let nb = w.div_ceil(NR);
    // Row blocks of every block row: block row b's rows start at b·block, MR at a time.
    let starts: Vec<usize> = (0..w)
        .step_by(block)
        .flat_map(|b0| (b0..(b0 + block).min(w)).step_by(MR))
        .collect();
    let mut panels = vec![0u32; nb * kp * NR]; // [nb][kp][NR]
    let mut rows = vec![0u32; starts.len() * kp * MR]; // [blocks][kp][MR]

    // Both operands in one pass over x, a chunk of token pairs per task: each pair of token rows
    // (contiguous) is rounded once into `[w]` pairs and its pieces copied to every panel and row
    // block at that pair. Walking features a panel at a time instead reads 128 bytes per 8 KiB
    // token row: a TLB miss per read.
    const PAIRS: usize = 16;
    let (pp, rp) = (SharedOut(panels.as_mut_ptr()), SharedOut(rows.as_mut_ptr()));
    (0..kp.div_ceil(PAIRS)).into_par_iter().for_each(|c| {
        let mut pair = vec![0u32; w]; // [w] token pair p's features
        for p in c * PAIRS..kp.min((c + 1) * PAIRS) {
            let lo = &x[2 * p * w..][..w];
            let hi = (2 * p + 1 < t).then(|| &x[(2 * p + 1) * w..][..w]);
            round_zip(lo, hi, &mut pair);
            for j in 0..nb {
                let n = NR.min(w - j * NR);
                // SAFETY: cell (j, p, 0..n) of panels [nb][kp][NR] is in bounds, and pair p
                // belongs to this task alone.
                unsafe {
                    let dst = pp.get().add((j * kp + p) * NR);
                    std::ptr::copy_nonoverlapping(pair.as_ptr().add(j * NR), dst, n);
                }
            }
            for (i, &r0) in starts.iter().enumerate() {
                let n = MR.min((r0 / block * block + block).min(w) - r0);
                // SAFETY: as above, for rows [blocks][kp][MR].
                unsafe {
                    let dst = rp.get().add((i * kp + p) * MR);
                    std::ptr::copy_nonoverlapping(pair.as_ptr().add(r0), dst, n);
                }
            }
        }
    });
    // Tasks: MB_TASK row blocks of one block row × NB_TASK panels on or right of its diagonal.
    let mut tasks = Vec::new();
    let mut first = 0;
    while first < starts.len() {
        let b0 = starts[first] / block * block;
        let last = first
            + starts[first..]
                .iter()
                .take_while(|&&r| r < b0 + block)
                .count();
        for i0 in (first..last).step_by(MB_TASK) {
            for j0 in (b0 / NR..nb).step_by(NB_TASK) {
                tasks.push((i0, (i0 + MB_TASK).min(last), j0, b0));
            }
        }
        first = last;
    }
    let out = SharedOut(y.as_mut_ptr());
    tasks.into_par_iter().for_each(|(i0, i1, j0, b0)| {
        let b_end = (b0 + block).min(w);
        for j in j0..nb.min(j0 + NB_TASK) {
            let panel = &panels[j * kp * NR..][..kp * NR];
            let cols = NR.min(w - j * NR);
            for (i, &r0) in starts.iter().enumerate().take(i1).skip(i0) {
                let blk = &rows[i * kp * MR..][..kp * MR];
                // SAFETY: the tile's cells (r0 + r)·ld + j·NR + c, r < MR.min(b_end − r0),
                // c < cols ≤ w − j·NR, lie inside y (length checked above); each (row block,
                // panel) pair is one task's alone; blk and panel hold kp·MR and kp·NR pairs.
                unsafe {
                    tile(
                        kernel,
                        blk.as_ptr(),
                        panel.as_ptr(),
                        kp,
                        out.get().add(r0 * ld + j * NR),
                        ld,
                        MR.min(b_end - r0),
                        cols,
                    )
                }
            }
        }
    });
}

/// One MR × NR tile (`rows` × `cols` of it stored).
///
/// # Safety
/// `a` holds kp·MR pairs, `b` kp·NR, `c` is writable at `r·ldc + col` for r < rows ≤ MR,
/// col < cols ≤ NR, and the CPU supports `kernel`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kernel: Kernel,
    a: *const u32,
    b: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => tile_avx512bf16(a, b, kp, c, ldc, rows, cols),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx512Bf16 => unreachable!("Kernel::supported lists no x86 kernel elsewhere"),
        Kernel::Amx => unreachable!("AMX products take the amx module's blocks, not this tile"),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512bf16(
    a: *const u32,
    b: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    use std::mem::transmute;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kp {
        let bp = b.add(p * NR) as *const __m512i;
        let b0: __m512bh = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp));
        let b1: __m512bh = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1)));
        let ap = a.add(p * MR);
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    if cols == NR {
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(r * ldc);
            _mm512_storeu_ps(row, acc[0]);
            _mm512_storeu_ps(row.add(16), acc[1]);
        }
    } else {
        let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, acc[0]);
            _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
        }
    }
}

/// The scalar model of [`linear`] on `kernel`: [`linear_model`] for AVX-512 BF16,
/// `amx::model` for AMX. `y` is `[m, n]`.
pub fn linear_model_for(
    kernel: Kernel,
    x: &[f32],
    w: Mat<'_>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    match kernel {
        Kernel::Avx512Bf16 => linear_model(x, w, m, k, n),
        Kernel::Amx => {
            let xb: Vec<u16> = x.iter().map(|&v| round_bits(v)).collect();
            let wb: Vec<u16> = match w {
                Mat::F32(w) => w.iter().map(|&v| round_bits(v)).collect(),
                Mat::Bf16(w) => w.to_vec(),
            };
            amx::model(&xb, &wb, m, k, n)
        }
    }
}

/// The scalar model of the `vdpbf16ps` kernel (every product but AMX's): same
/// rounding, same order, no SIMD. `y` is `[m, n]`.
pub fn linear_model(x: &[f32], w: Mat<'_>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let xb: Vec<u16> = x.iter().map(|&v| round_bits(v)).collect(); // [m, k]
    let wb: Vec<u16> = match w {
        Mat::F32(w) => w.iter().map(|&v| round_bits(v)).collect(),
        Mat::Bf16(w) => w.to_vec(),
    }; // [n, k]
    let mut y = vec![0f32; m * n]; // [m, n]
    for r in 0..m {
        for c in 0..n {
            let (xr, wc) = (&xb[r * k..][..k], &wb[c * k..][..k]);
            let mut acc = 0f32;
            for p in 0..k.div_ceil(2) {
                let (i0, i1) = (2 * p, 2 * p + 1);
                if i1 < k {
                    acc = ftz(widen_daz(xr[i1]).mul_add(widen_daz(wc[i1]), acc));
                } else {
                    acc = ftz(0f32.mul_add(0.0, acc));
                }
                acc = ftz(widen_daz(xr[i0]).mul_add(widen_daz(wc[i0]), acc));
            }
            y[r * n + c] = acc;
        }
    }
    y
}
