//! The C ABI over [`crate::engine::Engine`], for C, C++, Android (JNI) and iOS (Swift) hosts.
//! `include/llmcad.h` is generated from this file by cbindgen (`tests/ffi.rs` checks it is up
//! to date; `LLMCAD_BLESS=1 cargo test --test ffi` rewrites it).
//!
//! Rules every entry point keeps: no panic crosses the boundary (each body runs under
//! `catch_unwind` and a panic becomes `LLMCAD_STATUS_ERR_PANIC`), NULL pointers and invalid
//! UTF-8 give error codes, and the message of the last failure on the calling thread is
//! available from `llmcad_last_error()`.

use crate::cpu::Precision;
use crate::engine::{
    CancelHandle, Device, DraftQuantize, Engine, EngineOptions, GenerateRequest, Prompt,
};
use crate::error::Error;
use crate::generate::{GenerateOptions, StopReason};
use crate::memory::MemoryBudget;
use crate::progress::{LoadProgress, LoadStatus};
use crate::quant::DType;
use crate::sampling::SamplingParams;
use crate::spec::pass_store::PassStore;
use crate::spec::{FallbackPolicy, SpecMode, SpecOptions};
use crate::tokenizer::ChatMessage;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

/// The id given to the callback for a text-only piece (text held back until the end).
pub const LLMCAD_NO_TOKEN: u32 = u32::MAX;

/// What a call returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmcadStatus {
    Ok = 0,
    /// A required pointer was NULL.
    ErrNullPointer = 1,
    /// A string was not valid UTF-8.
    ErrInvalidUtf8 = 2,
    /// An option or parameter is out of range or inconsistent.
    ErrInvalidArgument = 3,
    /// A file could not be read.
    ErrIo = 4,
    /// A model file is corrupt or inconsistent (format, config, tokenizer, chat template).
    ErrModel = 5,
    /// Something this build does not support (a model feature, the GPU device).
    ErrUnsupported = 6,
    /// The conversation plus the requested tokens do not fit the context: reset or lower
    /// max_tokens.
    ErrContextOverflow = 7,
    ErrGpu = 8,
    /// Another call is using this engine (llmcad_generate/llmcad_reset are not concurrent).
    ErrBusy = 9,
    /// An internal error (a caught panic); the engine was reset.
    ErrPanic = 10,
    /// Memory ran out (the KV cache for the context asked for, or reading a model file):
    /// ask for a smaller context or a smaller model.
    ErrOutOfMemory = 11,
}

/// Where the target model runs (`LlmcadOptions.device`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmcadDevice {
    Cpu = 0,
    /// Any wgpu adapter (Vulkan on Android, Metal on iOS), software ones included.
    Gpu = 1,
    /// A hardware GPU when there is one, else the CPU.
    Auto = 2,
}

/// How the drafter drafts (`LlmcadOptions.spec`), when `LlmcadOptions.drafter` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmcadSpecMode {
    /// Target-only decoding (the drafter is not loaded).
    None = 0,
    /// Token trees (LLMCad).
    Tree = 1,
    /// Vanilla speculative decoding: chains of `draft_max` tokens.
    Chain = 2,
}

/// Why generation ended (`LlmcadStats.stop`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmcadStopReason {
    /// An end-of-sequence / end-of-turn token (it is the last token given).
    Eos = 0,
    MaxTokens = 1,
    /// The callback returned nonzero, or llmcad_cancel was called.
    Cancelled = 2,
    /// A chat turn (`chat` nonzero) filled the context before max_tokens; the next turn
    /// drops the oldest ones (see llmcad_generate).
    ContextFull = 3,
}

/// Where a model load stands, given to the LlmcadProgressCallback (valid only during the call).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LlmcadLoadStatus {
    /// Tensors of the model being loaded that are done: 1 at the first report, then one more
    /// at each, `tensors` at the last. It starts again at 1 when the next model loads (the
    /// drafter, after the target).
    pub tensors_done: usize,
    /// Tensors of the model being loaded.
    pub tensors: usize,
    /// The block type float weights are quantized to on the way ("q8_0", "q4_0", "q4_1":
    /// `LlmcadOptions.quantize`), or NULL. A static string.
    pub quantizing_to: *const c_char,
}

/// Called as each tensor of the target, then of the drafter, is loaded, on the thread that
/// called llmcad_engine_new and only before it returns (never later). `user_data` is
/// `LlmcadOptions.progress_user_data`, passed through untouched. The callback must not unwind
/// (a C++ exception, a longjmp) into the library.
pub type LlmcadProgressCallback =
    Option<unsafe extern "C" fn(status: *const LlmcadLoadStatus, user_data: *mut c_void)>;

/// Engine options. Fill with llmcad_options_init, then set `target` (and what you need).
///
/// The layout is part of the ABI: fields are only ever added at the end, so a program must be
/// compiled against the header of the library it links (there is no size or version field).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LlmcadOptions {
    /// Target model: a GGUF file or a Hugging Face directory (UTF-8 path). Required.
    pub target: *const c_char,
    /// Drafter model with the target's vocabulary, or NULL for target-only decoding.
    pub drafter: *const c_char,
    /// An LlmcadDevice.
    pub device: i32,
    /// CPU threads for the target; 0: every core.
    pub threads: u32,
    /// CPU threads for the drafter; 0: `threads`.
    pub draft_threads: u32,
    /// Context size in tokens (the whole conversation must fit); 0: the model's.
    pub context: u32,
    /// Nonzero: exact f32 matmuls instead of 8-bit activations (slower).
    pub f32_activations: i32,
    /// Quantize float weights, and quantized ones with more bits per weight, while loading:
    /// "q8_0", "q4_0", "q4_1" (target and drafter), or NULL: the target as stored, and a GGUF
    /// drafter requantized to q4_0 once, kept in the cache directory (as stored without one).
    pub quantize: *const c_char,
    /// An LlmcadSpecMode, used when `drafter` is set.
    pub spec: i32,
    /// Drafted tokens per pass with LLMCAD_SPEC_MODE_CHAIN.
    pub draft_max: u32,
    /// Most nodes per token tree, root included; 0: sized by measured cost.
    pub tree_nodes: u32,
    /// Most drafted tokens on one tree path.
    pub tree_depth: u32,
    /// A drafter candidate besides its first choice may open a branch from this probability.
    pub branch_threshold: f32,
    /// Negative: the adaptive fallback; in [0, 1): verify when the best path confidence
    /// drops below it.
    pub fallback_threshold: f32,
    /// "auto", "64MiB", "1.5GB", "25%" (of the available memory), or NULL for "auto".
    /// On a GPU target, weights beyond it stream from the model file for every pass.
    pub memory_budget: *const c_char,
    /// Directory where the learned pass times (the verifier's and the drafter's) are kept
    /// between processes, "" to keep them nowhere, or NULL for the default ($LLMCAD_CACHE_DIR,
    /// else the platform's cache directory).
    pub pass_times_dir: *const c_char,
    /// Told the load's progress during llmcad_engine_new (see LlmcadProgressCallback), or
    /// NULL (the default) for no reports.
    pub progress: LlmcadProgressCallback,
    /// Given to `progress` as its `user_data`, untouched; the library never reads it.
    pub progress_user_data: *mut c_void,
}

/// Per-request parameters. Fill with llmcad_generate_params_init.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LlmcadGenerateParams {
    /// Most new tokens.
    pub max_tokens: u32,
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    /// 1: off.
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub seed: u64,
    /// Nonzero: keep going past end-of-sequence tokens.
    pub ignore_eos: i32,
    /// Nonzero: forget the conversation first (like llmcad_reset). Otherwise the prompt
    /// continues the conversation held in the engine.
    pub reset: i32,
}

/// What one llmcad_generate did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LlmcadStats {
    /// Tokens run before the first new one.
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub prompt_ms: f64,
    pub decode_ms: f64,
    /// Decode speed (tokens after the first per second).
    pub tokens_per_s: f64,
    pub prompt_tokens_per_s: f64,
    /// An LlmcadStopReason.
    pub stop: i32,
    /// Target forward passes after the prompt.
    pub target_passes: u32,
    /// Drafted and accepted tokens (0 without a drafter).
    pub draft_tokens: u32,
    pub accepted_tokens: u32,
    /// Tokens per target pass with a drafter (0 without).
    pub mean_accepted_per_pass: f64,
    /// The memory budget resolved at load, in bytes; 0 when the OS did not say.
    pub memory_budget_bytes: u64,
}

/// Called for each generated token: `piece` is the text it completes (`len` bytes of UTF-8,
/// NUL-terminated, possibly empty; valid only during the call). Return nonzero to stop.
/// `id` is LLMCAD_NO_TOKEN for a final text-only piece.
pub type LlmcadTokenCallback = Option<
    unsafe extern "C" fn(user: *mut c_void, id: u32, piece: *const c_char, len: usize) -> c_int,
>;

/// An engine: a loaded model (and drafter) with its conversation. Create with
/// llmcad_engine_new, destroy with llmcad_engine_free.
pub struct LlmcadEngine {
    engine: Mutex<Engine>,
    cancel: CancelHandle,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// A failure on the way out: its code and message.
struct Fail(LlmcadStatus, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Io { .. } => LlmcadStatus::ErrIo,
            Error::Format(_) | Error::Config(_) | Error::Tokenizer(_) | Error::Template(_) => {
                LlmcadStatus::ErrModel
            }
            Error::Unsupported(_) => LlmcadStatus::ErrUnsupported,
            Error::ContextOverflow { .. } => LlmcadStatus::ErrContextOverflow,
            Error::InvalidArgument(_) | Error::Cancelled => LlmcadStatus::ErrInvalidArgument,
            Error::Gpu(_) => LlmcadStatus::ErrGpu,
            Error::OutOfMemory(_) => LlmcadStatus::ErrOutOfMemory,
        };
        Fail(code, e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> Fail {
    Fail(LlmcadStatus::ErrInvalidArgument, msg.into())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("internal error (panic): {what}")
}

/// Runs an entry point: clears the last error, catches panics, records failures.
fn guard<T>(on_fail: T, body: impl FnOnce() -> Result<T, Fail>) -> (T, LlmcadStatus) {
    set_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => (v, LlmcadStatus::Ok),
        Ok(Err(Fail(code, msg))) => {
            set_error(&msg);
            (on_fail, code)
        }
        Err(p) => {
            set_error(&panic_message(&*p));
            (on_fail, LlmcadStatus::ErrPanic)
        }
    }
}

fn status(body: impl FnOnce() -> Result<(), Fail>) -> LlmcadStatus {
    guard((), body).1
}

/// A required C string as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn req_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    opt_str(p, what)?.ok_or_else(|| Fail(LlmcadStatus::ErrNullPointer, format!("{what} is NULL")))
}

/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|e| Fail(LlmcadStatus::ErrInvalidUtf8, format!("{what}: {e}")))
}

fn null(what: &str) -> Fail {
    Fail(LlmcadStatus::ErrNullPointer, format!("{what} is NULL"))
}

/// The library version, e.g. "0.1.0" (static, never NULL).
#[no_mangle]
pub extern "C" fn llmcad_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" after a successful one). Never
/// NULL; valid until the next llmcad call on this thread.
#[no_mangle]
pub extern "C" fn llmcad_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Fills `opts` with the defaults: CPU, every core, the model's context, tree speculation
/// when a drafter is given, adaptive fallback, memory budget "auto"; `target` and `progress`
/// NULL.
///
/// # Safety
/// `opts` is NULL or points to writable memory for one LlmcadOptions.
#[no_mangle]
pub unsafe extern "C" fn llmcad_options_init(opts: *mut LlmcadOptions) -> LlmcadStatus {
    status(|| {
        let opts = opts.as_mut().ok_or_else(|| null("opts"))?;
        let spec = SpecOptions::default();
        *opts = LlmcadOptions {
            target: std::ptr::null(),
            drafter: std::ptr::null(),
            device: LlmcadDevice::Auto as i32,
            threads: 0,
            draft_threads: 0,
            context: 0,
            f32_activations: 0,
            quantize: std::ptr::null(),
            spec: LlmcadSpecMode::Tree as i32,
            draft_max: 4,
            tree_nodes: 0,
            tree_depth: spec.max_depth as u32,
            branch_threshold: spec.branch_threshold,
            fallback_threshold: -1.0,
            memory_budget: std::ptr::null(),
            pass_times_dir: std::ptr::null(),
            progress: None,
            progress_user_data: std::ptr::null_mut(),
        };
        Ok(())
    })
}

/// Fills `params` with the defaults: 128 tokens, greedy, continue the conversation.
///
/// # Safety
/// `params` is NULL or points to writable memory for one LlmcadGenerateParams.
#[no_mangle]
pub unsafe extern "C" fn llmcad_generate_params_init(
    params: *mut LlmcadGenerateParams,
) -> LlmcadStatus {
    status(|| {
        *params.as_mut().ok_or_else(|| null("params"))? = default_params();
        Ok(())
    })
}

fn default_params() -> LlmcadGenerateParams {
    let g = GenerateOptions::default();
    let s = &g.sampling;
    LlmcadGenerateParams {
        max_tokens: g.max_tokens as u32,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as u32,
        seed: s.seed,
        ignore_eos: 0,
        reset: 0,
    }
}

fn nonzero(v: u32) -> Option<usize> {
    (v != 0).then_some(v as usize)
}

/// # Safety
/// The pointers in `o` are NULL or NUL-terminated strings.
unsafe fn engine_options(o: &LlmcadOptions) -> Result<EngineOptions, Fail> {
    let mut e = EngineOptions::new(req_str(o.target, "options.target")?);
    e.device = match o.device {
        0 => Device::Cpu,
        1 => Device::Gpu,
        2 => Device::Auto,
        d => {
            return Err(invalid(format!(
                "options.device: {d} is not an LlmcadDevice"
            )))
        }
    };
    e.threads = nonzero(o.threads);
    e.draft_threads = nonzero(o.draft_threads);
    e.context = nonzero(o.context);
    if o.f32_activations != 0 {
        e.precision = Precision::F32;
    }
    if let Some(q) = opt_str(o.quantize, "options.quantize")? {
        let d = crate::quant::DType::parse_quantized(q)
            .map_err(|e| invalid(format!("options.quantize: {e}")))?;
        e.quantize = Some(d);
        e.draft_quantize = DraftQuantize::To(d);
    }
    if let Some(b) = opt_str(o.memory_budget, "options.memory_budget")? {
        e.memory_budget = b.parse::<MemoryBudget>()?;
    }
    e.pass_store = match opt_str(o.pass_times_dir, "options.pass_times_dir")? {
        None => PassStore::Default,
        Some("") => PassStore::Off,
        Some(d) => PassStore::Dir(d.into()),
    };
    let mode = match o.spec {
        0 => None,
        1 => Some(SpecMode::Tree),
        2 => Some(SpecMode::Chain {
            k: o.draft_max as usize,
        }),
        s => {
            return Err(invalid(format!(
                "options.spec: {s} is not an LlmcadSpecMode"
            )))
        }
    };
    if let (Some(d), Some(mode)) = (opt_str(o.drafter, "options.drafter")?, mode) {
        if o.draft_max == 0 || o.tree_depth == 0 {
            return Err(invalid(
                "options.draft_max and options.tree_depth must be at least 1",
            ));
        }
        let f = o.fallback_threshold;
        let fallback = if f < 0.0 {
            FallbackPolicy::Adaptive
        } else if f < 1.0 {
            FallbackPolicy::Fixed(f)
        } else {
            return Err(invalid("options.fallback_threshold must be below 1"));
        };
        e = e.with_drafter(
            d,
            SpecOptions {
                mode,
                fallback,
                max_nodes: nonzero(o.tree_nodes),
                max_depth: o.tree_depth as usize,
                branch_threshold: o.branch_threshold,
                ..SpecOptions::default()
            },
        );
    }
    Ok(e)
}

/// The C progress callback with its user data, as the `Send + Sync` closure a
/// [`LoadProgress`] holds. It calls nothing once `live` is cleared (when llmcad_engine_new
/// returns: the engine keeps its options, and the user data may be gone by then).
struct ProgressHook {
    callback: unsafe extern "C" fn(*const LlmcadLoadStatus, *mut c_void),
    user_data: *mut c_void,
    live: Arc<AtomicBool>,
}

// SAFETY: the caller of llmcad_engine_new promises that `callback` may be called with
// `user_data` during that call (LlmcadProgressCallback); it is only called then, from the
// loading thread, which is the calling thread. The library never dereferences `user_data`.
unsafe impl Send for ProgressHook {}
// SAFETY: as for Send: the hook is shared only to be called during llmcad_engine_new.
unsafe impl Sync for ProgressHook {}

impl ProgressHook {
    fn report(&self, s: LoadStatus) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let status = LlmcadLoadStatus {
            tensors_done: s.tensors_done,
            tensors: s.tensors,
            quantizing_to: s.quantizing_to.map_or(std::ptr::null(), dtype_name),
        };
        // SAFETY: the caller vouches for the callback with this user data (see ProgressHook);
        // `status` outlives the call
        unsafe { (self.callback)(&status, self.user_data) }
    }
}

/// The name of `d` as a static C string, lowercase as `LlmcadOptions.quantize` spells it.
fn dtype_name(d: DType) -> *const c_char {
    static NAMES: OnceLock<Vec<(DType, CString)>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            DType::ALL
                .iter()
                .filter_map(|&d| Some((d, CString::new(d.name().to_ascii_lowercase()).ok()?)))
                .collect()
        })
        .iter()
        .find(|(n, _)| *n == d)
        .map_or(std::ptr::null(), |(_, c)| c.as_ptr())
}

/// Loads the models and creates an engine; NULL on failure (see llmcad_last_error). Takes
/// as long as reading the weights; nothing else runs at load. `opts.progress`, when set, is
/// called on this thread as tensors load, and never after this returns.
///
/// # Safety
/// `opts` is NULL or points to an LlmcadOptions whose strings are NULL or NUL-terminated, and
/// whose `progress` is NULL or safe to call with `progress_user_data` during this call.
#[no_mangle]
pub unsafe extern "C" fn llmcad_engine_new(opts: *const LlmcadOptions) -> *mut LlmcadEngine {
    guard(std::ptr::null_mut(), || {
        let o = opts.as_ref().ok_or_else(|| null("opts"))?;
        let mut options = engine_options(o)?;
        let live = Arc::new(AtomicBool::new(true));
        if let Some(callback) = o.progress {
            let hook = ProgressHook {
                callback,
                user_data: o.progress_user_data,
                live: live.clone(),
            };
            options.progress = Some(LoadProgress::new(move |s| hook.report(s)));
        }
        let loaded = Engine::load(options);
        live.store(false, Ordering::Release);
        let engine = loaded?;
        let cancel = engine.cancel_handle();
        Ok(Box::into_raw(Box::new(LlmcadEngine {
            engine: Mutex::new(engine),
            cancel,
        })))
    })
    .0
}

/// Destroys an engine (NULL is ignored). No other call may be using it.
///
/// # Safety
/// `engine` is NULL or came from llmcad_engine_new and was not freed.
#[no_mangle]
pub unsafe extern "C" fn llmcad_engine_free(engine: *mut LlmcadEngine) {
    guard((), || {
        if !engine.is_null() {
            drop(Box::from_raw(engine));
        }
        Ok(())
    });
}

/// Locks the engine for one call; a poisoned lock (a caught panic) resets the conversation.
fn lock(e: &LlmcadEngine) -> Result<std::sync::MutexGuard<'_, Engine>, Fail> {
    match e.engine.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(Fail(
            LlmcadStatus::ErrBusy,
            "the engine is busy with another call (cancel it first)".into(),
        )),
        Err(TryLockError::Poisoned(p)) => {
            let mut g = p.into_inner();
            g.reset();
            e.engine.clear_poison();
            Ok(g)
        }
    }
}

/// Continues the conversation with `prompt` (with `chat` nonzero: one user message in the
/// model's chat template; otherwise raw text, special tokens recognised) and generates,
/// calling `callback` (may be NULL) for each token. `params` NULL: the defaults.
/// `out_stats` (may be NULL) receives the statistics. Stopping by the callback or by
/// llmcad_cancel is a success with `stop` LLMCAD_STOP_REASON_CANCELLED.
///
/// A conversation that outgrows the context: a chat turn whose conversation plus
/// `max_tokens` do not fit drops the oldest turns (a first system message stays) and runs the
/// rest again; when the new turn alone leaves less room than `max_tokens`, the answer fills
/// the context and ends with LLMCAD_STOP_REASON_CONTEXT_FULL. A raw prompt (`chat` 0) that
/// does not fit, a turn that alone does not fit, or `max_tokens` beyond the whole context
/// fail with LLMCAD_STATUS_ERR_CONTEXT_OVERFLOW and change nothing: reset or ask for fewer.
///
/// # Safety
/// `engine` came from llmcad_engine_new; `prompt` is NUL-terminated; `params` and
/// `out_stats` are NULL or valid; `callback` is safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn llmcad_generate(
    engine: *const LlmcadEngine,
    prompt: *const c_char,
    chat: c_int,
    params: *const LlmcadGenerateParams,
    callback: LlmcadTokenCallback,
    user: *mut c_void,
    out_stats: *mut LlmcadStats,
) -> LlmcadStatus {
    status(|| {
        let e = engine.as_ref().ok_or_else(|| null("engine"))?;
        let text = req_str(prompt, "prompt")?;
        let p = params.as_ref().copied().unwrap_or_else(default_params);
        let options = GenerateOptions {
            max_tokens: p.max_tokens as usize,
            sampling: SamplingParams {
                temperature: p.temperature,
                top_k: p.top_k as usize,
                top_p: p.top_p,
                min_p: p.min_p,
                repeat_penalty: p.repeat_penalty,
                repeat_last_n: p.repeat_last_n as usize,
                seed: p.seed,
            },
            ignore_eos: p.ignore_eos != 0,
            ..GenerateOptions::default()
        };
        let prompt = if chat != 0 {
            Prompt::Chat(vec![ChatMessage::new("user", text)])
        } else {
            Prompt::Text(text.to_string())
        };
        let req = GenerateRequest {
            prompt,
            options,
            reset: p.reset != 0,
        };
        let mut eng = lock(e)?;
        let mut buf: Vec<u8> = Vec::new();
        let out = eng.generate(&req, &mut |ev| {
            let Some(cb) = callback else { return true };
            buf.clear();
            buf.extend_from_slice(ev.text.as_bytes());
            buf.push(0);
            let id = ev.id.unwrap_or(LLMCAD_NO_TOKEN);
            // SAFETY: the caller vouches for the callback; the piece outlives the call
            unsafe { cb(user, id, buf.as_ptr().cast(), ev.text.len()) == 0 }
        })?;
        if let Some(s) = out_stats.as_mut() {
            let st = &out.stats;
            let spec = out.spec.as_ref();
            *s = LlmcadStats {
                prompt_tokens: st.prompt_tokens as u32,
                generated_tokens: st.generated_tokens as u32,
                prompt_ms: st.prompt_ms(),
                decode_ms: st.decode_ms(),
                tokens_per_s: st.tokens_per_s(),
                prompt_tokens_per_s: st.prompt_tokens_per_s(),
                stop: match out.stop {
                    StopReason::EndOfSequence => LlmcadStopReason::Eos,
                    StopReason::MaxTokens => LlmcadStopReason::MaxTokens,
                    StopReason::Cancelled => LlmcadStopReason::Cancelled,
                    StopReason::ContextFull => LlmcadStopReason::ContextFull,
                } as i32,
                target_passes: st.target_passes as u32,
                draft_tokens: spec.map_or(0, |s| s.draft_tokens as u32),
                accepted_tokens: spec.map_or(0, |s| s.accepted_tokens as u32),
                mean_accepted_per_pass: spec
                    .map_or(0.0, |s| s.mean_accepted_per_pass(st.target_passes)),
                memory_budget_bytes: out.memory_budget.unwrap_or(0),
            };
        }
        Ok(())
    })
}

/// Asks the generation running on `engine` to stop (from any thread): it returns after at
/// most one more forward pass with stop LLMCAD_STOP_REASON_CANCELLED. No effect on later
/// generations.
///
/// # Safety
/// `engine` is NULL or came from llmcad_engine_new and was not freed.
#[no_mangle]
pub unsafe extern "C" fn llmcad_cancel(engine: *const LlmcadEngine) -> LlmcadStatus {
    status(|| {
        engine
            .as_ref()
            .ok_or_else(|| null("engine"))?
            .cancel
            .cancel();
        Ok(())
    })
}

/// Forgets the conversation (clears the KV caches). Fails with LLMCAD_STATUS_ERR_BUSY while a
/// generation runs.
///
/// # Safety
/// `engine` is NULL or came from llmcad_engine_new and was not freed.
#[no_mangle]
pub unsafe extern "C" fn llmcad_reset(engine: *const LlmcadEngine) -> LlmcadStatus {
    status(|| {
        lock(engine.as_ref().ok_or_else(|| null("engine"))?)?.reset();
        Ok(())
    })
}
