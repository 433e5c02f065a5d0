//! The library API: conversations continue in the KV caches exactly as if the whole
//! conversation were one prompt, reset forgets, cancel stops from another thread, several
//! engines live side by side, and failures are errors that leave the engine usable.

mod common;

use common::*;
use llmcad::engine::{
    Device, DraftQuantize, Engine, EngineOptions, GenerateRequest, Output, Prompt,
};
use llmcad::generate::StopReason;
use llmcad::quant::DType;
use llmcad::spec::frequent::DraftVocab;
use llmcad::spec::pass_store::PassStore;
use llmcad::spec::SpecOptions;
use llmcad::tokenizer::ChatMessage;
use llmcad::{Error, MemoryBudget};
use std::path::Path;
use std::sync::mpsc;

fn opts(path: &Path) -> EngineOptions {
    let mut o = EngineOptions::new(path);
    o.threads = Some(1);
    // each test learns pass times from scratch, and leaves the user's cache alone
    o.pass_store = PassStore::Off;
    o
}

fn spec_opts() -> EngineOptions {
    let (t, d) = tiny_pair(DType::F32);
    let mut o = opts(&t).with_drafter(
        &d,
        SpecOptions {
            max_nodes: Some(8),
            ..Default::default()
        },
    );
    o.draft_threads = Some(1);
    o
}

fn req(p: Prompt, n: usize) -> GenerateRequest {
    let mut r = GenerateRequest::new(p);
    r.options.max_tokens = n;
    r.options.ignore_eos = true;
    r
}

fn run(e: &mut Engine, r: &GenerateRequest) -> Output {
    let mut streamed = Vec::new();
    let mut text = String::new();
    let out = e
        .generate(r, &mut |ev| {
            streamed.extend(ev.id);
            text.push_str(ev.text);
            true
        })
        .unwrap();
    assert_eq!(streamed, out.tokens);
    assert_eq!(text, out.text);
    out
}

fn tokens(p: &[u32]) -> Prompt {
    Prompt::Tokens(p.to_vec())
}

/// Continuing a conversation gives what one prompt holding the whole conversation gives.
fn continuing_equals_one_prompt(o: EngineOptions, penalty: f32) {
    let mut e = Engine::load(o.clone()).unwrap();
    let p1 = e.model().encode_prompt("the cat sat").unwrap();
    let p2 = e.tokenizer().encode(" on the mat").unwrap();
    let with = |mut r: GenerateRequest| {
        r.options.sampling.repeat_penalty = penalty;
        r
    };
    let a = run(&mut e, &with(req(tokens(&p1), 5)));
    let b = run(&mut e, &with(req(tokens(&p2), 7)));
    assert_eq!(
        b.stats.prompt_tokens,
        if penalty == 1.0 {
            p2.len() + 1
        } else {
            b.stats.prompt_tokens
        }
    );
    let mut whole = p1.clone();
    whole.extend(&a.tokens);
    whole.extend(&p2);
    assert_eq!(e.history(), [whole.clone(), b.tokens.clone()].concat());
    let mut fresh = Engine::load(o).unwrap();
    let c = run(&mut fresh, &with(req(tokens(&whole), 7)));
    assert_eq!(b.tokens, c.tokens);
    // reset forgets: the first turn again gives the first answer
    e.reset();
    assert!(e.history().is_empty());
    assert_eq!(run(&mut e, &with(req(tokens(&p1), 5))).tokens, a.tokens);
    // and so does a request with reset set
    let mut r = with(req(tokens(&p1), 5));
    r.reset = true;
    assert_eq!(run(&mut e, &r).tokens, a.tokens);
}

#[test]
fn continuing_equals_one_prompt_target_only() {
    continuing_equals_one_prompt(opts(&tiny_f32().gguf), 1.0);
}

#[test]
fn continuing_equals_one_prompt_with_a_repetition_penalty() {
    continuing_equals_one_prompt(opts(&tiny_f32().gguf), 1.3);
}

#[test]
fn continuing_equals_one_prompt_speculative() {
    continuing_equals_one_prompt(spec_opts(), 1.0);
}

#[test]
fn speculation_gives_the_target_only_tokens() {
    let mut plain = Engine::load(opts(&tiny_pair(DType::F32).0)).unwrap();
    let mut spec = Engine::load(spec_opts()).unwrap();
    // a drafter restricted to a few frequent tokens: drafts it cannot make only shorten paths
    let mut o = spec_opts();
    o.spec.as_mut().unwrap().draft_vocab = DraftVocab::Top(40);
    let mut restricted = Engine::load(o).unwrap();
    for p in ["in the", " and then", " the end"] {
        let r = req(Prompt::Text(p.into()), 12);
        let (a, b) = (run(&mut plain, &r), run(&mut spec, &r));
        assert_eq!(a.tokens, b.tokens, "{p:?}");
        assert!(a.spec.is_none() && b.spec.is_some());
        let c = run(&mut restricted, &r);
        assert_eq!(
            a.tokens, c.tokens,
            "{p:?} with a restricted drafter vocabulary"
        );
    }
}

/// Trees sized by cost learn the verifier's pass times from the passes they run (a first
/// plain round times a one-node pass), carry them to the next generation, and keep them for
/// the next process, which then speculates from its first round.
#[test]
fn pass_times_are_learned_carried_and_kept() {
    let dir = std::env::temp_dir().join(format!("llmcad-engine-pass-times-{}", std::process::id()));
    let mut o = spec_opts();
    o.spec.as_mut().unwrap().max_nodes = None;
    o.pass_store = PassStore::Dir(dir.clone());
    let times = |out: &Output| out.spec.as_ref().unwrap().pass_times.clone().unwrap();
    let mut e = Engine::load(o.clone()).unwrap();
    let first = run(&mut e, &req(Prompt::Text("in the".into()), 6));
    assert!(
        first.spec.as_ref().unwrap().plain_rounds >= 1,
        "nothing known: a plain round first"
    );
    let learned = times(&first);
    assert!(learned.points().iter().any(|&(n, _)| n == 1));
    let second = run(&mut e, &req(Prompt::Text(" and then".into()), 6));
    assert!(times(&second).points().len() >= learned.points().len());
    // a new process (engine) with the same store starts from the kept times
    let kept: Vec<_> = std::fs::read_dir(dir.join("pass-times")).unwrap().collect();
    assert_eq!(kept.len(), 1);
    let kept_sizes: Vec<usize> = times(&second).points().iter().map(|p| p.0).collect();
    let mut again = Engine::load(o.clone()).unwrap();
    let third = times(&run(&mut again, &req(Prompt::Text("in the".into()), 6)));
    let sizes: Vec<usize> = third.points().iter().map(|p| p.0).collect();
    assert!(
        kept_sizes.iter().all(|n| sizes.contains(n)),
        "{kept_sizes:?} kept, {sizes:?} after"
    );
    // and without a store, nothing is kept
    std::fs::remove_dir_all(&dir).unwrap();
    o.pass_store = PassStore::Off;
    let mut off = Engine::load(o).unwrap();
    run(&mut off, &req(Prompt::Text("in the".into()), 6));
    assert!(!dir.exists());
}

/// By default a drafter stored with more bits per weight is requantized to Q4_0 into the
/// cache directory, and loads as stored where there is none (requantizing at every load would
/// cost more than it saves); one with nothing to requantize writes nothing. Lossless either way.
#[test]
fn the_default_drafter_quantization_needs_a_cache_directory() {
    let dir = std::env::temp_dir().join(format!("llmcad-engine-auto-{}", std::process::id()));
    let kept_files =
        || -> usize { std::fs::read_dir(dir.join("requantized")).map_or(0, |d| d.count()) };
    let prompt = || req(Prompt::Text("in the".into()), 12);
    for (stored, kept_as) in [(DType::F32, DType::Q4_0), (DType::Q4_0, DType::Q4_0)] {
        let (t, d) = tiny_pair(stored);
        let mut o = opts(&t).with_drafter(
            &d,
            SpecOptions {
                max_nodes: Some(8),
                ..Default::default()
            },
        );
        assert_eq!(o.draft_quantize, DraftQuantize::Auto);
        o.pass_store = PassStore::Dir(dir.clone());
        let mut kept = Engine::load(o.clone()).unwrap();
        assert_eq!(kept.drafter().unwrap().weights.layers[0].wq.dtype, kept_as);
        assert_eq!(kept_files(), usize::from(stored != kept_as), "{stored}");
        o.pass_store = PassStore::Off;
        let as_stored = Engine::load(o.clone()).unwrap();
        assert_eq!(
            as_stored.drafter().unwrap().weights.layers[0].wq.dtype,
            stored
        );
        let mut plain = o;
        plain.spec = None;
        let want = run(&mut Engine::load(plain).unwrap(), &prompt()).tokens;
        assert_eq!(run(&mut kept, &prompt()).tokens, want, "{stored}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A drafter requantized at load is written to the cache directory once and read from there
/// by the next process: the same bytes as requantizing in memory, and still lossless.
#[test]
fn a_requantized_drafter_is_kept_for_the_next_process() {
    let dir = std::env::temp_dir().join(format!("llmcad-engine-requant-{}", std::process::id()));
    let mut o = spec_opts();
    o.draft_quantize = DraftQuantize::To(DType::Q4_0);
    o.pass_store = PassStore::Dir(dir.clone());
    let kept_files = || -> Vec<_> {
        std::fs::read_dir(dir.join("requantized"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let mut first = Engine::load(o.clone()).unwrap();
    let kept = kept_files();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let written = std::fs::metadata(&kept[0]).unwrap().modified().unwrap();
    let second = Engine::load(o.clone()).unwrap();
    assert_eq!(
        std::fs::metadata(&kept[0]).unwrap().modified().unwrap(),
        written
    );
    o.pass_store = PassStore::Off;
    let in_memory = Engine::load(o.clone()).unwrap();
    for e in [&first, &second] {
        let (a, b) = (
            &e.drafter().unwrap().weights,
            &in_memory.drafter().unwrap().weights,
        );
        assert_eq!(a.layers[0].wq.dtype, DType::Q4_0);
        assert_eq!(&*a.layers[0].wq.data, &*b.layers[0].wq.data);
        assert_eq!(&*a.head.data, &*b.head.data);
    }
    let mut plain = o;
    plain.spec = None;
    let prompt = || req(Prompt::Text("in the".into()), 12);
    let want = run(&mut Engine::load(plain).unwrap(), &prompt()).tokens;
    assert_eq!(run(&mut first, &prompt()).tokens, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chat_turns_continue_the_rendered_conversation() {
    let o = opts(&tiny_f32().gguf);
    let mut e = Engine::load(o.clone()).unwrap();
    let user = |t: &str| ChatMessage::new("user", t);
    let a = run(&mut e, &req(Prompt::Chat(vec![user("hello there")]), 6));
    let b = run(&mut e, &req(Prompt::Chat(vec![user("and the cat?")]), 6));
    let conversation = [
        user("hello there"),
        ChatMessage::new("assistant", a.text.clone()),
        user("and the cat?"),
    ];
    let text = e
        .model()
        .chat_template
        .as_ref()
        .unwrap()
        .render(&conversation, true)
        .unwrap();
    let mut fresh = Engine::load(o).unwrap();
    let c = run(&mut fresh, &req(Prompt::Text(text), 6));
    assert_eq!(b.tokens, c.tokens);
    assert_eq!(e.history(), fresh.history());
}

/// A chat that outgrows the context drops its oldest turns and goes on; a turn that alone
/// leaves too little room fills the context and says so; the engine stays usable.
fn long_chat_stays_within_the_context(mut o: EngineOptions) {
    o.context = Some(96);
    let mut e = Engine::load(o).unwrap();
    let context = e.context_size();
    let chat = |text: &str| {
        Prompt::Chat(vec![ChatMessage::new(
            "user",
            format!("{text} the cat sat on the mat"),
        )])
    };
    let system = Prompt::Chat(vec![ChatMessage::new("system", "Be brief.")]);
    run(&mut e, &req(system, 2));
    let mut dropped = 0;
    for turn in 0..12 {
        let out = run(&mut e, &req(chat(&format!("turn {turn}:")), 16));
        assert_eq!(out.stop, StopReason::MaxTokens);
        assert_eq!(out.tokens.len(), 16);
        assert!(
            e.history().len() <= context,
            "{} > {context}",
            e.history().len()
        );
        dropped += out.dropped_turns;
    }
    assert!(dropped > 0, "twelve turns of ~30 tokens fit in {context}");
    // what the engine holds is what the template renders for the turns it kept (the system
    // message among them)
    let kept = e.history().to_vec();
    let text = e.tokenizer().decode(&kept).unwrap();
    assert!(text.contains("Be brief."), "{text}");
    assert!(!text.contains("turn 0:"), "{text}");

    // a turn that alone leaves less room than asked for: the answer fills the context
    let out = run(&mut e, &req(chat("and then"), context - 8));
    assert_eq!(out.stop, StopReason::ContextFull);
    assert!(!out.tokens.is_empty() && out.context_tokens + out.tokens.len() <= context);
    // more than the whole context, or a raw prompt that does not fit: an error that changes
    // nothing
    let before = e.history().to_vec();
    assert!(matches!(
        e.generate(&req(chat("hi"), context + 1), &mut |_| true),
        Err(Error::ContextOverflow { .. })
    ));
    assert!(matches!(
        e.generate(&req(Prompt::Text("the cat ".repeat(60)), 8), &mut |_| true),
        Err(Error::ContextOverflow { .. })
    ));
    assert_eq!(e.history(), before);
    // and the chat goes on
    let out = run(&mut e, &req(chat("again"), 8));
    assert_eq!(out.stop, StopReason::MaxTokens);
    assert!(out.dropped_turns > 0);
}

#[test]
fn long_chat_stays_within_the_context_target_only() {
    long_chat_stays_within_the_context(opts(&tiny_pair(DType::F32).0));
}

#[test]
fn long_chat_stays_within_the_context_tree_speculation() {
    long_chat_stays_within_the_context(spec_opts());
}

#[test]
fn long_chat_stays_within_the_context_chain_speculation() {
    let mut o = spec_opts();
    o.spec.as_mut().unwrap().mode = llmcad::spec::SpecMode::Chain { k: 3 };
    long_chat_stays_within_the_context(o);
}

#[test]
fn cancel_from_another_thread_stops_at_the_next_token() {
    for o in [opts(&tiny_f32().gguf), spec_opts()] {
        let mut e = Engine::load(o).unwrap();
        let full = run(&mut e, &req(Prompt::Text("the cat".into()), 30));
        let handle = e.cancel_handle();
        let (to_ui, ui) = mpsc::channel::<()>();
        let (to_gen, done) = mpsc::channel::<()>();
        let ui = std::thread::spawn(move || {
            ui.recv().unwrap();
            handle.cancel();
            to_gen.send(()).unwrap();
        });
        let mut seen = 0;
        let mut r = req(Prompt::Text("the cat".into()), 30);
        r.reset = true;
        let cut = e
            .generate(&r, &mut |ev| {
                seen += ev.id.is_some() as usize;
                if seen == 5 && ev.id.is_some() {
                    to_ui.send(()).unwrap();
                    done.recv().unwrap();
                }
                true
            })
            .unwrap();
        ui.join().unwrap();
        assert_eq!(cut.stop, StopReason::Cancelled);
        assert_eq!(cut.tokens, full.tokens[..5]);
        // a cancel does not outlive its generation: the next one runs to the end
        let again = run(&mut e, &r);
        assert_eq!(again.stop, StopReason::MaxTokens);
        assert_eq!(again.tokens, full.tokens);
    }
}

#[test]
fn the_callback_can_stop_generation() {
    let mut e = Engine::load(opts(&tiny_f32().gguf)).unwrap();
    let mut n = 0;
    let out = e
        .generate(&req(Prompt::Text("the cat".into()), 30), &mut |_| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!((out.stop, out.tokens.len()), (StopReason::Cancelled, 3));
}

#[test]
fn two_engines_run_side_by_side() {
    let work = |o: EngineOptions, p: &'static str| {
        move || {
            let mut e = Engine::load(o).unwrap();
            (0..3)
                .map(|_| run(&mut e, &req(Prompt::Text(p.into()), 8)).tokens)
                .collect::<Vec<_>>()
        }
    };
    let (a, b) = (
        work(opts(&tiny_f32().gguf), "the cat"),
        work(spec_opts(), "in the"),
    );
    let alone = (a.clone()(), b.clone()());
    let (ta, tb) = (std::thread::spawn(a), std::thread::spawn(b));
    assert_eq!((ta.join().unwrap(), tb.join().unwrap()), alone);
}

#[test]
fn failures_are_errors_and_leave_the_engine_usable() {
    let err = |o: EngineOptions| Engine::load(o).err().expect("should fail").to_string();
    assert!(err(opts(Path::new("/nonexistent/m.gguf"))).contains("/nonexistent/m.gguf"));
    let mut o = opts(&tiny_f32().gguf);
    o.spec = Some(SpecOptions::default());
    assert!(err(o).contains("drafter"));
    let mut o = opts(&tiny_f32().gguf);
    o.device = Device::Gpu;
    o.gpu.fault = Some(llmcad::gpu::Fault::Adapter);
    assert!(matches!(Engine::load(o), Err(Error::Gpu(m)) if m.contains("injected")));

    let mut o = opts(&tiny_f32().gguf);
    o.context = Some(24);
    o.memory_budget = MemoryBudget::Bytes(123 << 20);
    let mut e = Engine::load(o).unwrap();
    assert_eq!(e.memory().budget_bytes, Some(123 << 20));
    assert!(e.memory().weights_bytes > 0 && e.memory().kv_bytes > 0);
    let a = run(&mut e, &req(Prompt::Text("the cat".into()), 8));
    assert_eq!(a.memory_budget, Some(123 << 20));
    let before = e.history().to_vec();
    // the conversation outgrows the context: an error, and the conversation is unchanged
    let r = req(Prompt::Text(" sat on the mat".into()), 16);
    assert!(matches!(
        e.generate(&r, &mut |_| true),
        Err(Error::ContextOverflow { .. })
    ));
    assert_eq!(e.history(), before);
    // an empty prompt continues the conversation
    assert!(e
        .generate(&req(Prompt::Tokens(vec![]), 1), &mut |_| true)
        .is_ok());
    e.reset();
    assert!(matches!(
        e.generate(&req(Prompt::Tokens(vec![]), 1), &mut |_| true),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        run(&mut e, &req(Prompt::Text("the cat".into()), 8)).tokens,
        a.tokens
    );
}

#[test]
fn real_model_answers_and_continues_a_chat() {
    let Some(m) = real_model() else { return };
    let mut o = EngineOptions::new(&m);
    o.precision = llmcad::cpu::Precision::F32;
    let mut e = Engine::load(o.clone()).unwrap();
    let user = |t: &str| Prompt::Chat(vec![ChatMessage::new("user", t)]);
    let mut r = GenerateRequest::new(user("What is the capital of France?"));
    r.options.max_tokens = 32;
    let a = run(&mut e, &r);
    assert_eq!(a.text.trim(), "The capital of France is Paris.");
    assert_eq!(a.stop, StopReason::EndOfSequence);
    let mut r2 = GenerateRequest::new(user("And of Italy?"));
    r2.options.max_tokens = 32;
    let b = run(&mut e, &r2);
    // only the new turn ran, not the conversation again
    assert!(b.stats.prompt_tokens < 20, "{}", b.stats.prompt_tokens);
    let mut fresh = Engine::load(o).unwrap();
    let whole = e.history()[..e.history().len() - b.tokens.len()].to_vec();
    let mut r3 = GenerateRequest::new(Prompt::Tokens(whole));
    r3.options.max_tokens = 32;
    assert_eq!(run(&mut fresh, &r3).tokens, b.tokens);
}

/// The GPU device is lost in the middle of a generation (injected on Lavapipe): the call
/// returns an error, the tokens streamed before it are the GPU run's own (none lost or
/// repeated), and the engine goes on on the CPU.
#[test]
fn device_loss_mid_generation_ends_in_an_error_then_cpu_fallback() {
    let m = tiny_f32();
    let mut o = opts(&m.gguf);
    o.device = Device::Gpu;
    let Ok(mut clean) = Engine::load(o.clone()) else {
        assert_eq!(
            std::env::var("LLMCAD_SKIP_GPU").as_deref(),
            Ok("1"),
            "no GPU adapter"
        );
        return;
    };
    let r = req(tokens(&[5, 6, 7]), 8);
    let want = run(&mut clean, &r).tokens;
    o.gpu.fault = Some(llmcad::gpu::Fault::Lost(3));
    let mut e = Engine::load(o).unwrap();
    let mut streamed = Vec::new();
    let err = e
        .generate(&r, &mut |ev| {
            streamed.extend(ev.id);
            true
        })
        .unwrap_err();
    assert!(matches!(err, Error::Gpu(_)), "{err}");
    assert!(
        !streamed.is_empty() && streamed.len() < want.len(),
        "{streamed:?}"
    );
    assert_eq!(
        streamed,
        want[..streamed.len()],
        "the passes before the loss stand"
    );
    assert!(e.warnings().iter().any(|w| w.contains("on the CPU")));
    assert!(e.device_name().starts_with("cpu"));
    let again = run(&mut e, &r);
    assert_eq!(again.tokens.len(), 8);
}
