//! The device's f64 linear algebra (kernels/linalg.cu, src/cuda/linalg.rs) against the host
//! reference (src/cpu/linalg.rs, src/compile/prune.rs): GEMM on strided windows, the SPD inverse and its
//! not-positive-definite pivot, greedy OBS selection and the repair product.
//!
//! Ignored without a GPU; `make test-emu` runs them on the CPU through tests/emu.

mod common;
#[path = "common/gpu.rs"]
mod gpu_common;

use gpu_common::gpu;
use whittle::compile::prune::{self, Solver};
use whittle::cpu::linalg;
use whittle::cuda::linalg::{device_gram, dgemm, spd_inverse, View, ViewMut};
use whittle::cuda::DTensor;
use whittle::engine::calib::Gram;

use prune::synthetic_noise as noise;

use common::check::assert_close_f64 as check;

/// Random SPD matrix with a spread of eigenvalues: XᵀX/rows + 0.01·I.
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let rows = n + 7;
    let x = noise(rows * n, seed);
    let mut a = vec![0f64; n * n];
    for r in 0..rows {
        for i in 0..n {
            let xi = x[r * n + i] * (1.0 + (i % 5) as f64);
            for j in 0..n {
                a[i * n + j] += xi * x[r * n + j] * (1.0 + (j % 5) as f64) / rows as f64;
            }
        }
    }
    for i in 0..n {
        a[i * n + i] += 0.01;
    }
    a
}

#[test]
#[ignore = "needs a GPU"]
fn dgemm_matches_host_on_windows() {
    let g = gpu();
    // (m, k, n): one element, ragged, exact tiles, tall-thin and wide-flat.
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (7, 5, 13),
        (64, 16, 64),
        (65, 33, 130),
        (200, 300, 3),
        (3, 70, 257),
    ]
    .iter()
    .enumerate()
    {
        let s = 40 + 3 * i as u64;
        // Inputs are windows at an offset inside larger matrices (row stride > cols).
        let (ar, ac, br, bc, cr, cc) = (m + 3, k + 5, k + 2, n + 4, m + 1, n + 6);
        let a = noise(ar * ac, s);
        let b = noise(br * bc, s + 1);
        let c0 = noise(cr * cc, s + 2);
        let ad = DTensor::from_host(&g, &a, &[ar, ac]).unwrap();
        let bd = DTensor::from_host(&g, &b, &[br, bc]).unwrap();
        for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)] {
            let mut cd = if beta == 0.0 {
                DTensor::from_host(&g, &vec![f64::NAN; cr * cc], &[cr, cc]).unwrap()
            } else {
                DTensor::from_host(&g, &c0, &[cr, cc]).unwrap()
            };
            dgemm(
                &g,
                View::of(&g, &ad, 2, 3, m, k).unwrap(),
                View::of(&g, &bd, 1, 2, k, n).unwrap(),
                ViewMut::of(&g, &mut cd, 1, 4, m, n).unwrap(),
                alpha,
                beta,
            )
            .unwrap();
            let got = cd.to_host(&g).unwrap();
            for r in 0..cr {
                for c in 0..cc {
                    let inside = (1..1 + m).contains(&r) && (4..4 + n).contains(&c);
                    let old = if beta == 0.0 {
                        f64::NAN
                    } else {
                        c0[r * cc + c]
                    };
                    let v = got[r * cc + c];
                    if !inside {
                        assert!(
                            v.to_bits() == old.to_bits(),
                            "{m}x{k}x{n}: ({r},{c}) outside the window was written"
                        );
                        continue;
                    }
                    let (i0, j0) = (r - 1, c - 4);
                    let dot: f64 = (0..k)
                        .map(|p| a[(i0 + 2) * ac + p + 3] * b[(p + 1) * bc + j0 + 2])
                        .sum();
                    let want = alpha * dot + if beta == 0.0 { 0.0 } else { beta * old };
                    assert!(
                        (v - want).abs() <= 1e-12 * (1.0 + k as f64),
                        "{m}x{k}x{n} alpha {alpha} beta {beta}: ({r},{c}) {v} vs {want}"
                    );
                }
            }
        }
    }
    // Shapes that do not chain are refused before any launch.
    let x = DTensor::<f64>::zeros(&g, &[4, 4]).unwrap();
    let mut y = DTensor::<f64>::zeros(&g, &[4, 4]).unwrap();
    let e = dgemm(
        &g,
        View::of(&g, &x, 0, 0, 4, 3).unwrap(),
        View::all(&g, &x),
        ViewMut::all(&g, &mut y),
        1.0,
        0.0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("do not chain"), "{e}");
    assert!(
        View::of(&g, &x, 2, 0, 3, 4).is_err(),
        "window past the rows"
    );
}

#[test]
#[ignore = "needs a GPU"]
fn spd_inverse_matches_host_and_names_the_failing_pivot() {
    let g = gpu();
    for (i, &n) in [1usize, 5, 64, 65, 130, 200].iter().enumerate() {
        let a = spd(n, 300 + i as u64);
        let want = linalg::spd_inverse(&a, n).unwrap();
        let mut ad = DTensor::from_host(&g, &a, &[n, n]).unwrap();
        spd_inverse(&g, &mut ad).unwrap().unwrap();
        let got = ad.to_host(&g).unwrap();
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        check(&format!("inverse n={n}"), &got, &want, 1e-9 * scale, 1e-9);
    }
    // Positive definite up to index 70, then a negative Schur complement: both the host
    // Cholesky and the device sweep stop at the same leading minor.
    let n = 100;
    let mut a = spd(n, 999);
    for j in 0..n {
        a[70 * n + j] = 0.0;
        a[j * n + 70] = 0.0;
    }
    a[70 * n + 70] = -1.0;
    let host = linalg::spd_inverse(&a, n).unwrap_err();
    let mut ad = DTensor::from_host(&g, &a, &[n, n]).unwrap();
    let dev = spd_inverse(&g, &mut ad).unwrap().unwrap_err();
    assert_eq!((host, dev), (70, 70));
}

#[test]
#[ignore = "needs a GPU"]
fn obs_selection_and_repair_match_host() {
    let g = gpu();
    let cuda = Solver::Cuda(g.clone());
    // Several folds of 32, a ragged last block, hidden < 32 and > 32, k = 1.
    for (i, &(n, hidden, k)) in [
        (150usize, 24usize, 40usize),
        (97, 13, 10),
        (64, 40, 32),
        (130, 70, 1),
    ]
    .iter()
    .enumerate()
    {
        let (w, stats) = prune::synthetic_problem(n, hidden, 500 + i as u64);
        for damp in [0.001, 0.01] {
            let host = prune::obs_select(&w, hidden, &stats, k, damp, &Solver::Cpu).unwrap();
            let dev = prune::obs_select(&w, hidden, &stats, k, damp, &cuda).unwrap();
            assert_eq!(dev, host, "n={n} hidden={hidden} k={k} damp={damp}");
            let rh = prune::repair(&w, hidden, &stats, &host, damp, &Solver::Cpu).unwrap();
            let rd = prune::repair(&w, hidden, &stats, &host, damp, &cuda).unwrap();
            let h: Vec<f64> = rh.iter().map(|&x| x as f64).collect();
            let d: Vec<f64> = rd.iter().map(|&x| x as f64).collect();
            check(&format!("repair n={n} k={k}"), &d, &h, 1e-6, 1e-5);
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn device_gram_path_matches_host() {
    let g = gpu();
    let cuda = Solver::Cuda(g.clone());
    for (i, &(n, hidden, k)) in [(150usize, 24usize, 40usize), (97, 13, 10)]
        .iter()
        .enumerate()
    {
        let (w, mut stats) = prune::synthetic_problem(n, hidden, 700 + i as u64);
        // The backend keeps Σ a·aᵀ in f32 on the device: the host gets the same values.
        let g32: Vec<f32> = stats
            .gram_host()
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        stats.gram = Some(Gram::Host(g32.iter().map(|&x| x as f64).collect()));
        let mut dev_stats = stats.clone();
        dev_stats.gram = Some(Gram::Device(device_gram(
            DTensor::from_host(&g, &g32, &[n, n]).unwrap(),
        )));
        for damp in [0.001, 0.01] {
            let host = prune::obs_select(&w, hidden, &stats, k, damp, &Solver::Cpu).unwrap();
            let dev = prune::obs_select(&w, hidden, &dev_stats, k, damp, &cuda).unwrap();
            assert_eq!(dev, host, "n={n} k={k} damp={damp}");
            let rh = prune::repair(&w, hidden, &stats, &host, damp, &Solver::Cpu).unwrap();
            let rd = prune::repair(&w, hidden, &dev_stats, &host, damp, &cuda).unwrap();
            let h: Vec<f64> = rh.iter().map(|&x| x as f64).collect();
            let d: Vec<f64> = rd.iter().map(|&x| x as f64).collect();
            check(&format!("device-Gram repair n={n}"), &d, &h, 1e-6, 1e-5);
        }
        // Only a device Gram matrix and the host solver: an error naming what is missing.
        let e = prune::obs_select(&w, hidden, &dev_stats, k, 0.01, &Solver::Cpu).unwrap_err();
        assert!(e.to_string().contains("Gram matrix"), "{e}");
    }
}
