//! Heap accounting for the memory figures in reports: a global allocator wrapper that the
//! `whittle` binary installs, counting live and peak heap bytes. Memory-mapped weights are page
//! cache, not heap, so the peak heap is what a compile really needs; the OS's own high-water mark
//! (VmHWM, which also counts touched mmap pages) is reported beside it. Also the SIGBUS handler
//! that names a mapped input file truncated under a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

pub struct CountingAlloc;

impl CountingAlloc {
    fn grew(n: usize) {
        let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        let p = System.alloc(layout);
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Peak heap bytes since start, if the counting allocator is installed.
pub fn peak_heap_bytes() -> Option<usize> {
    INSTALLED
        .load(Ordering::Relaxed)
        .then(|| PEAK.load(Ordering::Relaxed))
}

/// The process's resident high-water mark (Linux `VmHWM`, includes touched mmap pages).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory the kernel could hand this process now without swapping (Linux `MemAvailable`).
pub fn available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses a byte count as a user writes it: `8G`, `8GiB`, `512M`, `1.5T`, `1000000` (binary
/// units: K = 1024). None if it is not one.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let b = v * mult;
    (b.is_finite() && b >= 1.0 && b < u64::MAX as f64).then_some(b as u64)
}

/// Mapped input files, for the SIGBUS message: a read of a page that another process truncated
/// away raises SIGBUS, which cannot be turned into an error at the read; the handler names the
/// file and exits instead of dying silently. Fixed-size and lock-free so the handler only loads
/// atomics (async-signal-safe); files past the first `MAPS` are not named.
const MAPS: usize = 256;
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
static MAP_START: [AtomicUsize; MAPS] = [ZERO; MAPS];
static MAP_LEN: [AtomicUsize; MAPS] = [ZERO; MAPS];
static MAP_NAME: [AtomicUsize; MAPS] = [ZERO; MAPS];
static MAP_NAME_LEN: [AtomicUsize; MAPS] = [ZERO; MAPS];
static MAP_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records that `bytes` map `path` (see [`install_sigbus_handler`]).
pub fn register_mapping(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    if bytes.is_empty() || MAP_COUNT.load(Ordering::Relaxed) >= MAPS {
        return;
    }
    let i = MAP_COUNT.fetch_add(1, Ordering::Relaxed);
    if i >= MAPS {
        return;
    }
    // Leaked on purpose: the handler may read it at any time; at most MAPS short paths.
    let name: &'static [u8] = Box::leak(path.as_os_str().as_bytes().to_vec().into_boxed_slice());
    MAP_NAME[i].store(name.as_ptr() as usize, Ordering::Relaxed);
    MAP_NAME_LEN[i].store(name.len(), Ordering::Relaxed);
    MAP_LEN[i].store(bytes.len(), Ordering::Relaxed);
    // Published last: a slot whose start is still 0 matches no address.
    MAP_START[i].store(bytes.as_ptr() as usize, Ordering::Release);
}

fn write_stderr(b: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid slice; async-signal-safe.
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    write_stderr(b"error: ");
    let n = MAP_COUNT.load(Ordering::Relaxed).min(MAPS);
    // Newest first: an address range freed and mapped again belongs to the later file.
    let hit = (0..n).rev().find(|&i| {
        let s = MAP_START[i].load(Ordering::Acquire);
        s != 0 && addr >= s && addr < s + MAP_LEN[i].load(Ordering::Relaxed)
    });
    match hit {
        Some(i) => {
            let p = MAP_NAME[i].load(Ordering::Relaxed) as *const u8;
            let l = MAP_NAME_LEN[i].load(Ordering::Relaxed);
            // SAFETY: p/l were stored from a leaked, never-freed slice before MAP_COUNT covered i.
            write_stderr(unsafe { std::slice::from_raw_parts(p, l) });
            write_stderr(b": ");
        }
        None => write_stderr(b"a memory-mapped input file: "),
    }
    write_stderr(
        b"the file shrank while whittle was reading it (SIGBUS); another process truncated or \
          rewrote it. Nothing was written to the output; rerun on a stable copy.\n",
    );
    // SAFETY: _exit is async-signal-safe; no Rust destructors run (a temp folder left behind is
    // removed by the next run on the same output).
    unsafe { libc::_exit(1) }
}

/// Installs the SIGBUS handler (the binary does this once at start; the library never does).
pub fn install_sigbus_handler() {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO is a well-formed argument;
    // the handler only touches atomics and calls async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}
