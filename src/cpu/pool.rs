//! A small persistent thread pool for the CPU forward pass.
//!
//! A decode step runs a few hundred short parallel regions (one per matmul), each only tens of
//! microseconds long, so waking threads through the OS every time would cost more than the work.
//! Workers spin briefly on a generation counter, then sleep on a condition variable; the caller
//! takes part as thread 0 and returns only when every thread has finished.
//!
//! Other processes may hold cores (a phone's background apps, a busy build machine), so whoever
//! waits spins only for a moment and then yields its core (the thread being waited for may be
//! the one that needs it), and work goes out as items that a thread takes when it comes free,
//! not as fixed shares. With one of two cores kept busy by another process, two-thread decode
//! went from 34–43 to 45–50 tokens/s this way (one thread: ~90).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker waits for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);
/// Spins before a waiting thread starts yielding its core to others.
const SPINS_BEFORE_YIELD: u32 = 2000;

/// Waits until `done()`: spins first, then yields the core between checks.
fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per parallel region; workers run the job when it changes.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job, type-erased; valid while `pending > 0` (see `run`).
    job: Mutex<Option<&'static Job>>,
    wake: Condvar,
    sleepers: Mutex<usize>,
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    shutdown: AtomicBool,
}

pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads sharing one pool.
    busy: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1; the caller counts as one of them). Fails when the
    /// OS refuses a thread (a process or memory limit); the threads started so far are stopped.
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        Self::with_spawner(n_threads, |builder, work| builder.spawn(work))
    }

    /// `new` with the thread creation as a parameter, so that tests can make it fail.
    fn with_spawner(
        n_threads: usize,
        mut spawn: impl FnMut(Builder, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>>,
    ) -> std::io::Result<Self> {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleepers: Mutex::new(0),
            panicked: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let mut pool = ThreadPool {
            n_threads,
            shared,
            workers: Vec::with_capacity(n_threads - 1),
            busy: Mutex::new(()),
        };
        for idx in 1..n_threads {
            let shared = pool.shared.clone();
            let builder = Builder::new().name(format!("llmcad-cpu-{idx}"));
            // on failure `pool` drops here, which stops and joins the workers already started
            let handle = spawn(builder, Box::new(move || worker(shared, idx)))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(thread_index)` on every thread of the pool and waits for all of them.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            return f(0);
        }
        let _guard = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let job: &(dyn Fn(usize) + Sync + '_) = &f;
        // SAFETY: the reference is only used by workers between the generation bump below and
        // `pending` reaching zero, and we do not return (or unwind) before that, so `f`
        // outlives every use.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        *self.shared.job.lock().unwrap() = Some(job);
        self.shared
            .pending
            .store(self.n_threads - 1, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if *self.shared.sleepers.lock().unwrap() > 0 {
            self.shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        wait_until(|| self.shared.pending.load(Ordering::Acquire) == 0);
        *self.shared.job.lock().unwrap() = None;
        if let Err(p) = mine {
            resume_unwind(p);
        }
        let worker_panic = self.shared.panicked.lock().unwrap().take();
        if let Some(p) = worker_panic {
            resume_unwind(p);
        }
    }

    /// Runs `f(state, item)` for every item of `0..n_items`, handing items out one at a time:
    /// a thread that starts late (descheduled by another process) leaves its share to the
    /// others instead of holding everyone up. `state` is each thread's scratch.
    pub fn for_each_item<S: Default, F: Fn(&mut S, usize) + Sync>(&self, n_items: usize, f: F) {
        let next = AtomicUsize::new(0);
        self.run(|_| {
            let mut state = S::default();
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= n_items {
                    break;
                }
                f(&mut state, item);
            }
        });
    }
}

fn worker(shared: Arc<Shared>, idx: usize) {
    let mut seen = 0usize;
    loop {
        // wait for a new generation: spin (then yield) for a while, then sleep
        let spin_until = Instant::now() + SPIN;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if Instant::now() < spin_until {
                wait_until(|| {
                    shared.generation.load(Ordering::Acquire) != seen
                        || shared.shutdown.load(Ordering::Acquire)
                        || Instant::now() >= spin_until
                });
                continue;
            }
            let mut sleepers = shared.sleepers.lock().unwrap();
            *sleepers += 1;
            while shared.generation.load(Ordering::Acquire) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                sleepers = shared.wake.wait(sleepers).unwrap();
            }
            *sleepers -= 1;
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap();
        if let Some(job) = job {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(idx))) {
                *shared.panicked.lock().unwrap() = Some(p);
            }
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _s = self.shared.sleepers.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Lets pool threads write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: callers only write disjoint index ranges from different threads (see `slice`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(s: &mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// No two threads may hold overlapping ranges at the same time, and the buffer given to
    /// `new` must outlive the use.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3).unwrap();
        for round in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|i| {
                hits[i].fetch_add(round + 1, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn every_item_runs_once() {
        let pool = ThreadPool::new(4).unwrap();
        for n in [0, 1, 5, 31, 32, 33, 1000] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each_item(n, |_: &mut (), i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_panicking_job_propagates_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_refused_thread_is_an_error_and_stops_the_threads_already_started() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut started = 0;
        let r = ThreadPool::with_spawner(6, |builder, work| {
            if started == 3 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "no more threads",
                ));
            }
            started += 1;
            let live = live.clone();
            live.fetch_add(1, Ordering::SeqCst);
            builder.spawn(move || {
                work();
                live.fetch_sub(1, Ordering::SeqCst);
            })
        });
        let err = r.err().expect("the fourth thread was refused");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(started, 3);
        // the failed construction joined every worker it had started
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
