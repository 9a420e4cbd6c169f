//! The AMX-BF16 kernels (src/cpu/amx.rs: `linear`, `gram_upper`, `gemm_serial`) on any x86-64
//! Linux machine: where the CPU has no AMX, its six instructions (ldtilecfg, tilerelease,
//! tilezero, tileloadd, tilestored, tdpbf16ps) raise SIGILL, and the handler below decodes and
//! executes them on a per-thread tile state — TDPBF16PS as the Intel SDM defines it (two f32
//! accumulators per output over the tile's k-pairs, FMA with round-to-nearest-even, bf16
//! denormal inputs read as zero, denormal results flushed, then even + odd added to the
//! output). The kernels' packing, tile configuration, strides, displacements, k steps and edge
//! blocks are checked bitwise against the library's scalar model (`amx::model`, written
//! separately from this emulator). On a CPU with AMX the instructions run natively (with
//! `WHITTLE_CPU_AMX=on`, tests/cpu_bf16.rs also runs them through the dispatch): the same
//! assertions then check the hardware against the SDM's arithmetic.

#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

mod common;

use common::bf16::{assert_gram_upper_bitwise, assert_rows_bitwise, serial_operands, transpose};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use whittle::cpu::amx;
use whittle::cpu::bf16::{self, Kernel, PackedRows};
use whittle::cpu::decode::Mat;

/// Tile registers and configuration of one thread.
struct Tiles {
    rows: [u8; 8],
    colsb: [u16; 8],
    data: [[[u8; 64]; 16]; 8],
}

thread_local! {
    static TILES: UnsafeCell<Tiles> = const {
        UnsafeCell::new(Tiles { rows: [0; 8], colsb: [0; 8], data: [[[0; 64]; 16]; 8] })
    };
}

/// Instructions the handler executed (zero where the CPU runs AMX itself).
static EMULATED: AtomicUsize = AtomicUsize::new(0);

/// ucontext register index of x86 register number r (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi,
/// r8–r15).
fn greg(r: usize) -> usize {
    const MAP: [i32; 16] = [
        libc::REG_RAX,
        libc::REG_RCX,
        libc::REG_RDX,
        libc::REG_RBX,
        libc::REG_RSP,
        libc::REG_RBP,
        libc::REG_RSI,
        libc::REG_RDI,
        libc::REG_R8,
        libc::REG_R9,
        libc::REG_R10,
        libc::REG_R11,
        libc::REG_R12,
        libc::REG_R13,
        libc::REG_R14,
        libc::REG_R15,
    ];
    MAP[r] as usize
}

fn daz32(v: f32) -> f32 {
    if v.is_subnormal() {
        0f32.copysign(v)
    } else {
        v
    }
}

fn bf16_daz(b: u16) -> f32 {
    daz32(f32::from_bits((b as u32) << 16))
}

/// A decoded memory operand: base + index·2^scale + disp, and the stride a tile access uses
/// (the index register's value << scale).
struct Mem {
    addr: u64,
    stride: u64,
}

/// Executes one AMX instruction at the context's RIP; false when it is not one of ours.
///
/// # Safety
/// `uc` is the signal's ucontext; memory operands point at the test's live buffers.
#[allow(clippy::needless_range_loop)] // rows, k-pairs and columns index three tiles at once
unsafe fn emulate(uc: *mut libc::ucontext_t) -> bool {
    let g = &mut (*uc).uc_mcontext.gregs;
    let rip = g[libc::REG_RIP as usize] as u64;
    let code = std::slice::from_raw_parts(rip as *const u8, 16);
    if code[0] != 0xc4 || code[1] & 0x1f != 0x02 {
        return false; // not a VEX3 0F38 instruction
    }
    let (r_ext, x_ext, b_ext) = (
        (!code[1] >> 7) & 1,
        (!code[1] >> 6) & 1,
        (!code[1] >> 5) & 1,
    );
    let vvvv = ((!code[2] >> 3) & 0xf) as usize;
    let pp = code[2] & 3;
    let op = code[3];
    let modrm = code[4];
    let (md, reg, rm) = (
        modrm >> 6,
        ((modrm >> 3) & 7) as usize,
        (modrm & 7) as usize,
    );
    let reg = reg | (r_ext as usize) << 3;
    let mut len = 5usize;
    let mem = if md != 3 {
        let (base, index, scale);
        if rm == 4 {
            let sib = code[5];
            len += 1;
            scale = sib >> 6;
            let idx = ((sib >> 3) & 7) as usize | (x_ext as usize) << 3;
            index = (idx != 4).then_some(idx);
            let b = (sib & 7) as usize | (b_ext as usize) << 3;
            base = (!(b & 7 == 5 && md == 0)).then_some(b);
        } else {
            assert!(
                !(rm == 5 && md == 0),
                "emulator: RIP-relative operand not handled"
            );
            base = Some(rm | (b_ext as usize) << 3);
            index = None;
            scale = 0;
        }
        let disp: i64 = match md {
            0 if base.is_none() => {
                let d = i32::from_le_bytes(code[len..len + 4].try_into().unwrap());
                len += 4;
                d as i64
            }
            0 => 0,
            1 => {
                let d = code[len] as i8;
                len += 1;
                d as i64
            }
            _ => {
                let d = i32::from_le_bytes(code[len..len + 4].try_into().unwrap());
                len += 4;
                d as i64
            }
        };
        let b = base.map_or(0, |b| g[greg(b)] as u64);
        let i = index.map_or(0, |i| (g[greg(i)] as u64) << scale);
        Some(Mem {
            addr: b.wrapping_add(disp as u64),
            stride: i,
        })
    } else {
        None
    };
    let ok = TILES.with(|t| {
        let t = &mut *t.get();
        match (op, pp, &mem) {
            (0x49, 0, Some(m)) => {
                // LDTILECFG
                let cfg = std::slice::from_raw_parts(m.addr as *const u8, 64);
                assert_eq!(cfg[0], 1, "emulator: palette {} not handled", cfg[0]);
                for i in 0..8 {
                    t.colsb[i] = u16::from_le_bytes([cfg[16 + 2 * i], cfg[17 + 2 * i]]);
                    t.rows[i] = cfg[48 + i];
                    assert!(
                        t.colsb[i] <= 64 && t.rows[i] <= 16,
                        "emulator: bad tile {i}"
                    );
                }
                t.data = [[[0; 64]; 16]; 8];
                true
            }
            (0x49, 0, None) if modrm == 0xc0 => {
                // TILERELEASE
                t.rows = [0; 8];
                t.colsb = [0; 8];
                t.data = [[[0; 64]; 16]; 8];
                true
            }
            (0x49, 3, None) => {
                // TILEZERO
                assert!(
                    t.rows[reg] > 0,
                    "emulator: tilezero of unconfigured tmm{reg}"
                );
                t.data[reg] = [[0; 64]; 16];
                true
            }
            (0x4b, 3, Some(m)) | (0x4b, 1, Some(m)) => {
                // TILELOADD / TILELOADDT1
                assert!(t.rows[reg] > 0, "emulator: load into unconfigured tmm{reg}");
                let cb = t.colsb[reg] as usize;
                for r in 0..t.rows[reg] as usize {
                    let src = (m.addr + r as u64 * m.stride) as *const u8;
                    t.data[reg][r] = [0; 64];
                    std::ptr::copy_nonoverlapping(src, t.data[reg][r].as_mut_ptr(), cb);
                }
                true
            }
            (0x4b, 2, Some(m)) => {
                // TILESTORED
                assert!(t.rows[reg] > 0, "emulator: store of unconfigured tmm{reg}");
                let cb = t.colsb[reg] as usize;
                for r in 0..t.rows[reg] as usize {
                    let dst = (m.addr + r as u64 * m.stride) as *mut u8;
                    std::ptr::copy_nonoverlapping(t.data[reg][r].as_ptr(), dst, cb);
                }
                true
            }
            (0x5c, 2, None) => {
                // TDPBF16PS tmm(reg) += tmm(rm) · tmm(vvvv)
                let (d, a, b) = (reg, rm | (b_ext as usize) << 3, vvvv);
                assert!(d != a && d != b && a != b, "emulator: tiles must differ");
                let (m_rows, n, k) = (
                    t.rows[d] as usize,
                    t.colsb[d] as usize / 4,
                    t.rows[b] as usize,
                );
                assert_eq!(t.rows[a] as usize, m_rows, "emulator: A rows");
                assert_eq!(t.colsb[a] as usize / 4, k, "emulator: A columns vs B rows");
                assert_eq!(t.colsb[b] as usize / 4, n, "emulator: B columns");
                let bf = |tile: usize, row: usize, e: usize| {
                    let bytes = &t.data[tile][row];
                    u16::from_le_bytes([bytes[2 * e], bytes[2 * e + 1]])
                };
                let mut out = t.data[d];
                for mm in 0..m_rows {
                    let mut tmp = [0f32; 32];
                    for kk in 0..k {
                        for nn in 0..n {
                            for h in 0..2 {
                                let x = bf16_daz(bf(a, mm, 2 * kk + h));
                                let y = bf16_daz(bf(b, kk, 2 * nn + h));
                                tmp[2 * nn + h] = daz32(x.mul_add(y, tmp[2 * nn + h]));
                            }
                        }
                    }
                    for nn in 0..n {
                        let cur =
                            f32::from_le_bytes(out[mm][4 * nn..4 * nn + 4].try_into().unwrap());
                        let s = daz32(tmp[2 * nn] + tmp[2 * nn + 1]);
                        let v = daz32(daz32(cur) + s);
                        out[mm][4 * nn..4 * nn + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
                t.data[d] = out;
                true
            }
            _ => false,
        }
    });
    if ok {
        g[libc::REG_RIP as usize] = (rip + len as u64) as i64;
        EMULATED.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

extern "C" fn on_sigill(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes this signal's ucontext; the faulting instruction is ours or not.
    if !unsafe { emulate(ctx as *mut libc::ucontext_t) } {
        eprintln!("SIGILL on an instruction the AMX emulator does not know");
        std::process::abort();
    }
}

/// Installs the emulator unless the CPU runs AMX itself (then nothing to install).
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if amx::usable() {
            eprintln!("cpu_amx: this CPU runs AMX: the tests check the hardware");
            return;
        }
        // SAFETY: installs a handler for SIGILL only; sa is zeroed then filled.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigill as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGILL, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// The shared test values with signed zeros and bf16 denormals (read as zero: DAZ) mixed in.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = common::bf16::values(n, seed);
    for (i, x) in v.iter_mut().enumerate() {
        match i % 89 {
            1 => *x = -0.0,
            2 => *x *= 1e-38, // |x| ≤ 8·1e-38: a bf16 denormal or zero once rounded
            _ => {}
        }
    }
    v
}

/// The AMX path of `linear` (packing x for AMX, panels padded to whole tiles, 32 × 32 blocks)
/// against `amx::model`, bitwise, on shapes with every tail: m and n below, at and past a block
/// (32), k odd, even, below / at / past a tile row (32 elements) and several tiles; f32 and bf16
/// weights; output written into a wider matrix whose extra columns must stay untouched.
#[test]
fn amx_linear_equals_the_sdm_model_bitwise() {
    install();
    for (si, &(m, k, n)) in [
        (1usize, 1usize, 1usize),
        (1, 2, 3),
        (3, 5, 7),
        (16, 32, 16),
        (32, 64, 32),
        (33, 33, 33),
        (31, 95, 65),
        (40, 640, 70),
        (97, 1001, 257),
    ]
    .iter()
    .enumerate()
    {
        let x = values(m * k, 10 + si as u64);
        let w = values(n * k, 50 + si as u64);
        let want = bf16::linear_model_for(Kernel::Amx, &x, Mat::F32(&w), m, k, n);
        let wb: Vec<u16> = w
            .iter()
            .map(|&v| whittle::cpu::convert::round_bits(v))
            .collect();
        let ld = n + 3;
        for weights in [Mat::F32(&w), Mat::Bf16(&wb)] {
            let mut y = vec![f32::NAN; m * ld];
            let packed = PackedRows::new(Kernel::Amx, &x, m, k);
            // SAFETY: the CPU runs AMX or the SIGILL emulator installed above stands in.
            unsafe { bf16::linear_packed_unchecked(Kernel::Amx, &packed, weights, n, &mut y, ld) };
            assert_rows_bitwise(&format!("m={m} k={k} n={n}"), &y, &want, m, n, ld);
        }
    }
    // Where the CPU has no AMX, every tile instruction went through the emulator.
    assert!(amx::usable() || EMULATED.load(Ordering::Relaxed) > 0);
}

/// The AMX Gram (`gram_upper`: both operands packed from token rows, the feature rows
/// transposed 16 token pairs at a time) against `amx::model` of xᵀ·x, bitwise on the upper block
/// triangle, nothing written below it: odd token counts, widths off the block, one block row and
/// several.
#[test]
fn amx_gram_equals_the_sdm_model_bitwise() {
    install();
    for (si, &(t, w, block)) in [
        (1usize, 1usize, 32usize),
        (7, 13, 32),
        (33, 40, 32),
        (64, 100, 64),
        (257, 300, 96),
    ]
    .iter()
    .enumerate()
    {
        let x = values(t * w, 200 + si as u64); // [t, w]
        let xt = transpose(&x, t, w); // [w, t]
        let want = bf16::linear_model_for(Kernel::Amx, &xt, Mat::F32(&xt), w, t, w);
        let ld = w + 2;
        let mut y = vec![f32::NAN; w * ld];
        // SAFETY: the CPU runs AMX or the SIGILL emulator stands in.
        unsafe { bf16::gram_upper_unchecked(Kernel::Amx, &x, t, w, block, &mut y, ld) };
        let what = format!("t={t} w={w} block={block}");
        assert_gram_upper_bitwise(&what, &y, &want, w, ld, block);
    }
}

/// The AMX attention product (`gemm_serial`: strided a, b given as rows of its transpose or
/// row-major, a scale after the sums) against `amx::model`, bitwise, cells outside the [m, n]
/// block of c untouched.
#[test]
fn amx_serial_gemm_equals_the_sdm_model_bitwise() {
    install();
    for (si, &(m, k, n)) in [
        (1usize, 1usize, 1usize),
        (5, 64, 33),
        (64, 256, 96),
        (37, 100, 70),
    ]
    .iter()
    .enumerate()
    {
        let (lda, ldb, ldc) = (k + 5, n.max(k) + 3, n + 2);
        let a = values(m * lda, 300 + si as u64);
        let b = values(n.max(k) * ldb, 400 + si as u64);
        for b_rows in [true, false] {
            let (a_c, bt) = serial_operands(&a, lda, &b, ldb, b_rows, m, k, n);
            let scale = if b_rows { 0.0625 } else { 1.0 };
            let want: Vec<f32> = bf16::linear_model_for(Kernel::Amx, &a_c, Mat::F32(&bt), m, k, n)
                .into_iter()
                .map(|v| if scale != 1.0 { v * scale } else { v })
                .collect();
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: the CPU runs AMX or the SIGILL emulator stands in.
            unsafe {
                bf16::gemm_serial_unchecked(
                    Kernel::Amx,
                    &a,
                    lda,
                    &b,
                    ldb,
                    b_rows,
                    m,
                    n,
                    k,
                    &mut c,
                    ldc,
                    scale,
                )
            };
            let what = format!("m={m} k={k} n={n} b_rows={b_rows}");
            assert_rows_bitwise(&what, &c, &want, m, n, ldc);
        }
    }
}

/// The model itself against exact arithmetic on the rounded inputs: its 16-pair steps keep it
/// within γ_k Σ|x̂·ŵ| (any order of k − 1 additions and k products is), and it is not the
/// `vdpbf16ps` model's single chain — the two kernels' bits differ on real data.
#[test]
fn amx_model_is_within_the_summation_bound_and_differs_from_the_chain() {
    let (m, k, n) = (8, 1000, 8);
    let x = values(m * k, 3);
    let w = values(n * k, 4);
    let y = bf16::linear_model_for(Kernel::Amx, &x, Mat::F32(&w), m, k, n);
    let chain = bf16::linear_model(&x, Mat::F32(&w), m, k, n);
    let r = |v: f32| whittle::cpu::convert::widen(whittle::cpu::convert::round_bits(v)) as f64;
    let u = 2f64.powi(-24);
    let gamma = k as f64 * u / (1.0 - k as f64 * u);
    let mut differ = 0;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut abs) = (0f64, 0f64);
            for kk in 0..k {
                let p = r(x[i * k + kk]) * r(w[j * k + kk]);
                // DAZ: products of bf16 denormals count as zero in both models.
                if r(x[i * k + kk]).abs() >= f32::MIN_POSITIVE as f64
                    && r(w[j * k + kk]).abs() >= f32::MIN_POSITIVE as f64
                {
                    exact += p;
                    abs += p.abs();
                }
            }
            let got = y[i * n + j] as f64;
            assert!(
                (got - exact).abs() <= gamma * abs + 1e-37,
                "[{i}, {j}]: {got} vs {exact} (bound {})",
                gamma * abs
            );
            differ += (y[i * n + j].to_bits() != chain[i * n + j].to_bits()) as usize;
        }
    }
    assert!(
        differ > 0,
        "the AMX and vdpbf16ps models agreed on every output"
    );
}

/// `WHITTLE_CPU_AMX` opts in with `on`/`1` only; without AMX hardware the kernel is never
/// listed, whatever the variable says.
#[test]
fn amx_is_opt_in_and_listed_only_where_usable() {
    assert!(amx::enabled(Some("on")) && amx::enabled(Some("1")));
    assert!(!amx::enabled(None) && !amx::enabled(Some("off")) && !amx::enabled(Some("yes")));
    if !amx::usable() {
        assert!(!Kernel::supported().contains(&Kernel::Amx));
    }
}
