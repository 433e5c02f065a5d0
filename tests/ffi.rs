//! The C ABI: the committed header matches src/ffi.rs, the C example builds against the
//! cdylib and streams the same tokens as the Rust API, load progress reaches C callbacks, and
//! bad input gives error codes.

mod common;

use common::*;
use llmcad::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use llmcad::ffi::*;
use llmcad::quant::DType;
use llmcad::spec::SpecOptions;
use llmcad::tokenizer::ChatMessage;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn generated_header() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("src/ffi.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_up_to_date() {
    let path = root().join("include/llmcad.h");
    let want = generated_header();
    if std::env::var("LLMCAD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "include/llmcad.h is out of date with src/ffi.rs: refresh it with\n  \
         LLMCAD_BLESS=1 cargo test --test ffi header_is_up_to_date\nand commit it"
    );
}

/// The directory holding the cdylib (built beside the binary; built on demand otherwise).
fn lib_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_llmcad"))
        .parent()
        .unwrap()
        .to_path_buf();
    let so = dir.join(if cfg!(target_os = "macos") {
        "libllmcad.dylib"
    } else {
        "libllmcad.so"
    });
    if !so.exists() {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["build", "--lib", "--manifest-path"])
            .arg(root().join("Cargo.toml"));
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        if let Some(target) = dir.parent() {
            c.arg("--target-dir").arg(target);
        }
        assert!(c.status().expect("cargo build --lib").success());
    }
    assert!(so.exists(), "{} is missing", so.display());
    dir
}

/// examples/c/stream.c compiled against include/llmcad.h and the cdylib, with $CC (`cc` if
/// unset), or $LLMCAD_CROSS_CC when the tests are cross-compiled (tests/run.sh: the aarch64
/// run under qemu uses aarch64-linux-gnu-gcc).
fn c_example() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let lib = lib_dir();
        let exe = scratch_dir().join("stream");
        let cc = std::env::var("LLMCAD_CROSS_CC")
            .or_else(|_| std::env::var("CC"))
            .unwrap_or_else(|_| "cc".into());
        let o = Command::new(&cc)
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg("-I")
            .arg(root().join("include"))
            .arg(root().join("examples/c/stream.c"))
            .arg("-L")
            .arg(&lib)
            .arg("-lllmcad")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .output()
            .unwrap_or_else(|e| panic!("running {cc}: {e}"));
        assert!(
            o.status.success(),
            "compiling the C example failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        exe
    })
}

/// Runs the C example (through $LLMCAD_CROSS_RUNNER, an emulator command line such as
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`, when set); returns the token ids of each turn and
/// its stderr.
fn run_c(args: &[&str]) -> (Vec<Vec<u32>>, String) {
    let runner = std::env::var("LLMCAD_CROSS_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(c_example());
            c
        }
        None => Command::new(c_example()),
    };
    let o = c.args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    let ids = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    (ids, err)
}

fn rust_tokens(opts: EngineOptions, turns: &[Prompt], n: usize, ignore_eos: bool) -> Vec<Vec<u32>> {
    let mut e = Engine::load(opts).unwrap();
    turns
        .iter()
        .map(|p| {
            let mut r = GenerateRequest::new(p.clone());
            r.options.max_tokens = n;
            r.options.ignore_eos = ignore_eos;
            e.generate(&r, &mut |_| true).unwrap().tokens
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn c_example_streams_the_rust_api_tokens_on_a_tiny_model() {
    let m = &tiny_f32().gguf;
    let (ids, _) = run_c(&[
        s(m),
        "the cat",
        "-n",
        "9",
        "--ignore-eos",
        "-t",
        "1",
        "--then",
        " sat on",
    ]);
    let mut o = EngineOptions::new(m);
    o.threads = Some(1);
    let want = rust_tokens(
        o,
        &[
            Prompt::Text("the cat".into()),
            Prompt::Text(" sat on".into()),
        ],
        9,
        true,
    );
    assert_eq!(ids, want);
    assert_eq!(ids[0].len(), 9);
}

#[test]
fn c_example_speculates_losslessly() {
    let (t, d) = tiny_pair(DType::F32);
    let (plain, _) = run_c(&[s(&t), "in the", "-n", "12", "--ignore-eos", "-t", "1"]);
    let (spec, err) = run_c(&[
        s(&t),
        "in the",
        "-n",
        "12",
        "--ignore-eos",
        "-t",
        "1",
        "--draft",
        s(&d),
        "--tree-nodes",
        "8",
        "--progress",
    ]);
    assert_eq!(plain, spec);
    // the C progress callback saw the target's load, then the drafter's, each in order
    assert!(err.contains(" 2 loads, 0 out of order]"), "{err}");
    let done: Vec<&str> = err.lines().filter(|l| l.starts_with("[loaded ")).collect();
    assert_eq!(done.len(), 2, "{err}");
    let mut o = EngineOptions::new(&t).with_drafter(
        &d,
        SpecOptions {
            max_nodes: Some(8),
            ..Default::default()
        },
    );
    o.threads = Some(1);
    assert_eq!(
        rust_tokens(o, &[Prompt::Text("in the".into())], 12, true),
        spec
    );
}

#[test]
fn c_example_answers_with_the_real_model() {
    let Some(m) = real_model() else { return };
    let q = "What is the capital of France?";
    let (ids, err) = run_c(&[
        s(&m),
        q,
        "--chat",
        "-n",
        "32",
        "--f32",
        "--then",
        "And of Italy?",
    ]);
    assert!(err.contains("The capital of France is Paris."), "{err}");
    let mut o = EngineOptions::new(&m);
    o.precision = llmcad::cpu::Precision::F32;
    let chat = |t: &str| Prompt::Chat(vec![ChatMessage::new("user", t)]);
    assert_eq!(
        ids,
        rust_tokens(o, &[chat(q), chat("And of Italy?")], 32, false)
    );
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(llmcad_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn options(target: &CString) -> LlmcadOptions {
    let mut o = std::mem::MaybeUninit::uninit();
    assert_eq!(
        unsafe { llmcad_options_init(o.as_mut_ptr()) },
        LlmcadStatus::Ok
    );
    let mut o = unsafe { o.assume_init() };
    o.target = target.as_ptr();
    o.threads = 1;
    o
}

fn params(n: u32) -> LlmcadGenerateParams {
    let mut p = std::mem::MaybeUninit::uninit();
    assert_eq!(
        unsafe { llmcad_generate_params_init(p.as_mut_ptr()) },
        LlmcadStatus::Ok
    );
    let mut p = unsafe { p.assume_init() };
    p.max_tokens = n;
    p.ignore_eos = 1;
    p
}

fn tiny_engine() -> *mut LlmcadEngine {
    let path = CString::new(s(&tiny_f32().gguf)).unwrap();
    let e = unsafe { llmcad_engine_new(&options(&path)) };
    assert!(!e.is_null(), "{}", last_error());
    e
}

#[test]
fn version_is_the_crate_version() {
    let v = unsafe { CStr::from_ptr(llmcad_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn bad_model_path_gives_null_and_a_message() {
    let path = CString::new("/nonexistent/model.gguf").unwrap();
    let e = unsafe { llmcad_engine_new(&options(&path)) };
    assert!(e.is_null());
    assert!(
        last_error().contains("/nonexistent/model.gguf"),
        "{}",
        last_error()
    );
}

#[test]
fn null_and_invalid_arguments_give_error_codes() {
    unsafe {
        assert!(llmcad_engine_new(std::ptr::null()).is_null());
        assert!(last_error().contains("opts"), "{}", last_error());
        let empty = CString::new("").unwrap();
        let mut o = options(&empty);
        o.target = std::ptr::null();
        assert!(llmcad_engine_new(&o).is_null());
        assert!(last_error().contains("target"), "{}", last_error());
        let bad_utf8 = [0xffu8, 0xfe, 0];
        o.target = bad_utf8.as_ptr().cast();
        assert!(llmcad_engine_new(&o).is_null());
        assert!(
            last_error().contains("UTF-8") || last_error().contains("utf-8"),
            "{}",
            last_error()
        );
        let path = CString::new(s(&tiny_f32().gguf)).unwrap();
        let mut o = options(&path);
        o.device = 7;
        assert!(llmcad_engine_new(&o).is_null());
        assert!(last_error().contains("device"), "{}", last_error());
        // the GPU device loads (Lavapipe in CI) or, without an adapter, says why
        o.device = LlmcadDevice::Gpu as i32;
        let e = llmcad_engine_new(&o);
        if e.is_null() {
            assert!(last_error().contains("GPU"), "{}", last_error());
        } else {
            llmcad_engine_free(e);
        }
        let lots = CString::new("lots").unwrap();
        let mut o = options(&path);
        o.memory_budget = lots.as_ptr();
        assert!(llmcad_engine_new(&o).is_null());
        assert!(last_error().contains("memory budget"), "{}", last_error());
        assert_eq!(
            llmcad_options_init(std::ptr::null_mut()),
            LlmcadStatus::ErrNullPointer
        );
        assert_eq!(
            llmcad_generate_params_init(std::ptr::null_mut()),
            LlmcadStatus::ErrNullPointer
        );
        llmcad_engine_free(std::ptr::null_mut());

        let e = tiny_engine();
        assert_eq!(last_error(), "");
        let prompt = CString::new("the cat").unwrap();
        let null = std::ptr::null_mut();
        let g = |e, p, params: *const LlmcadGenerateParams| {
            llmcad_generate(e, p, 0, params, None, null, null.cast())
        };
        assert_eq!(
            g(std::ptr::null(), prompt.as_ptr(), std::ptr::null()),
            LlmcadStatus::ErrNullPointer
        );
        assert_eq!(
            g(e, std::ptr::null(), std::ptr::null()),
            LlmcadStatus::ErrNullPointer
        );
        assert_eq!(
            g(e, bad_utf8.as_ptr().cast(), std::ptr::null()),
            LlmcadStatus::ErrInvalidUtf8
        );
        // a chat turn on a model without a template... the tiny one has one: overflow instead
        let mut p = params(100_000);
        assert_eq!(g(e, prompt.as_ptr(), &p), LlmcadStatus::ErrContextOverflow);
        assert!(last_error().contains("context"), "{}", last_error());
        // the C ABI has no command line: its messages name no flags
        assert!(
            !last_error().contains("-n ") && !last_error().contains("--"),
            "{}",
            last_error()
        );
        p.max_tokens = 3;
        let mut stats = LlmcadStats::default();
        assert_eq!(
            llmcad_generate(e, prompt.as_ptr(), 0, &p, None, null, &mut stats),
            LlmcadStatus::Ok
        );
        assert_eq!(stats.generated_tokens, 3);
        assert_eq!(stats.stop, LlmcadStopReason::MaxTokens as i32);
        assert_eq!(
            llmcad_cancel(std::ptr::null()),
            LlmcadStatus::ErrNullPointer
        );
        assert_eq!(llmcad_reset(std::ptr::null()), LlmcadStatus::ErrNullPointer);
        assert_eq!(llmcad_reset(e), LlmcadStatus::Ok);
        llmcad_engine_free(e);
    }
}

struct Collect {
    ids: Vec<u32>,
    engine: *const LlmcadEngine,
    cancel_at: usize,
}

unsafe extern "C" fn collect(
    user: *mut c_void,
    id: u32,
    _piece: *const c_char,
    _len: usize,
) -> c_int {
    let c = &mut *(user as *mut Collect);
    if id != LLMCAD_NO_TOKEN {
        c.ids.push(id);
    }
    if c.ids.len() == c.cancel_at {
        // from another thread, as an app's UI would
        let e = c.engine as usize;
        let st = std::thread::spawn(move || llmcad_cancel(e as *const LlmcadEngine))
            .join()
            .unwrap();
        assert_eq!(st, LlmcadStatus::Ok);
    }
    0
}

fn c_generate(
    e: *mut LlmcadEngine,
    prompt: &str,
    p: &LlmcadGenerateParams,
    cancel_at: usize,
) -> (Vec<u32>, LlmcadStats) {
    let prompt = CString::new(prompt).unwrap();
    let mut c = Collect {
        ids: Vec::new(),
        engine: e,
        cancel_at,
    };
    let mut stats = LlmcadStats::default();
    let st = unsafe {
        llmcad_generate(
            e,
            prompt.as_ptr(),
            0,
            p,
            Some(collect),
            (&mut c as *mut Collect).cast(),
            &mut stats,
        )
    };
    assert_eq!(st, LlmcadStatus::Ok, "{}", last_error());
    (c.ids, stats)
}

#[test]
fn cancel_from_another_thread_and_generate_again() {
    let e = tiny_engine();
    let mut p = params(40);
    let (full, _) = c_generate(e, "the cat", &p, usize::MAX);
    p.reset = 1;
    let (cut, stats) = c_generate(e, "the cat", &p, 4);
    assert_eq!(stats.stop, LlmcadStopReason::Cancelled as i32);
    assert_eq!(cut, full[..4]);
    let (again, stats) = c_generate(e, "the cat", &p, usize::MAX);
    assert_eq!(stats.stop, LlmcadStopReason::MaxTokens as i32);
    assert_eq!(again, full);
    unsafe { llmcad_engine_free(e) };
}

#[test]
fn two_engines_in_one_process() {
    let (a, b) = (tiny_engine(), tiny_engine());
    let p = params(6);
    let (a1, _) = c_generate(a, "the cat", &p, usize::MAX);
    let (b1, _) = c_generate(b, "on the", &p, usize::MAX);
    let (a2, _) = c_generate(a, " and", &p, usize::MAX);
    // b is unaffected by a's conversation, and a continues its own
    let r = rust_tokens(
        {
            let mut o = EngineOptions::new(&tiny_f32().gguf);
            o.threads = Some(1);
            o
        },
        &[Prompt::Text("the cat".into()), Prompt::Text(" and".into())],
        6,
        true,
    );
    assert_eq!(vec![a1, a2], r);
    let r = rust_tokens(
        {
            let mut o = EngineOptions::new(&tiny_f32().gguf);
            o.threads = Some(1);
            o
        },
        &[Prompt::Text("on the".into())],
        6,
        true,
    );
    assert_eq!(vec![b1], r);
    unsafe {
        llmcad_engine_free(a);
        llmcad_engine_free(b);
    }
}

#[test]
fn a_long_chat_drops_its_oldest_turns_and_a_full_context_is_a_stop_reason() {
    let path = CString::new(s(&tiny_f32().gguf)).unwrap();
    let mut o = options(&path);
    o.context = 96;
    let e = unsafe { llmcad_engine_new(&o) };
    assert!(!e.is_null(), "{}", last_error());
    let chat = |text: &str, n: u32| {
        let prompt = CString::new(text).unwrap();
        let mut stats = LlmcadStats::default();
        let st = unsafe {
            llmcad_generate(
                e,
                prompt.as_ptr(),
                1,
                &params(n),
                None,
                std::ptr::null_mut(),
                &mut stats,
            )
        };
        assert_eq!(st, LlmcadStatus::Ok, "{}", last_error());
        stats
    };
    // twelve turns of ~30 tokens in a context of 96
    for turn in 0..12 {
        let stats = chat(&format!("turn {turn}: the cat sat on the mat"), 16);
        assert_eq!(stats.stop, LlmcadStopReason::MaxTokens as i32);
        assert_eq!(stats.generated_tokens, 16);
    }
    let stats = chat("and then", 90);
    assert_eq!(stats.stop, LlmcadStopReason::ContextFull as i32);
    assert!(stats.generated_tokens > 0 && stats.generated_tokens < 90);
    assert_eq!(chat("again", 8).stop, LlmcadStopReason::MaxTokens as i32);
    unsafe { llmcad_engine_free(e) };
}

/// What a progress callback saw.
#[derive(Default)]
struct Progress {
    /// (tensors_done, tensors, quantizing_to) of each report.
    reports: Vec<(usize, usize, Option<String>)>,
    /// The user data each call was given.
    user_data: Vec<usize>,
    threads: Vec<std::thread::ThreadId>,
}

unsafe extern "C" fn on_progress(status: *const LlmcadLoadStatus, user_data: *mut c_void) {
    let p = &mut *(user_data as *mut Progress);
    let s = &*status;
    let q = (!s.quantizing_to.is_null()).then(|| {
        CStr::from_ptr(s.quantizing_to)
            .to_str()
            .unwrap()
            .to_string()
    });
    p.reports.push((s.tensors_done, s.tensors, q));
    p.user_data.push(user_data as usize);
    p.threads.push(std::thread::current().id());
}

/// Loads `o` with `on_progress`; the reports, split where a model's load starts.
fn load_with_progress(mut o: LlmcadOptions) -> Vec<Vec<(usize, usize, Option<String>)>> {
    let mut p = Progress::default();
    let user = &mut p as *mut Progress;
    o.progress = Some(on_progress);
    o.progress_user_data = user.cast();
    let e = unsafe { llmcad_engine_new(&o) };
    assert!(!e.is_null(), "{}", last_error());
    let calls = p.reports.len();
    assert!(calls > 0, "the progress callback was never called");
    // user_data round-trips, and every call is on the loading (this) thread
    assert!(p.user_data.iter().all(|&u| u == user as usize));
    assert!(p.threads.iter().all(|&t| t == std::thread::current().id()));
    // never called after llmcad_engine_new returned
    c_generate(e, "the cat", &params(3), usize::MAX);
    unsafe { llmcad_engine_free(e) };
    assert_eq!(p.reports.len(), calls);
    let mut loads: Vec<Vec<_>> = Vec::new();
    for r in p.reports {
        if r.0 == 1 {
            loads.push(Vec::new());
        }
        loads.last_mut().expect("a load starts at 1").push(r);
    }
    for l in &loads {
        let total = l[0].1;
        assert!(l.iter().all(|r| r.1 == total), "{l:?}");
        assert!(l.windows(2).all(|w| w[0].0 <= w[1].0), "{l:?}");
        assert_eq!(l.last().unwrap().0, total, "{l:?}");
    }
    loads
}

#[test]
fn progress_callback_reports_the_load_through_user_data() {
    let path = CString::new(s(&tiny_f32().gguf)).unwrap();
    let loads = load_with_progress(options(&path));
    assert_eq!(loads.len(), 1);
    assert!(loads[0].iter().all(|r| r.2.is_none()));
    assert_eq!(loads[0].len(), loads[0][0].1, "one report per tensor");

    let q8 = CString::new("q8_0").unwrap();
    let mut o = options(&path);
    o.quantize = q8.as_ptr();
    let loads = load_with_progress(o);
    assert!(loads[0].iter().all(|r| r.2.as_deref() == Some("q8_0")));

    // the drafter's load follows the target's, counted on its own
    let (t, d) = tiny_pair(DType::F32);
    let (t, d) = (CString::new(s(&t)).unwrap(), CString::new(s(&d)).unwrap());
    let mut o = options(&t);
    o.drafter = d.as_ptr();
    let loads = load_with_progress(o);
    assert_eq!(loads.len(), 2);
    assert!(
        loads[1][0].1 < loads[0][0].1,
        "the drafter has fewer layers"
    );
}

#[test]
fn progress_is_null_by_default_and_user_data_alone_is_ignored() {
    let path = CString::new(s(&tiny_f32().gguf)).unwrap();
    let mut o = options(&path);
    assert!(o.progress.is_none());
    assert!(o.progress_user_data.is_null());
    // a stray user_data without a callback is never touched
    o.progress_user_data = 0x10 as *mut c_void;
    let e = unsafe { llmcad_engine_new(&o) };
    assert!(!e.is_null(), "{}", last_error());
    let (ids, _) = c_generate(e, "the cat", &params(3), usize::MAX);
    assert_eq!(ids.len(), 3);
    unsafe { llmcad_engine_free(e) };
}
