//! The soak: many chats of many turns through the C ABI and the Rust API, in every decoding
//! mode, with cancels from another thread, engines created and freed over and over, GPU
//! faults injected on Lavapipe, and the C ABI under many threads. Every generation's stream is
//! checked (no token lost or repeated, a stop reason that fits), the process's RSS is sampled
//! after every freed engine and must stay flat, and no thread may be left behind.
//!
//! CI runs it on the tiny synthetic pair (`cargo test --release --test soak`). On a real model:
//!   LLMCAD_SOAK_MODEL=models/cache/SmolLM2-135M-Instruct.Q4_1.gguf \
//!   LLMCAD_SOAK_DRAFTER=../shared/models/smollm2-135m-draft/smollm2-135m-draft.q8_0.gguf \
//!   cargo test --release --test soak
//! Knobs: LLMCAD_SOAK_TOKENS (generated tokens in the soak, default 10000), LLMCAD_SOAK_CONTEXT
//! (context size, default 128 on the tiny model, 512 on a real one), LLMCAD_SOAK_CYCLES
//! (create/free cycles, default 60), LLMCAD_SOAK_THREADS (CPU threads per engine, default 1),
//! LLMCAD_SOAK_SEED; LLMCAD_SKIP_GPU=1 skips the GPU faults when there is no adapter.

#[path = "../common/mod.rs"]
mod common;
mod driver;
mod probe;
mod threads;

use driver::{check, Cancel, Canceller, Driver};
use llmcad::engine::{Device, EngineOptions};
use llmcad::ffi::*;
use llmcad::model::Model;
use llmcad::quant::DType;
use llmcad::spec::{SpecMode, SpecOptions};
use probe::Sample;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::ffi::CString;
use std::path::PathBuf;

#[global_allocator]
static ALLOC: probe::CountingAlloc = probe::CountingAlloc;

/// Growth of the live Rust heap allowed from the end of the warm-up to any later sample. The
/// heap holds nothing that lives from one engine to the next, so what it gains is a leak: a few
/// hundred bytes per generation, or a few KiB per engine, over the soak's hundreds of
/// generations and dozens of engines goes past it (the BPE word caches left by each freed
/// engine's tokenizer did: 30 KiB per engine).
const HEAP_GROWTH_LIMIT_KIB: u64 = 256;

/// Growth of RSS allowed likewise: memory outside the Rust heap (mappings of the model files,
/// the drivers' buffers). A soak frees 20 engines or more after its warm-up: leaving behind
/// 1 MiB for each (about the tiny pair's weights) goes past it, while what the allocator
/// keeps for itself stays far below.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// Engines (each decoding mode through each API) that run before RSS is expected to be flat.
const WARM_UP_ENGINES: usize = 6;

pub struct Setup {
    pub target: PathBuf,
    pub drafter: Option<PathBuf>,
    pub context: u32,
    pub threads: u32,
    /// The target, for its tokenizer and stop tokens.
    pub model: Model,
    pub seed: u64,
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn setup() -> Setup {
    let (target, drafter, context) = match std::env::var_os("LLMCAD_SOAK_MODEL") {
        Some(m) => (
            PathBuf::from(m),
            std::env::var_os("LLMCAD_SOAK_DRAFTER").map(PathBuf::from),
            512,
        ),
        None => {
            let (t, d) = common::tiny_pair(DType::F32);
            (t, Some(d), 128)
        }
    };
    let model = common::load(&target);
    Setup {
        context: env_num("LLMCAD_SOAK_CONTEXT", context) as u32,
        threads: env_num("LLMCAD_SOAK_THREADS", 1) as u32,
        model,
        seed: env_num("LLMCAD_SOAK_SEED", 17),
        target,
        drafter,
    }
}

/// Decoding modes: target-only, then the speculative ones when there is a drafter.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    TargetOnly,
    Tree,
    Chain,
}

impl Setup {
    fn modes(&self) -> &'static [Mode] {
        if self.drafter.is_some() {
            &[Mode::TargetOnly, Mode::Tree, Mode::Chain]
        } else {
            &[Mode::TargetOnly]
        }
    }

    /// C ABI options; the strings live in `keep`.
    pub fn c_options(&self, mode: Mode, keep: &mut Vec<CString>) -> LlmcadOptions {
        let mut o = std::mem::MaybeUninit::uninit();
        assert_eq!(
            unsafe { llmcad_options_init(o.as_mut_ptr()) },
            LlmcadStatus::Ok
        );
        let mut o = unsafe { o.assume_init() };
        let path = |p: &PathBuf| CString::new(p.to_str().unwrap()).unwrap();
        keep.push(path(&self.target));
        o.target = keep.last().unwrap().as_ptr();
        o.threads = self.threads;
        o.context = self.context;
        // the learned pass times would be written to the user's cache
        keep.push(CString::default());
        o.pass_times_dir = keep.last().unwrap().as_ptr();
        if let (Some(d), Mode::Tree | Mode::Chain) = (&self.drafter, mode) {
            keep.push(path(d));
            o.drafter = keep.last().unwrap().as_ptr();
            o.spec = match mode {
                Mode::Chain => LlmcadSpecMode::Chain,
                _ => LlmcadSpecMode::Tree,
            } as i32;
            o.draft_max = 4;
        }
        o
    }

    fn rust_options(&self, mode: Mode) -> EngineOptions {
        let mut o = EngineOptions::new(&self.target);
        if let (Some(d), Mode::Tree | Mode::Chain) = (&self.drafter, mode) {
            let spec = match mode {
                Mode::Chain => SpecOptions {
                    mode: SpecMode::Chain { k: 4 },
                    ..SpecOptions::default()
                },
                _ => SpecOptions::default(),
            };
            o = o.with_drafter(d, spec);
        }
        o.threads = Some(self.threads as usize);
        o.context = Some(self.context as usize);
        o.pass_store = llmcad::spec::pass_store::PassStore::Off;
        o
    }

    pub fn params(&self, max_tokens: u32) -> LlmcadGenerateParams {
        let mut p = std::mem::MaybeUninit::uninit();
        assert_eq!(
            unsafe { llmcad_generate_params_init(p.as_mut_ptr()) },
            LlmcadStatus::Ok
        );
        let mut p = unsafe { p.assume_init() };
        p.max_tokens = max_tokens;
        p
    }
}

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "mat", "and", "then", "a", "dog", "ran", "why", "is", "sky", "blue",
    "tell", "me", "more", "about", "it", "please",
];

fn sentence(rng: &mut impl Rng, turn: usize) -> String {
    let n = 3 + rng.next_u32() as usize % 10;
    let words: Vec<&str> = (0..n)
        .map(|_| WORDS[rng.next_u32() as usize % WORDS.len()])
        .collect();
    format!("turn {turn}: {}", words.join(" "))
}

/// What the soak counted.
#[derive(Default)]
struct Tally {
    generations: usize,
    tokens: usize,
    cancelled: usize,
    context_full: usize,
    eos: usize,
    dropped_turns: usize,
}

/// Chats of many turns on engines that are freed after a few chats each, in every mode and
/// through both APIs, until `total` tokens were generated; the RSS curve after each engine.
fn soak(s: &Setup, canceller: &Canceller, total: usize) -> (Tally, Vec<Sample>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(s.seed);
    let mut t = Tally::default();
    let mut samples = Vec::new();
    let modes = s.modes();
    let mut engines = 0;
    while t.tokens < total || engines < 2 * WARM_UP_ENGINES {
        let mode = modes[engines % modes.len()];
        let through_c = (engines / modes.len()).is_multiple_of(2);
        let mut keep = Vec::new();
        let mut d = if through_c {
            Driver::c(&s.c_options(mode, &mut keep))
        } else {
            Driver::rust(s.rust_options(mode))
        };
        for _chat in 0..3 {
            let turns = 4 + rng.next_u32() as usize % 9;
            for turn in 0..turns {
                // now and then an answer longer than the turn leaves room for: it fills the
                // context (the other turns drop the oldest ones as the chat outgrows it)
                let max = match rng.next_u32() % 16 {
                    0 => s.context - 4,
                    _ => 4 + rng.next_u32() % (s.context / 4 - 3),
                };
                let mut p = s.params(max);
                p.reset = i32::from(turn == 0);
                p.ignore_eos = i32::from(rng.next_u32().is_multiple_of(2));
                if rng.next_u32() % 4 == 0 {
                    p.temperature = 0.8;
                    p.seed = rng.next_u64();
                }
                let cancel = match rng.next_u32() % 20 {
                    0..=2 => Cancel::AtToken(1 + rng.next_u32() as usize % (max as usize - 1)),
                    3..=4 => Cancel::RaceFrom(1 + rng.next_u32() as usize % max as usize),
                    _ => Cancel::Never,
                };
                let prompt = sentence(&mut rng, turn);
                let out = d
                    .generate(&prompt, true, &p, cancel, canceller)
                    .unwrap_or_else(|e| panic!("{mode:?} turn {turn}: {e}"));
                check(&out, &s.model, max as usize, cancel);
                t.generations += 1;
                t.tokens += out.ids.len();
                t.dropped_turns += out.dropped_turns.unwrap_or(0);
                match out.stop {
                    LlmcadStopReason::Cancelled => t.cancelled += 1,
                    LlmcadStopReason::ContextFull => t.context_full += 1,
                    LlmcadStopReason::Eos => t.eos += 1,
                    LlmcadStopReason::MaxTokens => {}
                }
            }
        }
        drop(d);
        engines += 1;
        samples.extend(Sample::now(engines, t.tokens));
    }
    (t, samples)
}

/// The curve is flat after the warm-up: no later sample is more than the limits above the
/// first one after it.
fn assert_flat(samples: &[Sample]) {
    let Some(base) = samples.get(WARM_UP_ENGINES - 1) else {
        return;
    };
    let later = &samples[WARM_UP_ENGINES - 1..];
    let rss = later.iter().map(|s| s.rss_kib).max().unwrap() - base.rss_kib;
    let heap = later.iter().map(|s| s.heap_kib).max().unwrap() - base.heap_kib;
    println!(
        "after the warm-up: RSS {:.1} MiB, growth {:.1} MiB (limit {} MiB); heap {} KiB, growth {heap} KiB (limit {} KiB)",
        base.rss_kib as f64 / 1024.0,
        rss as f64 / 1024.0,
        RSS_GROWTH_LIMIT_KIB / 1024,
        base.heap_kib,
        HEAP_GROWTH_LIMIT_KIB
    );
    assert!(
        heap <= HEAP_GROWTH_LIMIT_KIB,
        "the heap grew by {heap} KiB after the warm-up: a leak"
    );
    assert!(
        rss <= RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {rss} KiB after the warm-up: a leak"
    );
}

/// Tokenizers loaded, used and dropped leave nothing behind on the thread that used them (the
/// BPE word cache of `tokenizers` is thread-local and outlived its tokenizer: each engine
/// freed left its words on every thread that had encoded with it).
fn tokenizers_leave_nothing(s: &Setup) {
    // 2,000 different words of letters (the pre-tokenizer splits digits apart)
    let word = |i: usize| -> String {
        [i / 676, i / 26 % 26, i % 26]
            .iter()
            .map(|&l| char::from(b'a' + l as u8))
            .collect()
    };
    let words: String = (0..2000).map(|i| format!(" z{}", word(i))).collect();
    let use_one = || {
        let m = common::load(&s.target);
        assert!(!m.tokenizer.encode(&words).unwrap().is_empty());
    };
    use_one();
    let before = probe::heap_kib();
    for _ in 0..10 {
        use_one();
    }
    let growth = probe::heap_kib().saturating_sub(before);
    println!(
        "10 tokenizers loaded, used and dropped: heap {before} -> {} KiB",
        before + growth
    );
    assert!(
        growth < 64,
        "10 dropped tokenizers left {growth} KiB on the heap"
    );
}

/// Engines created, used for a token and freed through the C ABI, again and again: no thread
/// and no memory may stay behind.
fn cycles(s: &Setup, canceller: &Canceller, n: usize) {
    let before = Sample::now(0, 0);
    let mut rss = Vec::new();
    for i in 0..n {
        let mode = s.modes()[i % s.modes().len()];
        let mut keep = Vec::new();
        let mut d = Driver::c(&s.c_options(mode, &mut keep));
        let p = s.params(2);
        let out = d
            .generate("the cat", false, &p, Cancel::Never, canceller)
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        check(&out, &s.model, 2, Cancel::Never);
        drop(d);
        rss.extend(probe::rss_kib());
    }
    if let (Some(before), Some(after)) = (before, Sample::now(n, 0)) {
        println!(
            "{n} engine create/free cycles: threads {} -> {}, RSS {:.1} -> {:.1} MiB (peak {:.1})",
            before.threads,
            after.threads,
            before.rss_kib as f64 / 1024.0,
            after.rss_kib as f64 / 1024.0,
            rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0
        );
        assert_eq!(before.threads, after.threads, "threads left behind");
        // the first engines warm the allocator up; from the second half on nothing may grow
        let half = rss[rss.len() / 2];
        let growth = rss[rss.len() / 2..].iter().max().unwrap() - half;
        assert!(
            growth <= RSS_GROWTH_LIMIT_KIB,
            "RSS grew by {growth} KiB over the second half of the create/free cycles"
        );
    }
}

/// The device is lost in the middle of a chat (injected on Lavapipe): the call that meets it
/// fails with a GPU error and the chat goes on, on the CPU, with intact streams.
fn gpu_faults(s: &Setup, canceller: &Canceller) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(s.seed ^ 0x6470);
    for mode in s.modes() {
        let mut o = s.rust_options(*mode);
        o.device = Device::Gpu;
        let lost_at = 2 + rng.next_u32() as usize % 10;
        o.gpu.fault = Some(llmcad::gpu::Fault::Lost(lost_at));
        let engine = match llmcad::engine::Engine::load(o) {
            Ok(e) => e,
            Err(e) if std::env::var("LLMCAD_SKIP_GPU").as_deref() == Ok("1") => {
                println!("NOTICE: GPU fault injection skipped (LLMCAD_SKIP_GPU=1): {e}");
                return;
            }
            Err(e) => panic!(
                "no GPU adapter ({e}): install mesa-vulkan-drivers, or set LLMCAD_SKIP_GPU=1"
            ),
        };
        let mut d = Driver::Rust(Box::new(engine));
        let mut failed = 0;
        for turn in 0..8 {
            let max = 4 + rng.next_u32() % 12;
            let mut p = s.params(max);
            p.ignore_eos = 1;
            let prompt = sentence(&mut rng, turn);
            match d.generate(&prompt, true, &p, Cancel::Never, canceller) {
                Ok(out) => check(&out, &s.model, max as usize, Cancel::Never),
                Err(e) => {
                    assert!(e.starts_with("GPU"), "{mode:?} turn {turn}: {e}");
                    failed += 1;
                }
            }
        }
        let Driver::Rust(e) = &d else { unreachable!() };
        assert_eq!(
            failed, 1,
            "{mode:?}: the device is lost once, at pass {lost_at}"
        );
        assert!(e.device_name().starts_with("cpu"), "{}", e.device_name());
        println!(
            "GPU lost at pass {lost_at} ({mode:?}): one call failed, the chat went on on the CPU"
        );
    }
}

fn main() {
    let s = setup();
    let total = env_num("LLMCAD_SOAK_TOKENS", 10_000) as usize;
    let n_cycles = env_num("LLMCAD_SOAK_CYCLES", 60) as usize;
    println!(
        "soak: {} (drafter {:?}), context {}, {} thread(s), seed {}",
        s.target.display(),
        s.drafter,
        s.context,
        s.threads,
        s.seed
    );
    let canceller = Canceller::start();
    let threads_at_start = probe::threads();

    tokenizers_leave_nothing(&s);
    cycles(&s, &canceller, n_cycles);

    let (t, samples) = soak(&s, &canceller, total);
    println!(
        "{} generations, {} tokens streamed and checked: {} cancelled, {} ended at EOS, {} filled the context, {} chat turns dropped",
        t.generations, t.tokens, t.cancelled, t.eos, t.context_full, t.dropped_turns
    );
    probe::print_curve(&samples, WARM_UP_ENGINES);
    assert!(t.tokens >= total);
    assert!(t.cancelled > 0, "no generation was cancelled");
    assert!(t.dropped_turns > 0, "no chat outgrew the context");
    assert!(t.context_full > 0, "no answer filled the context");
    assert_flat(&samples);

    threads::many_engines(&s, &canceller);
    threads::shared_engine_refuses(&s);
    threads::cancel_races_the_end(&s, &canceller);

    gpu_faults(&s, &canceller);

    if let (Some(a), Some(b)) = (threads_at_start, probe::threads()) {
        println!("threads: {a} at start, {b} at the end");
        assert_eq!(a, b, "threads left behind");
    }
    println!("soak passed");
}
