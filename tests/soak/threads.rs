//! The C ABI under many threads: engines of their own on several threads at once, one engine
//! wrongly shared (it must refuse, never corrupt), and cancels racing with the end of a
//! generation.

use crate::driver::{check, last_error, Cancel, Canceller, Driver};
use crate::Setup;
use llmcad::ffi::*;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

const PROMPT: &str = "the cat sat on the mat";

/// Greedy, past EOS, from a fresh conversation: the same tokens every time.
fn fixed(s: &Setup, max_tokens: u32) -> LlmcadGenerateParams {
    let mut p = s.params(max_tokens);
    p.ignore_eos = 1;
    p.reset = 1;
    p
}

/// Each thread its own engine, all at once; the target-only ones must all stream exactly what
/// one engine streams alone.
pub fn many_engines(s: &Setup, canceller: &Canceller) {
    let modes = s.modes();
    let p = fixed(s, 24);
    let reference = {
        let mut keep = Vec::new();
        let mut d = Driver::c(&s.c_options(modes[0], &mut keep));
        d.generate(PROMPT, false, &p, Cancel::Never, canceller)
            .unwrap()
            .ids
    };
    let n = 2 * modes.len();
    std::thread::scope(|scope| {
        for i in 0..n {
            let reference = &reference;
            scope.spawn(move || {
                let mode = modes[i % modes.len()];
                let mut keep = Vec::new();
                let mut d = Driver::c(&s.c_options(mode, &mut keep));
                for round in 0..4 {
                    let out = d
                        .generate(PROMPT, false, &p, Cancel::Never, canceller)
                        .unwrap_or_else(|e| panic!("thread {i} round {round}: {e}"));
                    check(&out, &s.model, 24, Cancel::Never);
                    if i % modes.len() == 0 {
                        assert_eq!(&out.ids, reference, "thread {i} round {round}");
                    }
                }
            });
        }
    });
    println!("{n} engines on {n} threads at once: streams intact");
}

/// Token ids streamed by a raw llmcad_generate, with a hook run at the first token.
struct Hooked<'a> {
    ids: Vec<u32>,
    at_first: &'a dyn Fn(),
}

unsafe extern "C" fn hooked(user: *mut c_void, id: u32, _: *const c_char, _: usize) -> c_int {
    let h = &mut *(user as *mut Hooked);
    if id != LLMCAD_NO_TOKEN {
        h.ids.push(id);
        if h.ids.len() == 1 {
            (h.at_first)();
        }
    }
    0
}

/// llmcad_generate on `engine` (an address, so that threads can share it).
fn raw_generate(
    engine: usize,
    p: &LlmcadGenerateParams,
    at_first: &dyn Fn(),
) -> (LlmcadStatus, Vec<u32>, LlmcadStats) {
    let prompt = CString::new(PROMPT).unwrap();
    let mut h = Hooked {
        ids: Vec::new(),
        at_first,
    };
    let mut stats = LlmcadStats::default();
    let st = unsafe {
        llmcad_generate(
            engine as *const LlmcadEngine,
            prompt.as_ptr(),
            0,
            p,
            Some(hooked),
            (&mut h as *mut Hooked).cast(),
            &mut stats,
        )
    };
    (st, h.ids, stats)
}

/// One engine used by several threads at once, which its contract forbids: the calls that
/// find it busy are refused with a clear error, and the one that runs is not disturbed.
pub fn shared_engine_refuses(s: &Setup) {
    let mut keep = Vec::new();
    let e = unsafe { llmcad_engine_new(&s.c_options(s.modes()[0], &mut keep)) };
    assert!(!e.is_null(), "{}", last_error());
    let engine = e as usize;
    let p = fixed(s, 16);
    let (st, reference, _) = raw_generate(engine, &p, &|| {});
    assert_eq!(st, LlmcadStatus::Ok, "{}", last_error());

    // while a generation is at its first token, another thread tries to generate and reset
    let intruder = || {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (st, ids, _) = raw_generate(engine, &p, &|| {});
                    assert_eq!(st, LlmcadStatus::ErrBusy);
                    assert!(ids.is_empty(), "a refused call streamed {ids:?}");
                    assert!(last_error().contains("busy"), "{}", last_error());
                    assert_eq!(unsafe { llmcad_reset(engine as _) }, LlmcadStatus::ErrBusy);
                })
                .join()
                .unwrap()
        })
    };
    let (st, ids, _) = raw_generate(engine, &p, &intruder);
    assert_eq!(st, LlmcadStatus::Ok, "{}", last_error());
    assert_eq!(ids, reference, "the running generation was disturbed");

    // four threads hammering it: each call runs undisturbed or is refused, nothing else
    let (ok, busy) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let (mut ok, mut busy) = (0, 0);
                    for _ in 0..25 {
                        match raw_generate(engine, &p, &|| {}) {
                            (LlmcadStatus::Ok, ids, stats) => {
                                assert_eq!(ids, reference);
                                assert_eq!(stats.stop, LlmcadStopReason::MaxTokens as i32);
                                ok += 1;
                            }
                            (LlmcadStatus::ErrBusy, ids, _) => {
                                assert!(ids.is_empty());
                                assert!(last_error().contains("busy"), "{}", last_error());
                                busy += 1;
                            }
                            (st, _, _) => panic!("{st:?}: {}", last_error()),
                        }
                    }
                    (ok, busy)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    });
    assert!(ok > 0);
    println!("one engine shared by 4 threads: {ok} calls ran intact, {busy} refused as busy");
    unsafe { llmcad_engine_free(e) };
}

/// Cancels that land just as generations end (from the last tokens on), then a thread that
/// cancels without pause while generations run: each one ends complete or cancelled with a
/// prefix of its tokens, and the engine is never left stuck.
pub fn cancel_races_the_end(s: &Setup, canceller: &Canceller) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(s.seed ^ 0x7261);
    let mut keep = Vec::new();
    let mut d = Driver::c(&s.c_options(s.modes()[0], &mut keep));
    let full = fixed(s, 6);
    let reference = d
        .generate(PROMPT, false, &full, Cancel::Never, canceller)
        .unwrap()
        .ids;
    let ends_well = |ids: &[u32], stop: LlmcadStopReason, max: usize| match stop {
        LlmcadStopReason::MaxTokens => assert_eq!(ids, &reference[..max]),
        LlmcadStopReason::Cancelled => assert_eq!(ids, &reference[..ids.len()]),
        other => panic!("{other:?}"),
    };
    let mut cancelled = 0;
    for _ in 0..300 {
        let max = 1 + rng.next_u32() % 6;
        let from = max - rng.next_u32() % max.min(2);
        let cancel = Cancel::RaceFrom(from as usize);
        let out = d
            .generate(PROMPT, false, &fixed(s, max), cancel, canceller)
            .unwrap();
        check(&out, &s.model, max as usize, cancel);
        ends_well(&out.ids, out.stop, max as usize);
        cancelled += usize::from(out.stop == LlmcadStopReason::Cancelled);
    }
    println!("300 cancels racing with the end of a generation: {cancelled} landed in time");

    let Driver::C(e) = &d else { unreachable!() };
    let engine = *e as usize;
    let stop = AtomicBool::new(false);
    let (mut complete, mut cut) = (0, 0);
    std::thread::scope(|scope| {
        let spammer = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(
                    unsafe { llmcad_cancel(engine as *const LlmcadEngine) },
                    LlmcadStatus::Ok
                );
                std::thread::yield_now();
            }
        });
        for _ in 0..200 {
            let out = d
                .generate(PROMPT, false, &full, Cancel::RaceFrom(0), canceller)
                .unwrap();
            check(&out, &s.model, 6, Cancel::RaceFrom(0));
            ends_well(&out.ids, out.stop, 6);
            match out.stop {
                LlmcadStopReason::Cancelled => cut += 1,
                _ => complete += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        spammer.join().unwrap();
    });
    let out = d
        .generate(PROMPT, false, &full, Cancel::Never, canceller)
        .unwrap();
    assert_eq!(out.ids, reference, "the engine is stuck after the cancels");
    println!("200 generations under a stream of cancels: {complete} complete, {cut} cancelled");
}
