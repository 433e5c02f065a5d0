//! What turns a bad run into a saved crash: a counting global allocator with a per-input cap
//! (an input may make the parsers allocate in proportion to its size, never more), a watchdog
//! for inputs that run too long, and the input being run, to save when either fires.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes live and stopping the process (after saving the
/// input) when an input pushes them past its cap.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static CAP: AtomicUsize = AtomicUsize::new(0);

static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
static TARGET: AtomicUsize = AtomicUsize::new(0);
static TARGET_NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
/// Milliseconds since `EPOCH` at which the running input started; 0 when none runs.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    let limit = LIMIT.load(Relaxed);
    if live > limit {
        // no further checks while the input is saved (saving allocates)
        LIMIT.store(usize::MAX, Relaxed);
        fail(&format!(
            "an allocation of {bytes} bytes takes the memory the input holds past its cap \
             ({} bytes for {} bytes of input)",
            CAP.load(Relaxed),
            INPUT_LEN.load(Relaxed)
        ));
    }
}

/// Where crash inputs go.
fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
}

/// Saves the running input and stops the process: the state after an over-allocation or a
/// hang is not one to continue from.
pub fn fail(why: &str) -> ! {
    let path = save_input();
    eprintln!(
        "fuzz: {why}\n  input saved to {} — replay: cargo test --release --test fuzz -- \
         --replay {}",
        path.display(),
        path.display()
    );
    std::process::abort()
}

/// Writes the running input under the crash directory, named by its target.
pub fn save_input() -> PathBuf {
    let len = INPUT_LEN.load(Relaxed);
    let ptr = INPUT_PTR.load(Relaxed);
    // SAFETY: `run_input` publishes the input for exactly as long as it borrows it
    let input = if ptr.is_null() {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(ptr, len) }
    };
    let name = TARGET_NAMES
        .get()
        .and_then(|n| n.get(TARGET.load(Relaxed)))
        .copied()
        .unwrap_or("unknown");
    let dir = crash_dir().join(name);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("crash-{:016x}.bin", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Starts the watchdog: an input that uses more than `limit` of CPU time (or, blocked, ten
/// times that in wall time) is saved and the process stops. CPU time, not wall time: on a
/// machine busy with other work an input may wait long without being slow.
pub fn start_watchdog(names: Vec<&'static str>, limit: Duration) {
    TARGET_NAMES.set(names).ok();
    now_ms();
    std::thread::spawn(move || {
        let (mut seen, mut cpu_at_start) = (0, 0.0);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let started = STARTED_MS.load(Relaxed);
            if started != seen {
                // inputs shorter than one period are never looked at
                (seen, cpu_at_start) = (started, cpu_seconds());
                continue;
            }
            let cpu = cpu_seconds() - cpu_at_start;
            let wall = (now_ms() - started) as f64 / 1000.0;
            if started != 0 && (cpu > limit.as_secs_f64() || wall > 10.0 * limit.as_secs_f64()) {
                LIMIT.store(usize::MAX, Relaxed);
                fail(&format!(
                    "an input ran for {cpu:.1} s of CPU time, {wall:.1} s in all (a hang)"
                ));
            }
        }
    });
}

/// The CPU time this process has used (Linux: /proc/self/stat, in 1/100 s ticks; elsewhere
/// 0, leaving the wall-time limit).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // after the command name in parentheses: state is field 3, utime 14, stime 15
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `body` on `input` of target number `target` with at most `cap` bytes of memory
/// allocated beyond what was live before; a panic is returned as its message.
pub fn run_input(
    target: usize,
    input: &[u8],
    cap: usize,
    body: impl FnOnce(&[u8]),
) -> Result<(), String> {
    TARGET.store(target, Relaxed);
    INPUT_PTR.store(input.as_ptr() as *mut u8, Relaxed);
    INPUT_LEN.store(input.len(), Relaxed);
    CAP.store(cap, Relaxed);
    LIMIT.store(LIVE.load(Relaxed).saturating_add(cap), Relaxed);
    STARTED_MS.store(now_ms(), Relaxed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(input)));
    STARTED_MS.store(0, Relaxed);
    LIMIT.store(usize::MAX, Relaxed);
    let result = result.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    });
    if result.is_err() {
        save_input();
    }
    INPUT_PTR.store(std::ptr::null_mut(), Relaxed);
    result
}
