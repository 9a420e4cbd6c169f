//! `--device auto|cpu|cuda[:N]` through the CLI, on whatever machine runs the tests. Without a
//! usable GPU (this includes a CPU-only build), `auto` must run on the CPU and say why, and an
//! explicit `cuda` must fail with exit code 1 and name the cause. With a GPU, `auto` must pick
//! it. A bad value must name `--device`. bench and generate follow the device too (the GPU
//! engine when `auto` finds a GPU); only `bench --forward` stays on the CPU.

mod common;
use common::*;
use serde_json::Value;

use common::run_any_device as run;

/// Why `auto` should fall back to the CPU here (None: a usable GPU is present).
fn no_gpu_reason() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        whittle::cuda::is_available().err()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some("this whittle was built without CUDA".into())
    }
}

fn model() -> String {
    fixture("tiny-gemma3").to_str().unwrap().to_string()
}

fn text() -> String {
    fixture("eval-text.txt").to_str().unwrap().to_string()
}

fn eval(device: Option<&str>) -> (i32, String, String) {
    let (m, t) = (model(), text());
    let mut args = Vec::new();
    if let Some(d) = device {
        args.extend(["--device", d]);
    }
    args.extend([
        "eval",
        &m,
        "--text",
        &t,
        "--seq",
        "32",
        "--windows",
        "2",
        "--json",
    ]);
    run(&args)
}

fn metrics(stdout: &str) -> Value {
    let mut v: Value = serde_json::from_str(stdout).unwrap();
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn auto_runs_and_names_the_device() {
    let (code, out, err) = eval(Some("auto"));
    assert_eq!(code, 0, "{err}");
    assert!(metrics(&out)["ppl"].as_f64().unwrap().is_finite());
    match no_gpu_reason() {
        None => assert!(err.contains("device: cuda:"), "{err}"),
        Some(reason) => {
            assert!(err.contains("device: cpu ("), "{err}");
            assert!(err.contains(&reason), "the reason is missing: {err}");
            // SAFETY: only attempts a dlopen of libcuda.
            #[cfg(feature = "cuda")]
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                assert!(err.contains("no NVIDIA driver found"), "{err}");
            }
            assert!(
                err.contains("loaded") && err.contains("(cpu, f32)"),
                "{err}"
            );
        }
    }
}

#[test]
fn without_a_gpu_auto_and_the_default_equal_cpu() {
    if no_gpu_reason().is_none() {
        eprintln!("skipped: a GPU is present, so auto runs there");
        return;
    }
    let (c0, cpu, e0) = eval(Some("cpu"));
    assert_eq!(c0, 0, "{e0}");
    assert!(e0.contains("device: cpu\n"), "{e0}");
    for dev in [Some("auto"), None] {
        let (c, out, e) = eval(dev);
        assert_eq!(c, 0, "{e}");
        assert_eq!(metrics(&out), metrics(&cpu), "--device {dev:?}");
    }
}

#[test]
fn explicit_cuda_without_a_gpu_fails_cleanly() {
    let Some(reason) = no_gpu_reason() else {
        eprintln!("skipped: a GPU is present");
        return;
    };
    let (m, t) = (model(), text());
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("out");
    let o = o.to_str().unwrap();
    for dev in ["cuda", "cuda:0"] {
        let cmds: [Vec<&str>; 4] = [
            vec!["eval", &m, "--text", &t, "--seq", "32"],
            vec![
                "compile",
                &m,
                "-o",
                o,
                "--method",
                "magnitude",
                "--no-repair",
                "--keep-ratio",
                "0.5",
            ],
            vec!["generate", &m, "--prompt", "hello", "--max-new-tokens", "2"],
            vec!["bench", &m, "--quick"],
        ];
        for cmd in cmds {
            let mut args = vec!["--device", dev];
            args.extend(&cmd);
            let (code, out, err) = run(&args);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(out.is_empty(), "{args:?} printed results: {out}");
            assert!(err.contains("--device"), "{args:?}: {err}");
            #[cfg(feature = "cuda")]
            {
                assert!(err.contains(&reason), "{args:?}: {err}");
                // SAFETY: only attempts a dlopen of libcuda.
                if !unsafe { cudarc::driver::sys::is_culib_present() } {
                    assert!(err.contains("no NVIDIA driver found"), "{args:?}: {err}");
                }
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = &reason;
                assert!(
                    err.contains(whittle::device::BUILT_WITHOUT_CUDA),
                    "{args:?}: {err}"
                );
            }
        }
    }
    assert!(
        !d.path().join("out").exists(),
        "compile wrote output after the device error"
    );
}

#[test]
fn bad_device_values_name_the_flag() {
    for bad in ["bogus", "cuda:x", "cuda:", "gpu0", ""] {
        let (code, _, err) = eval(Some(bad));
        assert_ne!(code, 0, "--device {bad:?} was accepted");
        assert!(err.contains("--device"), "--device {bad:?}: {err}");
    }
    // Accepted spellings (parsed before anything runs, so `inspect` shows they parse).
    for ok in ["auto", "cpu", "CPU", "cuda", "cuda:0", "cuda:7", "gpu"] {
        let (code, _, err) = run(&["--device", ok, "inspect", &model()]);
        assert_eq!(code, 0, "--device {ok}: {err}");
    }
}

#[test]
fn compile_reports_the_backend_it_ran_on() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("out");
    let (m, t) = (model(), text());
    let (code, _, err) = run(&[
        "--device",
        "auto",
        "compile",
        &m,
        "-o",
        o.to_str().unwrap(),
        "--keep-ratio",
        "0.5",
        "--calib",
        &t,
        "--seq",
        "16",
        "--samples",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(o.join("whittle_report.json")).unwrap()).unwrap();
    let backend = report["backend"].as_str().unwrap();
    match no_gpu_reason() {
        Some(_) => {
            assert!(err.contains("device: cpu ("), "{err}");
            assert!(backend.starts_with("cpu ("), "{backend}");
            assert_eq!(report["solver"], "cpu");
        }
        None => {
            assert!(err.contains("device: cuda:"), "{err}");
            assert!(
                backend.starts_with("cuda:") && backend.ends_with("(bf16)"),
                "{backend}"
            );
            assert_eq!(report["solver"], "cuda");
        }
    }
}

#[test]
fn generate_and_bench_follow_the_device() {
    let m = model();
    let gpu = no_gpu_reason().is_none();
    let (code, out, err) = run(&[
        "--device",
        "auto",
        "generate",
        &m,
        "--prompt",
        "hello",
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"tokens\""), "{out}");
    if gpu {
        assert!(err.contains("device: cuda:"), "{err}");
        assert!(err.contains("bf16"), "{err}");
    } else {
        assert!(err.contains("device: cpu"), "{err}");
    }
    let (code, _, err) = run(&["--device", "cpu", "generate", &m, "--prompt", "hi"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("device: cpu\n"), "{err}");
    let (code, out, err) = run(&["--device", "auto", "bench", &m, "--quick", "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    if gpu {
        assert!(err.contains("device: cuda:"), "{err}");
        assert_eq!(report["engine"], "whittle cuda bf16");
        assert!(
            report["device"].as_str().unwrap().starts_with("cuda:"),
            "{report}"
        );
    } else {
        assert!(err.contains("device: cpu"), "{err}");
        assert_eq!(report["engine"], "whittle cpu f32");
        assert_eq!(report["device"], "cpu");
    }
    let (code, out, err) = run(&["--device", "cpu", "bench", &m, "--quick", "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["engine"], "whittle cpu f32");
}

#[test]
fn bench_forward_stays_on_the_cpu() {
    let (m, t) = (model(), text());
    let (code, out, err) = run(&[
        "--device",
        "auto",
        "bench",
        &m,
        "--forward",
        "--text",
        &t,
        "--seq",
        "16",
        "--windows",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no_head_tok_s"), "{out}");
    assert!(err.contains("device: cpu"), "{err}");
    if no_gpu_reason().is_none() {
        assert!(
            err.contains("bench --forward is not yet on the GPU"),
            "{err}"
        );
    }
}
