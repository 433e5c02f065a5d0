//! What the soak watches in its own process: resident memory and live threads (Linux /proc;
//! elsewhere nothing is measured and nothing is asserted), and the bytes live on the Rust heap
//! (a counting allocator: unlike RSS it tells a leak from what the allocator keeps).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// Bytes live on the heap, in KiB.
pub fn heap_kib() -> u64 {
    (LIVE.load(Relaxed) / 1024) as u64
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Threads of this process.
pub fn threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// One point of the RSS curve.
pub struct Sample {
    pub engines: usize,
    pub tokens: usize,
    pub rss_kib: u64,
    pub heap_kib: u64,
    pub threads: usize,
}

impl Sample {
    pub fn now(engines: usize, tokens: usize) -> Option<Sample> {
        Some(Sample {
            engines,
            tokens,
            rss_kib: rss_kib()?,
            heap_kib: heap_kib(),
            threads: threads()?,
        })
    }
}

/// The curve as a compact table, a few samples per line.
pub fn print_curve(samples: &[Sample], warm_up: usize) {
    println!("RSS curve (sampled after each engine is freed; * = warm-up):");
    println!("  engines  tokens  RSS MiB  heap KiB  threads");
    for (i, s) in samples.iter().enumerate() {
        println!(
            "  {:>7}{} {:>6}  {:>7.1}  {:>8}  {:>7}",
            s.engines,
            if i < warm_up { '*' } else { ' ' },
            s.tokens,
            s.rss_kib as f64 / 1024.0,
            s.heap_kib,
            s.threads
        );
    }
}
