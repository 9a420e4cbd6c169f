//! Fuzzing of the input parsers on stable Rust (cargo-fuzz needs nightly): a seeded mutation loop
//! over the committed fixtures, every input run under `catch_unwind` and under a global allocator
//! that fails the case when a single allocation exceeds [`MAX_ALLOC`].
//!
//! Targets (the readers of files a user hands to whittle):
//! - `safetensors_header`: the header check of `SafeFile::open` (in memory), and the invariant
//!   `SafeFile::bytes` relies on (every accepted range lies inside the buffer);
//! - `safetensors_index`: `WeightStore::open` on a folder with `model.safetensors.index.json` and
//!   two shards (the one target that goes through files: /dev/shm when present);
//! - `config`: `ModelConfig::from_json_str` and the per-layer accessors on what it accepts;
//! - `calib_jsonl`: the calibration JSONL reader (`--calib chats.jsonl`) and Gemma's chat
//!   template.
//!
//! Mutations, 1–4 stacked per case: bit flips, random bytes, inserts of random bytes and of
//! per-target tokens, deletes, duplications, splices from another seed, numeric-token replacement
//! (0, -1, 2^32, 2^64, 1e300, 1e-320, …), string-token replacement, and for safetensors edits of
//! the 8-byte header length and of the data section's length. Inputs that parse join the corpus
//! (at most 512), so later cases mutate valid files more than broken ones.
//!
//! `cargo test --release --test fuzz` runs a smoke run (20 000 cases per target, seconds);
//! `WHITTLE_FUZZ_EXECS=10000000 cargo test --release --test fuzz -- --ignored --nocapture`
//! the long one (README, "Fuzzing"). `WHITTLE_FUZZ_SEED` changes the seed. A failing case is
//! written to target/fuzz-failures/ and named with its target, seed and case number; the run
//! is deterministic, so the same seed and count reproduce it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use whittle::checkpoint::chat::{jsonl_calibration_text, ChatTemplate, GEMMA3_TEMPLATE};
use whittle::checkpoint::config::ModelConfig;
use whittle::checkpoint::safetensors::{
    encode_header, parse_header_bytes, Dtype, HeaderEntry, WeightStore,
};
use whittle::rng::Rng;

/// The largest single allocation a target may make. Inputs are at most [`MAX_INPUT`] bytes, so
/// anything near this size is sized from a number in the input, not from its length.
const MAX_ALLOC: usize = 4 << 20;
const MAX_INPUT: usize = 64 << 10;
const SMOKE_EXECS: u64 = 20_000;

// ------------------------------------------------------------------------- bounded allocator

struct Bounded;

thread_local! {
    /// Set while a target runs on this thread (the harness's own allocations are not bounded).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// The largest allocation over the bound in the current case (0 = none).
    static OVER: Cell<usize> = const { Cell::new(0) };
    static PANIC_MSG: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The running target, case and input, for the message of an allocation that aborts.
    static CURRENT: Cell<(&'static str, u64, *const u8, usize)> =
        const { Cell::new(("", 0, std::ptr::null(), 0)) };
}

/// Writes to stderr without allocating (used inside the allocator).
fn raw_eprint(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: p is a valid slice for its length; fd 2 is stderr.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
}

fn fmt_usize(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bound only records.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn note(size: usize) {
    if size > MAX_ALLOC && ARMED.with(Cell::get) {
        OVER.with(|o| o.set(o.get().max(size)));
        // Said now: an allocation the system cannot satisfy aborts before the harness sees it.
        let (name, case, ptr, len) = CURRENT.with(Cell::get);
        // SAFETY: the harness sets CURRENT to its input, alive while the target runs.
        let input = unsafe { std::slice::from_raw_parts(ptr, len.min(600)) };
        let (mut b, mut c) = ([0u8; 20], [0u8; 20]);
        raw_eprint(&[
            b"fuzz: target ",
            name.as_bytes(),
            b" case ",
            fmt_usize(case as usize, &mut c),
            b" asked for ",
            fmt_usize(size, &mut b),
            b" bytes in one allocation (bound 4 MiB); input:\n",
            input,
            b"\n",
        ]);
    }
}

#[global_allocator]
static GLOBAL: Bounded = Bounded;

// ------------------------------------------------------------------------- mutation engine

/// Mutation choices drawn from the library's seeded generator.
trait Pick {
    fn next(&mut self) -> u64;
    fn chance(&mut self, num: u64, den: u64) -> bool;
}

impl Pick for Rng {
    fn next(&mut self) -> u64 {
        self.next_u64()
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "8",
    "63",
    "64",
    "255",
    "256",
    "1024",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "1000000000",
    "9007199254740993",
    "4611686018427387904",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e9",
    "1e18",
    "1e300",
    "-1e300",
    "1e-320",
    "1e400",
    "-0",
    "0.0",
    "0.5",
    "1.5",
    "-0.5",
    "3.4e38",
    "1e-6",
    "00",
    "1.",
    ".5",
    "1e",
    "true",
    "null",
    "\"1\"",
    "[]",
    "{}",
];

const STRINGS: &[&str] = &[
    "\"\"",
    "\"F32\"",
    "\"BF16\"",
    "\"F16\"",
    "\"I64\"",
    "\"I32\"",
    "\"F64\"",
    "\"U8\"",
    "\"BOOL\"",
    "\"F8_E4M3\"",
    "\"gemma2\"",
    "\"gemma3\"",
    "\"gemma3_text\"",
    "\"linear\"",
    "\"default\"",
    "\"dynamic\"",
    "\"sliding_attention\"",
    "\"full_attention\"",
    "\"user\"",
    "\"model\"",
    "\"assistant\"",
    "\"system\"",
    "\"text\"",
    "\"image\"",
    "\"__metadata__\"",
    "\"../etc/passwd\"",
    "\".hidden\"",
    "\"a/b\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"é\"",
    "\"\\n\"",
    "null",
    "0",
    "[]",
    "{}",
    "[\"x\"]",
    "{\"type\":\"text\"}",
];

/// Runs one input; true if it was accepted (it then joins the corpus).
type RunFn = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// One target: its name, seeds, extra tokens to insert, and the function under test.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
    /// Whether inputs start with a safetensors 8-byte length (edited as a number).
    length_prefix: bool,
    run: RunFn,
}

/// Byte spans of numbers (`-?[0-9][0-9.eE+-]*`) and of JSON strings in `s`.
fn token_spans(s: &[u8], numbers: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if numbers
            && (c.is_ascii_digit() || (c == b'-' && s.get(i + 1).is_some_and(u8::is_ascii_digit)))
        {
            let start = i;
            i += 1;
            while i < s.len() && (s[i].is_ascii_digit() || b".eE+-".contains(&s[i])) {
                i += 1;
            }
            out.push((start, i));
        } else if !numbers && c == b'"' {
            let start = i;
            i += 1;
            while i < s.len() && s[i] != b'"' {
                i += if s[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(s.len());
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, t: &Target, corpus: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => {
                            let set = b"{}[]\",:\\0123456789-.eE \n";
                            set[rng.below(set.len())]
                        }
                        _ => b' ' + rng.below(95) as u8,
                    })
                    .collect();
                input.splice(i..i, bytes);
            }
            3 if !t.tokens.is_empty() => {
                let i = rng.below(len + 1);
                let tok = t.tokens[rng.below(t.tokens.len())].clone();
                input.splice(i..i, tok);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let most = if rng.chance(1, 4) { 4096 } else { 16 };
                let n = 1 + rng.below((len - i).min(most));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, chunk);
            }
            6 if !corpus.is_empty() => {
                // Splice: a piece of another input replaces a piece of this one.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - i).min(512));
                    let at = rng.below(len + 1);
                    let cut = rng.below((len - at).min(512) + 1);
                    input.splice(at..at + cut, other[i..i + n].iter().copied());
                }
            }
            7 | 8 => {
                let spans = token_spans(input, true);
                if !spans.is_empty() {
                    let (a, b) = spans[rng.below(spans.len())];
                    let n = NUMBERS[rng.below(NUMBERS.len())];
                    input.splice(a..b, n.bytes());
                }
            }
            9 => {
                let spans = token_spans(input, false);
                if !spans.is_empty() {
                    let (a, b) = spans[rng.below(spans.len())];
                    let s = STRINGS[rng.below(STRINGS.len())];
                    input.splice(a..b, s.bytes());
                }
            }
            10 | 11 if t.length_prefix && len >= 16 => {
                // [0..8) the header length, [8..16) the data section's length (see `header_case`).
                let at = if rng.chance(1, 2) { 0 } else { 8 };
                let old = u64::from_le_bytes(input[at..at + 8].try_into().expect("8 bytes"));
                let new = match rng.below(6) {
                    0 => old.wrapping_add(1 + rng.below(16) as u64),
                    1 => old.wrapping_sub(1 + rng.below(16) as u64),
                    2 => rng.next(),
                    3 => [
                        0,
                        1,
                        7,
                        8,
                        u32::MAX as u64,
                        u64::MAX,
                        100 << 20,
                        (100 << 20) + 1,
                    ][rng.below(8)],
                    4 => (len as u64).wrapping_sub(16),
                    _ => old ^ (1 << rng.below(64)),
                };
                input[at..at + 8].copy_from_slice(&new.to_le_bytes());
            }
            _ => {}
        }
    }
    input.truncate(MAX_INPUT);
}

// ------------------------------------------------------------------------- the loop

#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    accepted: u64,
    panics: u64,
    over_bound: u64,
    secs: f64,
}

fn failure_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures")
}

/// Runs `execs` cases of `t`; stops at the first failure and returns its description.
fn fuzz(t: &mut Target, seed: u64, execs: u64) -> (Stats, Option<String>) {
    let mut rng = Rng::new(seed ^ fnv(t.name));
    let mut corpus: Vec<Vec<u8>> = t.seeds.clone();
    let mut st = Stats::default();
    let start = Instant::now();
    for case in 0..execs {
        if case > 0 && case % 1_000_000 == 0 {
            eprintln!(
                "fuzz: {} {case} cases, {} accepted, {:.0} s",
                t.name,
                st.accepted,
                start.elapsed().as_secs_f64()
            );
        }
        let mut input = corpus[rng.below(corpus.len())].clone();
        // Seeds run as they are first; later cases are mutations.
        if case >= t.seeds.len() as u64 {
            mutate(&mut rng, &mut input, t, &corpus);
        }
        OVER.with(|o| o.set(0));
        PANIC_MSG.with(|m| m.borrow_mut().take());
        CURRENT.with(|c| c.set((t.name, case, input.as_ptr(), input.len())));
        ARMED.with(|a| a.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        ARMED.with(|a| a.set(false));
        st.execs += 1;
        let over = OVER.with(Cell::get);
        let what = match r {
            Err(_) => {
                st.panics += 1;
                let msg = PANIC_MSG
                    .with(|m| m.borrow_mut().take())
                    .unwrap_or_default();
                Some(format!("panicked: {msg}"))
            }
            Ok(_) if over > 0 => {
                st.over_bound += 1;
                Some(format!(
                    "allocated {over} bytes at once (bound {MAX_ALLOC})"
                ))
            }
            Ok(accepted) => {
                if accepted {
                    st.accepted += 1;
                    if corpus.len() < 512 {
                        corpus.push(input.clone());
                    } else {
                        let i = rng.below(corpus.len() - t.seeds.len()) + t.seeds.len();
                        corpus[i] = input.clone();
                    }
                }
                None
            }
        };
        if let Some(what) = what {
            st.secs = start.elapsed().as_secs_f64();
            let dir = failure_dir();
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{}-seed{seed}-case{case}.bin", t.name));
            let _ = std::fs::write(&file, &input);
            let shown = String::from_utf8_lossy(&input[..input.len().min(600)]).into_owned();
            return (
                st,
                Some(format!(
                    "{}: case {case} (seed {seed}) {what}\ninput written to {}\n{shown:?}",
                    t.name,
                    file.display()
                )),
            );
        }
    }
    st.secs = start.elapsed().as_secs_f64();
    (st, None)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Panics inside a target are recorded for the report; any other (a failing assert of the test
/// itself) goes to the default hook as usual.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ARMED.with(Cell::get) {
                return default(info);
            }
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANIC_MSG.with(|m| *m.borrow_mut() = Some(format!("{msg} at {at}")));
        }));
    });
}

// ------------------------------------------------------------------------- targets

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_files(name: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(name))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn tokens(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// A safetensors input as the harness stores it: the file's 8-byte header length and header,
/// preceded by the data section's length (the data bytes themselves are never read by the
/// header check, so they are not copied per case: a zero buffer of that length follows).
fn header_case(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let data_len = (file.len() - 8 - n) as u64;
    let mut out = file[..8].to_vec();
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&file[8..8 + n]);
    out
}

fn small_file(entries: &[(&str, Dtype, &[usize])]) -> Vec<u8> {
    let entries: Vec<HeaderEntry> = entries
        .iter()
        .map(|(n, d, s)| HeaderEntry {
            name: n.to_string(),
            dtype: *d,
            shape: s.to_vec(),
        })
        .collect();
    let data: usize = entries.iter().map(HeaderEntry::nbytes).sum();
    let meta = serde_json::json!({"format": "pt"});
    let mut f = encode_header(&entries, Some(&meta));
    f.resize(f.len() + data, 0);
    f
}

fn header_target() -> Target {
    // Each fixture's header cut to its first tensors (and laid out again): mutating the full
    // headers (5–10 KB, 50+ entries) costs ten times more per case and mostly edits entries
    // that the cut ones already cover.
    let mut seeds: Vec<Vec<u8>> = ["model.safetensors", "reference.safetensors"]
        .iter()
        .flat_map(|n| fixture_files(n))
        .map(|p| {
            let file = std::fs::read(&p).expect("fixture");
            let (_, tensors) = parse_header_bytes(&p, &file).expect("fixture header");
            let entries: Vec<(&str, Dtype, &[usize])> = tensors
                .iter()
                .take(5)
                .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice()))
                .collect();
            header_case(&small_file(&entries))
        })
        .collect();
    seeds.push(header_case(&small_file(&[(
        "input_ids",
        Dtype::I64,
        &[2, 5],
    )])));
    seeds.push(header_case(&small_file(&[
        ("a", Dtype::BF16, &[3, 4]),
        ("b", Dtype::F32, &[]),
        ("c", Dtype::F16, &[0, 7]),
    ])));
    // The file is built in one zeroed buffer: the header at its start, zeros standing in for the
    // data section after it (the check reads its length only), so no case copies the data.
    const MAX_DATA: usize = 1 << 20;
    let mut buf = vec![0u8; 8 + MAX_INPUT + MAX_DATA];
    let mut dirty = 0usize;
    let path = PathBuf::from("fuzz.safetensors");
    Target {
        name: "safetensors_header",
        seeds,
        tokens: tokens(&[
            "\"dtype\":",
            "\"shape\":",
            "\"data_offsets\":",
            "[0,0]",
            "[1,2,3]",
            "\"__metadata__\":{}",
            "\"t\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},",
        ]),
        length_prefix: true,
        run: Box::new(move |input: &[u8]| {
            if input.len() < 16 {
                return false;
            }
            let data_len = u64::from_le_bytes(input[8..16].try_into().expect("8 bytes"));
            let data_len = (data_len as usize).min(MAX_DATA);
            let head = 8 + input.len() - 16;
            buf[..8].copy_from_slice(&input[..8]);
            buf[8..head].copy_from_slice(&input[16..]);
            if dirty > head {
                buf[head..dirty].fill(0);
            }
            dirty = head;
            let buf = &buf[..head + data_len];
            match parse_header_bytes(&path, buf) {
                Ok((start, tensors)) => {
                    // What SafeFile::bytes slices: it must lie inside the file.
                    for t in tensors.values() {
                        let b = &buf[start + t.start..start + t.end];
                        assert_eq!(b.len(), t.shape.iter().product::<usize>() * t.dtype.size());
                    }
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }),
    }
}

fn index_target() -> Target {
    // A folder in memory where possible: the target rewrites the index file on every case.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("whittle-fuzz-index-")
        .tempdir_in(base)
        .expect("temp folder for the index target");
    let shards = [
        (
            "model-00001-of-00002.safetensors",
            small_file(&[
                ("model.embed_tokens.weight", Dtype::BF16, &[8, 4]),
                ("model.norm.weight", Dtype::BF16, &[4]),
            ]),
        ),
        (
            "model-00002-of-00002.safetensors",
            small_file(&[
                ("model.layers.0.mlp.up_proj.weight", Dtype::BF16, &[6, 4]),
                ("model.layers.0.mlp.down_proj.weight", Dtype::F32, &[4, 6]),
            ]),
        ),
    ];
    for (n, bytes) in &shards {
        std::fs::write(dir.path().join(n), bytes).expect("write shard");
    }
    let full = serde_json::json!({
        "metadata": {"total_size": 176},
        "weight_map": {
            "model.embed_tokens.weight": shards[0].0,
            "model.norm.weight": shards[0].0,
            "model.layers.0.mlp.up_proj.weight": shards[1].0,
            "model.layers.0.mlp.down_proj.weight": shards[1].0,
        }
    });
    let one = serde_json::json!({
        "weight_map": {"model.embed_tokens.weight": shards[0].0, "model.norm.weight": shards[0].0}
    });
    let seeds = vec![
        serde_json::to_vec_pretty(&full).expect("json"),
        serde_json::to_vec(&one).expect("json"),
    ];
    let index = dir.path().join("model.safetensors.index.json");
    Target {
        name: "safetensors_index",
        seeds,
        tokens: tokens(&[
            "\"weight_map\":",
            "\"metadata\":",
            "\"model-00001-of-00002.safetensors\"",
            "\"model-00002-of-00002.safetensors\"",
            "\"model.safetensors\"",
            "\"lm_head.weight\":",
            "\"language_model.model.embed_tokens.weight\":",
            ",\"x\":\"model-00001-of-00002.safetensors\"",
        ]),
        length_prefix: false,
        run: Box::new(move |input: &[u8]| {
            let _keep = &dir;
            std::fs::write(&index, input).expect("write index");
            match WeightStore::open(dir.path()) {
                Ok(store) => {
                    for name in store.names().cloned().collect::<Vec<_>>() {
                        let t = store.get_raw(&name).expect("a listed tensor");
                        assert_eq!(t.bytes().len(), t.info.end - t.info.start);
                    }
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }),
    }
}

fn config_target() -> Target {
    let seeds = fixture_files("config.json")
        .iter()
        .map(|p| std::fs::read(p).expect("fixture config"))
        .collect();
    let path = PathBuf::from("config.json");
    Target {
        name: "config",
        seeds,
        tokens: tokens(&[
            "\"num_hidden_layers\":",
            "\"layer_types\":",
            "\"sliding_window_pattern\":",
            "\"_sliding_window_pattern\":",
            "\"rope_parameters\":",
            "\"rope_scaling\":",
            "\"rope_theta\":",
            "\"rope_local_base_freq\":",
            "\"factor\":",
            "\"rope_type\":",
            "\"text_config\":",
            "\"model_type\":",
            "\"head_dim\":",
            "\"num_key_value_heads\":",
            "\"bos_token_id\":",
            "\"query_pre_attn_scalar\":",
            "\"attn_logit_softcapping\":",
            "\"hidden_activation\":",
            "\"tie_word_embeddings\":",
            "\"full_attention\":{},",
        ]),
        length_prefix: false,
        run: Box::new(move |input: &[u8]| {
            // from_dir reads the file with read_to_string: invalid UTF-8 never reaches the parser.
            let Ok(text) = std::str::from_utf8(input) else {
                return false;
            };
            match ModelConfig::from_json_str(text, &path) {
                Ok(cfg) => {
                    for l in 0..cfg.num_layers {
                        let _ = (cfg.rope(l), cfg.window(l));
                    }
                    let _ = (
                        cfg.q_dim(),
                        cfg.kv_dim(),
                        cfg.attn_scale(),
                        cfg.model_type(),
                    );
                    let _ = cfg.embed_scale_f32();
                    let _ = cfg.with_intermediate_size(cfg.intermediate_size / 2 + 1);
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }),
    }
}

fn jsonl_target() -> Target {
    let seeds = tokens(&[
        "{\"text\": \"The river rises in the hills.\"}\n{\"text\": \"It flows north.\"}\n",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello.\"}]}\n",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \" a \"}, {\"type\": \"image\"}]}, {\"role\": \"model\", \"content\": \"b\"}]}\n\n",
        "{\"messages\": [{\"role\": \"system\", \"content\": [{\"type\": \"text\", \"text\": \"sys\"}]}, {\"role\": \"user\", \"content\": \"q\"}]}\r\n{\"text\": \"t\"}",
    ]);
    let path = PathBuf::from("calib.jsonl");
    // Rendered through the Jinja engine with Gemma's template, as a Gemma folder's conversations.
    let gemma = ChatTemplate::new(
        "built-in",
        GEMMA3_TEMPLATE,
        vec![("bos_token".to_string(), "<bos>".to_string())],
    );
    Target {
        name: "calib_jsonl",
        seeds,
        tokens: tokens(&[
            "{\"messages\":[",
            "{\"role\":\"user\",\"content\":\"x\"}",
            "{\"role\":\"model\",\"content\":[]}",
            "{\"type\":\"text\",\"text\":\"y\"}",
            "\"content\":",
            "\"role\":",
            "\"text\":",
            "\n",
            "\r\n",
        ]),
        length_prefix: false,
        run: Box::new(move |input: &[u8]| {
            // read_text rejects invalid UTF-8 before this parser runs.
            let Ok(text) = std::str::from_utf8(input) else {
                return false;
            };
            match jsonl_calibration_text(&path, text, Some(&gemma)) {
                Ok(_) => true,
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }),
    }
}

fn targets() -> Vec<Target> {
    vec![
        header_target(),
        index_target(),
        config_target(),
        jsonl_target(),
    ]
}

fn seed() -> u64 {
    std::env::var("WHITTLE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18)
}

fn run_all(execs: u64) {
    install_panic_hook();
    let seed = seed();
    let mut failures = Vec::new();
    println!("| target | executions | accepted | panics | allocations > 4 MiB | seconds |");
    println!("|---|---:|---:|---:|---:|---:|");
    // One thread per target; each thread's cases are deterministic for a seed.
    let handles: Vec<_> = targets()
        .into_iter()
        .map(|mut t| {
            std::thread::spawn(move || {
                let (st, fail) = fuzz(&mut t, seed, execs);
                (t.name, st, fail)
            })
        })
        .collect();
    for h in handles {
        let (name, st, fail) = h.join().expect("fuzz thread");
        println!(
            "| {name} | {} | {} | {} | {} | {:.0} |",
            st.execs, st.accepted, st.panics, st.over_bound, st.secs
        );
        failures.extend(fail);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn fuzz_smoke() {
    run_all(SMOKE_EXECS);
}

/// The long run (README, "Fuzzing"): `WHITTLE_FUZZ_EXECS` cases per target (default 10⁷).
#[test]
#[ignore]
fn fuzz_long() {
    let execs = std::env::var("WHITTLE_FUZZ_EXECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    run_all(execs);
}

/// The harness itself: a panic and an oversized allocation in a target are reported as failures.
#[test]
fn harness_reports_panics_and_large_allocations() {
    install_panic_hook();
    let mut panicky = Target {
        name: "self_test_panic",
        seeds: vec![b"{\"a\": 1}".to_vec()],
        tokens: vec![],
        length_prefix: false,
        run: Box::new(|input: &[u8]| {
            if input.contains(&b'9') {
                panic!("saw a 9");
            }
            true
        }),
    };
    let (_, fail) = fuzz(&mut panicky, 1, 100_000);
    let fail = fail.expect("the mutations should produce a 9");
    assert!(fail.contains("panicked: saw a 9"), "{fail}");

    let mut greedy = Target {
        name: "self_test_alloc",
        seeds: vec![b"{\"n\": 1}".to_vec()],
        tokens: vec![],
        length_prefix: false,
        run: Box::new(|input: &[u8]| {
            let n: usize = std::str::from_utf8(input)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| v["n"].as_u64())
                .unwrap_or(0) as usize;
            // Sized from the input, as a parser must not (capped so the test itself cannot abort).
            let v: Vec<u8> = Vec::with_capacity(n.min(8 << 20));
            std::hint::black_box(&v);
            true
        }),
    };
    let (_, fail) = fuzz(&mut greedy, 1, 100_000);
    let fail = fail.expect("numeric replacement should reach a size over the bound");
    assert!(fail.contains("bytes at once (bound"), "{fail}");
}

/// What the fuzzer found in the config parser (both fixed in src/checkpoint/config.rs): a layer count that
/// sized a table before any check (abort asking for 2^53 bytes), and a non-object
/// `rope_scaling` that panicked when the parser set its `rope_theta`.
#[test]
fn config_findings_are_clear_errors() {
    let base: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("tiny-gemma2/config.json")).expect("fixture"),
    )
    .expect("json");
    let cases: [(&str, serde_json::Value, &str); 3] = [
        (
            "num_hidden_layers",
            serde_json::json!(9007199254740993u64),
            "num_hidden_layers",
        ),
        (
            "rope_scaling",
            serde_json::json!(5),
            "\"rope_scaling\" must be an object",
        ),
        (
            "rope_scaling",
            serde_json::json!(["linear"]),
            "\"rope_scaling\" must be an object",
        ),
    ];
    for (key, value, want) in cases {
        let mut cfg = base.clone();
        // The legacy spelling (no rope_parameters) is where rope_scaling is read.
        for k in ["layer_types", "rope_parameters"] {
            cfg.as_object_mut().expect("object").remove(k);
        }
        cfg[key] = value.clone();
        let text = cfg.to_string();
        let r = catch_unwind(|| ModelConfig::from_json_str(&text, Path::new("config.json")));
        let err = match r {
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(_)) => panic!("{key} = {value} was accepted"),
            Err(_) => panic!("{key} = {value} panicked"),
        };
        assert!(
            err.contains(want) && err.contains("config.json"),
            "{key} = {value}: {err}"
        );
    }
}
