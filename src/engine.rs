//! The library API: one [`Engine`] holds a target model (and optionally a drafter) ready on a
//! device, keeps the conversation in its KV caches, and streams generated tokens. The CLI and
//! the C ABI (`ffi.rs`) are thin layers over it.
//!
//! ```no_run
//! use llmcad::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
//! use llmcad::tokenizer::ChatMessage;
//!
//! let mut engine = Engine::load(EngineOptions::new("SmolLM2-135M-Instruct.Q4_1.gguf"))?;
//! let request = GenerateRequest::new(Prompt::Chat(vec![ChatMessage::new(
//!     "user",
//!     "What is the capital of France?",
//! )]));
//! let out = engine.generate(&request, &mut |ev| {
//!     print!("{}", ev.text);
//!     true // keep going
//! })?;
//! println!("\n{} tokens, stop: {}", out.tokens.len(), out.stop.as_str());
//! // the next request continues the same conversation; engine.reset() starts a new one
//! # Ok::<(), llmcad::Error>(())
//! ```
//!
//! Nothing happens at library load and there is no global state: every engine owns its
//! models, caches and threads, so several engines can live in one process.

use crate::backend::{Backend, Batch, Rows, Want};
use crate::cpu::{clamp_threads, default_threads, CpuBackend, CpuOptions, Precision};
use crate::error::{Error, Result};
use crate::format::requantize::{requantize_gguf, requantizes};
use crate::generate::{check_context, generate, GenerateOptions, Stats, StopReason};
use crate::gpu::{self, DeviceOptions, GpuBackend, GpuOptions};
use crate::memory::MemoryBudget;
use crate::model::{LoadOptions, Model};
use crate::progress::LoadProgress;
use crate::quant::DType;
use crate::spec::cost::PassTimes;
use crate::spec::frequent::{draft_tokens, DraftVocab, FrequencyTable};
use crate::spec::pass_store::{self, PassStore};
use crate::spec::{check_pair, generate_speculative, SpecOptions, SpecStats};
use crate::tokenizer::{ChatMessage, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the target runs. The drafter always runs on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The wgpu backend on the adapter the environment selects (`WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME`), software adapters included.
    Gpu,
    /// A hardware GPU when there is one, else the CPU (with a notice in `Engine::warnings`).
    #[default]
    Auto,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "auto" => Ok(Device::Auto),
            _ => Err(Error::InvalidArgument(format!(
                "device {s:?}: expected cpu, gpu or auto"
            ))),
        }
    }
}

/// How to load and run the models. Start from [`EngineOptions::new`].
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The target model: a GGUF file or a Hugging Face directory.
    pub target: PathBuf,
    /// A drafter with the target's vocabulary; used when `spec` is `Some`.
    pub drafter: Option<PathBuf>,
    pub device: Device,
    /// GPU device options (optional features, the `webgpu-default` floor, fault injection);
    /// the default reads the `LLMCAD_GPU_*` environment switches.
    pub gpu: DeviceOptions,
    /// CPU threads for the target (`None`: every core).
    pub threads: Option<usize>,
    /// CPU threads for the drafter (`None`: `threads`).
    pub draft_threads: Option<usize>,
    /// Context (KV cache) size in tokens (`None`: the model's). The whole conversation since
    /// the last [`Engine::reset`] must fit.
    pub context: Option<usize>,
    /// CPU matmul precision.
    pub precision: Precision,
    /// The drafter's CPU matmul precision. The default, 8-bit activations, runs the fastest
    /// kernels; the target verifies every drafted token, so it costs no exactness.
    pub draft_precision: Precision,
    /// Quantize the target's matrices that have more bits per weight while loading.
    pub quantize: Option<DType>,
    /// Quantize the drafter's matrices that have more bits per weight while loading (a leaner
    /// drafter drafts faster; the target verifies every token anyway).
    pub draft_quantize: DraftQuantize,
    /// Speculative decoding with the drafter, or `None` for target-only decoding.
    pub spec: Option<SpecOptions>,
    /// The memory the engine may use. On a GPU target, weights beyond it stream from the model
    /// file for every pass (see [`MemoryReport::gpu_weight_budget`]).
    pub memory_budget: MemoryBudget,
    /// Emulated storage bandwidth (bytes/s) for weights streamed under the budget (GPU target).
    pub io_bandwidth: Option<f64>,
    /// Told as each tensor of the target, then of the drafter, is loaded.
    pub progress: Option<LoadProgress>,
    /// Where the verifier's learned pass times are kept between processes.
    pub pass_store: PassStore,
}

impl EngineOptions {
    /// Target-only decoding of `target` on a hardware GPU if there is one (else the CPU, with
    /// every core) and the model's context.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        EngineOptions {
            target: target.into(),
            drafter: None,
            device: Device::Auto,
            gpu: DeviceOptions::default(),
            threads: None,
            draft_threads: None,
            context: None,
            precision: Precision::default(),
            draft_precision: Precision::Q8Activations,
            quantize: None,
            draft_quantize: DraftQuantize::Auto,
            spec: None,
            memory_budget: MemoryBudget::Auto,
            io_bandwidth: None,
            progress: None,
            pass_store: PassStore::Default,
        }
    }

    /// Speculative decoding with `drafter` under `spec`.
    pub fn with_drafter(mut self, drafter: impl Into<PathBuf>, spec: SpecOptions) -> Self {
        self.drafter = Some(drafter.into());
        self.spec = Some(spec);
        self
    }
}

/// What to continue the conversation with.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text; special tokens written in it (`<|im_start|>`) are recognised. BOS is added
    /// when the model wants it and the conversation is empty. When the conversation plus the
    /// text and `max_tokens` do not fit the context, the request fails with
    /// [`Error::ContextOverflow`] and changes nothing: reset, or ask for fewer tokens.
    Text(String),
    /// New chat turns, rendered with the model's chat template together with the earlier
    /// turns of the conversation (the engine records the assistant's answers), ending with the
    /// assistant prompt.
    ///
    /// A conversation that outgrows the context: when the rendered conversation plus
    /// `max_tokens` do not fit, the oldest turns are dropped (a leading system message stays)
    /// until they do, and what no longer matches the caches is run again
    /// ([`Output::dropped_turns`] counts them). When the newest turn alone leaves less room
    /// than `max_tokens`, the answer fills the context and ends with
    /// [`StopReason::ContextFull`](crate::generate::StopReason::ContextFull). It is an error
    /// ([`Error::ContextOverflow`]) only when the newest turn alone does not fit, or when
    /// `max_tokens` exceeds the whole context. Either way the engine stays usable.
    Chat(Vec<ChatMessage>),
    /// The whole conversation, as an OpenAI-style client sends it with every request: it
    /// replaces the engine's chat turns, and the caches keep whatever the rendered
    /// conversation shares with the tokens they hold (all of it when the request extends the
    /// previous conversation, nothing when it is another one). Too long a conversation is
    /// handled as for [`Prompt::Chat`].
    Conversation(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub options: GenerateOptions,
    /// Start a new conversation first (like [`Engine::reset`]).
    pub reset: bool,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            options: GenerateOptions::default(),
            reset: false,
        }
    }
}

/// A generated token and the text it completes, given to the callback as soon as it is chosen.
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    /// The token; `None` for the one text-only event that may come last, when generation
    /// ends with text held back (an incomplete character).
    pub id: Option<u32>,
    /// Text completed by this token (special tokens give none; empty while a multi-byte
    /// character is incomplete).
    pub text: &'a str,
}

/// What one [`Engine::generate`] produced.
#[derive(Clone, Debug)]
pub struct Output {
    /// The tokens this request added to the conversation before generating (for a chat turn
    /// the rendered new turns, for a `Conversation` what its rendering does not share with
    /// the conversation before; the whole prompt on a fresh conversation).
    pub prompt: Vec<u32>,
    /// The conversation's length in tokens when generation started: the whole prompt the
    /// model answered (earlier turns included).
    pub context_tokens: usize,
    /// Generated tokens, the stop token included when there was one.
    pub tokens: Vec<u32>,
    /// Generated text: every streamed piece joined (special tokens give no text).
    pub text: String,
    pub stop: StopReason,
    /// The oldest chat turns dropped so that the conversation fits the context (see
    /// [`Prompt::Chat`]); 0 for other prompts.
    pub dropped_turns: usize,
    /// `prompt_tokens` counts the tokens actually run before the first new one (new prompt
    /// tokens plus any the cache lacked).
    pub stats: Stats,
    /// Speculation counters, when a drafter was used.
    pub spec: Option<SpecStats>,
    /// The memory budget in bytes (resolved at load), `None` when the OS did not say.
    pub memory_budget: Option<u64>,
}

/// Stops a running [`Engine::generate`] from any thread.
#[derive(Clone, Debug, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks the generation in progress to stop: it returns [`StopReason::Cancelled`] after
    /// at most one more forward pass. Generations that start later are not affected.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Memory the engine's models take, next to the budget.
#[derive(Clone, Debug, Default)]
pub struct MemoryReport {
    /// The budget asked for.
    pub budget: MemoryBudget,
    /// It resolved to this many bytes at load (`None`: the OS did not say).
    pub budget_bytes: Option<u64>,
    /// Weights of the target and the drafter, as stored.
    pub weights_bytes: u64,
    /// The target's share of `weights_bytes`.
    pub target_weights_bytes: u64,
    /// The KV caches when full (f32 K and V for every layer and context slot).
    pub kv_bytes: u64,
}

impl MemoryReport {
    /// Whether weights and full caches fit the budget (true without a budget).
    pub fn fits(&self) -> bool {
        self.budget_bytes
            .is_none_or(|b| self.weights_bytes + self.kv_bytes <= b)
    }

    /// GPU memory for the target's weights: a byte or fraction budget applies to them
    /// directly; `auto` leaves the KV caches and the drafter their share of what the OS allows
    /// (and a tenth spare). `None` keeps every weight resident.
    pub fn gpu_weight_budget(&self) -> Option<u64> {
        let b = self.budget_bytes?;
        let b = match self.budget {
            MemoryBudget::Auto => {
                let others = self.kv_bytes + self.weights_bytes - self.target_weights_bytes;
                (b - b / 10).saturating_sub(others)
            }
            _ => b,
        };
        (b < self.target_weights_bytes).then_some(b)
    }
}

struct Drafter {
    model: Model,
    backend: Box<dyn Backend>,
    spec: SpecOptions,
    /// Where the verifier's pass times are kept between processes.
    pass_file: Option<PathBuf>,
    /// History tokens known to be in the drafter's cache (a prefix of `history`).
    valid: usize,
}

/// A loaded target (and drafter) with the conversation so far. See the module docs.
///
/// An engine is `Send`: move it to a worker thread and keep a [`CancelHandle`] elsewhere.
pub struct Engine {
    model: Model,
    target: Box<dyn Backend>,
    /// History tokens known to be in the target's cache (a prefix of `history`).
    target_valid: usize,
    drafter: Option<Drafter>,
    /// Every token of the conversation since the last reset, prompts and answers.
    history: Vec<u32>,
    /// The chat turns so far (the assistant's answers included), for `Prompt::Chat`.
    messages: Vec<ChatMessage>,
    cancel: CancelHandle,
    memory: MemoryReport,
    warnings: Vec<String>,
    /// What the engine was loaded with (the CPU fallback is built from it).
    options: EngineOptions,
}

/// Creates the backend the target runs on. The one place that chooses a device.
/// `Auto` takes a hardware GPU and otherwise runs on the CPU, adding a one-line notice to
/// `warnings`: a software adapter such as Lavapipe is far slower than the CPU backend, so only
/// `Gpu` uses one.
fn open_target(
    model: &Model,
    opts: &EngineOptions,
    memory: &MemoryReport,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn Backend>> {
    let gpu = |ctx| -> Result<Box<dyn Backend>> {
        let gpu_opts = GpuOptions {
            context: opts.context.unwrap_or(model.config.max_context),
            weight_budget: memory.gpu_weight_budget(),
            io_bandwidth: opts.io_bandwidth,
            ..GpuOptions::for_model(&model.config)
        };
        Ok(Box::new(GpuBackend::with_context_opts(
            model.config.clone(),
            model.weights.clone(),
            &gpu_opts,
            ctx,
        )?))
    };
    match opts.device {
        Device::Cpu => Ok(Box::new(target_cpu_backend(model, opts)?)),
        Device::Gpu => gpu(gpu::open(&opts.gpu)?),
        Device::Auto => {
            let tried = gpu::open(&opts.gpu).and_then(|ctx| {
                if ctx.is_software() {
                    return Err(Error::Gpu(format!(
                        "{} is a software adapter (the gpu device uses it anyway)",
                        ctx.summary()
                    )));
                }
                gpu(ctx)
            });
            tried.or_else(|e| {
                warnings.push(format!("no usable GPU, running the target on the CPU: {e}"));
                Ok(Box::new(target_cpu_backend(model, opts)?))
            })
        }
    }
}

fn target_cpu_backend(model: &Model, opts: &EngineOptions) -> Result<CpuBackend> {
    cpu_backend(model, opts, opts.threads, opts.precision)
}

fn cpu_backend(
    model: &Model,
    opts: &EngineOptions,
    threads: Option<usize>,
    precision: Precision,
) -> Result<CpuBackend> {
    CpuBackend::new(
        model.config.clone(),
        model.weights.clone(),
        &CpuOptions {
            threads: threads.unwrap_or_else(default_threads).max(1),
            precision,
            context: opts.context.unwrap_or(model.config.max_context),
        },
    )
}

/// How the drafter's weights are quantized at load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftQuantize {
    /// [`DraftQuantize::AUTO_TYPE`] for a GGUF drafter with matrices stored at more bits per
    /// weight, requantized once and kept in the cache directory; as stored where there is no
    /// cache directory (requantizing at every load would cost a short generation more than
    /// it saves).
    #[default]
    Auto,
    /// As stored.
    Stored,
    /// Matrices stored with more bits per weight requantized to this type (kept in the cache
    /// directory where there is one, else at every load).
    To(DType),
}

impl DraftQuantize {
    /// What `Auto` requantizes to. Measured with the real pair (BENCHMARKS.md, stop 31): the
    /// 0.5B drafter reads a quarter fewer bytes per pass and agrees with the target's greedy
    /// tokens 73.4% of the time instead of 75.5%; in three A/Bs over 12 prompts speculation
    /// ran at 1.16×, 1.18× and 1.21× target-only with it, against 1.13×, 1.01× and 1.20× with
    /// the drafter as stored.
    pub const AUTO_TYPE: DType = DType::Q4_0;
}

impl std::str::FromStr for DraftQuantize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DraftQuantize::Auto),
            "none" => Ok(DraftQuantize::Stored),
            _ => DType::parse_quantized(s)
                .map(DraftQuantize::To)
                .map_err(|_| format!("{s}: expected auto, none, q8_0, q4_0 or q4_1")),
        }
    }
}

/// With `draft_quantize`, a GGUF drafter requantized once and kept in the cache directory
/// (written now when missing), so that only the first process pays for the requantization;
/// `None` when there is no cache directory, or it cannot be written (the drafter is then
/// requantized in memory, or with `Auto` loaded as stored), or when `Auto` finds nothing to
/// requantize.
fn requantized_drafter(opts: &EngineOptions, path: &Path) -> Option<PathBuf> {
    let to = match opts.draft_quantize {
        DraftQuantize::Stored => return None,
        DraftQuantize::Auto => DraftQuantize::AUTO_TYPE,
        DraftQuantize::To(d) => d,
    };
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let meta = std::fs::metadata(path)
        .ok()
        .filter(|m| is_gguf && m.is_file())?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = path.file_name()?.to_string_lossy();
    let key = format!("{name}-{}-{modified}-{to}", meta.len());
    let kept = opts.pass_store.requantized_file(&key)?;
    if kept.is_file() {
        return Some(kept);
    }
    if opts.draft_quantize == DraftQuantize::Auto && !requantizes(path, to).unwrap_or(false) {
        return None;
    }
    let dir = kept.parent()?;
    let made = std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(dir, e))
        .and_then(|()| requantize_gguf(path, to, &kept));
    match made {
        Ok(n) => {
            log::info!(
                "{} matrices requantized to {to}, kept in {}",
                n,
                kept.display()
            );
            Some(kept)
        }
        Err(e) => {
            log::warn!("could not keep the requantized drafter: {e}");
            None
        }
    }
}

/// What learned pass times depend on: both models (file name and size), how each runs
/// (device, kernels, threads, precision, quantization at load) and the weight budget.
fn pass_key(opts: &EngineOptions, target: &dyn Backend) -> String {
    let file = |path: &Path| {
        let name = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        format!("{name}-{size}")
    };
    format!(
        "{}-{}-{}-{:?}-{:?}-{:?}-{:?}-draft-{}-{:?}-{:?}-{:?}",
        file(&opts.target),
        target.device_name(),
        crate::quant::Simd::active().name(),
        opts.precision,
        opts.quantize,
        opts.memory_budget,
        opts.io_bandwidth,
        opts.drafter.as_deref().map_or_else(String::new, file),
        opts.draft_threads,
        opts.draft_precision,
        opts.draft_quantize,
    )
}

fn kv_bytes(model: &Model, context: Option<usize>) -> u64 {
    let c = &model.config;
    let slots = context.unwrap_or(c.max_context).min(c.max_context);
    (2 * c.n_layers * c.kv_dim() * slots * 4) as u64
}

impl Engine {
    /// Loads the target (and, with `spec`, the drafter, checked against the target) and
    /// creates their backends. Fails with a message naming the problem: a missing or
    /// corrupt file, a drafter that cannot draft for the target, an unavailable device.
    pub fn load(mut opts: EngineOptions) -> Result<Engine> {
        if opts.spec.is_some() && opts.drafter.is_none() {
            return Err(Error::InvalidArgument(
                "speculative decoding needs a drafter model".into(),
            ));
        }
        if opts.context == Some(0) || opts.threads == Some(0) || opts.draft_threads == Some(0) {
            return Err(Error::InvalidArgument(
                "context and thread counts must be at least 1".into(),
            ));
        }
        if let Some(spec) = &opts.spec {
            spec.validate()?;
        }
        let mut warnings = Vec::new();
        for threads in [&mut opts.threads, &mut opts.draft_threads] {
            if let Some(n) = *threads {
                let (n, notice) = clamp_threads(n);
                *threads = Some(n);
                warnings.extend(notice);
            }
        }
        let load = |path: &PathBuf, quantize| {
            Model::load(
                path,
                &LoadOptions {
                    quantize,
                    progress: opts.progress.clone(),
                },
            )
        };
        let model = load(&opts.target, opts.quantize)?;
        let drafter = match (&opts.spec, &opts.drafter) {
            (Some(spec), Some(path)) => {
                // `Auto` requantizes only into the cache directory
                let in_memory = match opts.draft_quantize {
                    DraftQuantize::To(d) => Some(d),
                    _ => None,
                };
                let kept = requantized_drafter(&opts, path);
                let d = match &kept {
                    Some(kept) => load(kept, None).or_else(|e| {
                        log::warn!("{}: {e}; loading {}", kept.display(), path.display());
                        load(path, in_memory)
                    })?,
                    None => load(path, in_memory)?,
                };
                // learned drafter times belong to the drafter as it loaded
                if opts.draft_quantize == DraftQuantize::Auto {
                    opts.draft_quantize = match kept {
                        Some(_) => DraftQuantize::To(DraftQuantize::AUTO_TYPE),
                        None => DraftQuantize::Stored,
                    };
                }
                warnings.extend(check_pair(&model, &d)?);
                let mut backend = Box::new(cpu_backend(
                    &d,
                    &opts,
                    opts.draft_threads.or(opts.threads),
                    opts.draft_precision,
                )?);
                // (fingerprinting the vocabulary is for nothing when every token is kept)
                let table = match spec.draft_vocab {
                    DraftVocab::Whole => None,
                    _ => FrequencyTable::shipped_for(&d.tokenizer),
                };
                if let Some(ids) = draft_tokens(&d.config, table.as_ref(), spec.draft_vocab) {
                    log::info!(
                        "the drafter proposes {} of its {} tokens ({})",
                        ids.len(),
                        d.config.vocab,
                        if table.is_some() {
                            "the most frequent by the shipped table"
                        } else {
                            "the lowest ids"
                        }
                    );
                    backend.restrict_vocab(&ids);
                }
                Some(Drafter {
                    model: d,
                    backend,
                    spec: spec.clone(),
                    pass_file: None,
                    valid: 0,
                })
            }
            _ => None,
        };
        let memory = MemoryReport {
            budget: opts.memory_budget,
            budget_bytes: opts
                .memory_budget
                .resolve(model.weights.byte_count() as u64),
            target_weights_bytes: model.weights.byte_count() as u64,
            weights_bytes: (model.weights.byte_count()
                + drafter.as_ref().map_or(0, |d| d.model.weights.byte_count()))
                as u64,
            kv_bytes: kv_bytes(&model, opts.context)
                + drafter
                    .as_ref()
                    .map_or(0, |d| kv_bytes(&d.model, opts.context)),
        };
        let target = open_target(&model, &opts, &memory, &mut warnings)?;
        let mut drafter = drafter;
        if let Some(d) = &mut drafter {
            d.pass_file = opts.pass_store.file(&pass_key(&opts, &*target));
            if let (Some(path), true) = (&d.pass_file, d.spec.pass_times.is_empty()) {
                d.spec.pass_times = pass_store::load(path);
            }
        }
        Ok(Engine {
            model,
            target,
            target_valid: 0,
            drafter,
            history: Vec::new(),
            messages: Vec::new(),
            cancel: CancelHandle::default(),
            memory,
            warnings,
            options: opts,
        })
    }

    /// The target model (configuration, tokenizer, chat template).
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    /// The drafter, when speculation is on.
    pub fn drafter(&self) -> Option<&Model> {
        self.drafter.as_ref().map(|d| &d.model)
    }

    /// Where the target runs, e.g. "cpu (2 threads, …)".
    pub fn device_name(&self) -> String {
        self.target.device_name()
    }

    /// The target device's own statistics (weight streaming), when it keeps any.
    pub fn device_stats(&self) -> Option<serde_json::Value> {
        self.target.stats_json()
    }

    /// Warnings for the user (a drafter not smaller than the target, a GPU fallback); the
    /// engine prints nothing itself (a fallback during a generation also goes to `log`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Most tokens the conversation may hold.
    pub fn context_size(&self) -> usize {
        let t = self.target.kv_capacity();
        self.drafter
            .as_ref()
            .map_or(t, |d| t.min(d.backend.kv_capacity()))
    }

    /// Every token of the conversation since the last reset.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// A handle that cancels generation from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Forgets the conversation: clears the KV caches, the token history and the chat turns.
    pub fn reset(&mut self) {
        self.target.kv_truncate(0);
        self.target_valid = 0;
        if let Some(d) = &mut self.drafter {
            d.backend.kv_truncate(0);
            d.valid = 0;
        }
        self.history.clear();
        self.messages.clear();
    }

    /// Continues the conversation with `req.prompt` and generates up to
    /// `req.options.max_tokens` tokens, calling `on_token` for each (return `false` to stop).
    ///
    /// Only tokens the caches do not hold yet are run, so a long conversation costs only its
    /// new turns. On error the conversation is left as it was before the call.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Output> {
        self.cancel.clear();
        if req.reset {
            self.reset();
        }
        let saved_history = self.history.clone();
        let saved_messages = self.messages.clone();
        let result = self.generate_inner(req, on_token);
        if let Err(Error::Gpu(e)) = &result {
            // the tokens streamed so far stand; this call fails, later ones run on the CPU
            // (the caller has the error; the switch is a notice for whoever keeps the engine)
            if let Ok(cpu) = target_cpu_backend(&self.model, &self.options) {
                let notice =
                    format!("the GPU failed ({e}); the target runs on the CPU from now on");
                log::info!("{notice}");
                self.warnings.push(notice);
                self.target = Box::new(cpu);
                self.target_valid = 0;
                if let Some(d) = &mut self.drafter {
                    // the GPU's pass times say nothing of the CPU's
                    d.spec.pass_times = PassTimes::default();
                }
            }
        }
        if result.is_err() {
            // every write went past the valid prefixes, so they still hold
            self.history = saved_history;
            self.messages = saved_messages;
            self.sync_caches();
        }
        result
    }

    /// Lowers the valid prefixes to the history and drops cache entries past them.
    fn sync_caches(&mut self) {
        self.target_valid = self.target_valid.min(self.history.len());
        self.target.kv_truncate(self.target_valid);
        if let Some(d) = &mut self.drafter {
            d.valid = d.valid.min(self.history.len());
            d.backend.kv_truncate(d.valid);
        }
    }

    /// The new prompt tokens; for a chat turn, also lowers the history to what the rendered
    /// conversation shares with it.
    /// With the number of chat turns dropped to fit `max_tokens` more in the context.
    fn new_tokens(&mut self, prompt: &Prompt, max_tokens: usize) -> Result<(Vec<u32>, usize)> {
        Ok(match prompt {
            Prompt::Tokens(t) => (t.clone(), 0),
            Prompt::Text(s) if self.history.is_empty() => (self.model.encode_prompt(s)?, 0),
            Prompt::Text(s) => (self.model.tokenizer.encode(s)?, 0),
            Prompt::Chat(new) => {
                let mut all = self.messages.clone();
                all.extend(new.iter().cloned());
                let (full, common, dropped) = self.render_chat(all, max_tokens)?;
                (full[common..].to_vec(), dropped)
            }
            Prompt::Conversation(all) => {
                let (full, common, dropped) = self.render_chat(all.clone(), max_tokens)?;
                (full[common..].to_vec(), dropped)
            }
        })
    }

    /// Renders `all` as the conversation's chat turns, dropping the oldest (after a leading
    /// system message) while the rendering and `max_tokens` more do not fit the context and
    /// more than the newest turn is left; lowers the history to the tokens it shares with the
    /// rendering. Returns the rendering, that shared length and the turns dropped.
    fn render_chat(
        &mut self,
        mut all: Vec<ChatMessage>,
        max_tokens: usize,
    ) -> Result<(Vec<u32>, usize, usize)> {
        let t = self.model.require_chat_template()?;
        let capacity = self.context_size();
        let keep = usize::from(all.first().is_some_and(|m| m.role == "system"));
        let mut dropped = 0;
        let full = loop {
            let full = self.model.encode_prompt(&t.render(&all, true)?)?;
            if full.len().saturating_add(max_tokens) <= capacity || all.len() <= keep + 1 {
                break full;
            }
            // a turn is a user message and what answers it: the rest starts with a user
            all.remove(keep);
            dropped += 1;
            while all.len() > keep + 1 && all[keep].role != "user" {
                all.remove(keep);
                dropped += 1;
            }
        };
        let common = full
            .iter()
            .zip(&self.history)
            .take_while(|(a, b)| a == b)
            .count();
        self.history.truncate(common);
        self.messages = all;
        Ok((full, common, dropped))
    }

    fn generate_inner(
        &mut self,
        req: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<Output> {
        req.options.sampling.validate()?;
        let (new, dropped_turns) = self.new_tokens(&req.prompt, req.options.max_tokens)?;
        // a chat turn may have shortened the history: drop what the caches hold past it
        // before the new tokens take those places
        self.sync_caches();
        self.history.extend_from_slice(&new);
        if self.history.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        // a chat answer whose turn left less room than asked for fills the context
        let chat = matches!(req.prompt, Prompt::Chat(_) | Prompt::Conversation(_));
        let room = self.context_size().saturating_sub(self.history.len());
        let fills_context = chat
            && req.options.max_tokens > room
            && room > 0
            && req.options.max_tokens <= self.context_size();
        let mut options = req.options.clone();
        if fills_context {
            options.max_tokens = room;
        }
        let opts = &options;
        // The last `tail` tokens go to the decoding loop: it needs the scores of the last one,
        // and its repetition penalty looks back only over the tokens it was given.
        let n = self.history.len();
        let penalty = opts.sampling.repeat_penalty != 1.0;
        let tail = if penalty {
            opts.sampling.repeat_last_n.clamp(1, n)
        } else {
            1
        };
        self.target_valid = self.target_valid.min(n - tail);
        if let Some(d) = &mut self.drafter {
            d.valid = d.valid.min(n - tail);
        }
        self.sync_caches();
        let prompt_run = n - self.target_valid;
        check_context(prompt_run, opts.max_tokens, &*self.target)?;
        if let Some(d) = &self.drafter {
            check_context(n - d.valid, 0, &*d.backend)?;
        }

        // run what the caches lack before the tail, checking for cancellation between chunks
        let mut stats = Stats::default();
        let t0 = Instant::now();
        let cancelled = self.prefill_pending(n - tail, opts.prefill_chunk)?;
        let prefill_time = t0.elapsed();
        let budget = self.memory.budget_bytes;
        if cancelled {
            stats.prompt_tokens = prompt_run;
            stats.prompt_time = prefill_time;
            return Ok(Output {
                prompt: new,
                context_tokens: n,
                tokens: Vec::new(),
                text: String::new(),
                stop: StopReason::Cancelled,
                dropped_turns,
                stats,
                spec: None,
                memory_budget: budget,
            });
        }

        let stop_ids = self.model.config.special.stop.clone();
        let mut stream = self.model.tokenizer.stream_skip_special();
        let mut tokens = Vec::new();
        let mut text = String::new();
        let cancel = self.cancel.clone();
        let mut each = |id: u32| {
            tokens.push(id);
            let piece = match stream.push(id) {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => String::new(),
            };
            text.push_str(&piece);
            let go = on_token(TokenEvent {
                id: Some(id),
                text: &piece,
            });
            go && !cancel.is_cancelled()
        };
        let last = self.history[n - tail..].to_vec();
        let (generation, spec) = match &mut self.drafter {
            None => (
                generate(&mut *self.target, &last, &stop_ids, opts, &mut each)?,
                None,
            ),
            Some(d) => {
                let r = generate_speculative(
                    &mut *self.target,
                    &mut *d.backend,
                    &last,
                    &stop_ids,
                    opts,
                    &d.spec,
                    &mut each,
                )?;
                if let Some(times) = &r.spec.pass_times {
                    d.spec.pass_times = times.clone();
                    if let Some(path) = &d.pass_file {
                        if let Err(e) = pass_store::save(path, times) {
                            log::debug!("could not keep pass times in {}: {e}", path.display());
                        }
                    }
                }
                (r.generation, Some(r.spec))
            }
        };
        if let Ok(Some(rest)) = stream.finish() {
            text.push_str(&rest);
            on_token(TokenEvent {
                id: None,
                text: &rest,
            });
        }
        debug_assert_eq!(generation.tokens, tokens);

        // the caches hold a prefix of the history plus, past a stop inside an accepted
        // draft, tokens the history does not have: keep only the shared prefix
        self.history.extend_from_slice(&generation.tokens);
        self.target_valid = self.target.kv_len();
        if let Some(d) = &mut self.drafter {
            d.valid = d.backend.kv_len();
        }
        self.sync_caches();
        if matches!(req.prompt, Prompt::Chat(_) | Prompt::Conversation(_)) {
            self.messages
                .push(ChatMessage::new("assistant", text.clone()));
        }

        let mut stats = generation.stats;
        stats.prompt_tokens = prompt_run;
        stats.prompt_time += prefill_time;
        Ok(Output {
            prompt: new,
            context_tokens: n,
            tokens: generation.tokens,
            text,
            stop: match generation.stop {
                StopReason::MaxTokens if fills_context => StopReason::ContextFull,
                other => other,
            },
            dropped_turns,
            stats,
            spec,
            memory_budget: budget,
        })
    }

    /// Runs `history[valid..end]` on the target and the drafter in chunks; returns `true` when
    /// cancelled between chunks (the caches then hold what ran).
    fn prefill_pending(&mut self, end: usize, chunk: usize) -> Result<bool> {
        let chunk = chunk.max(1);
        let cancel = self.cancel.clone();
        let run = |backend: &mut dyn Backend, history: &[u32], valid: &mut usize| -> Result<bool> {
            while *valid < end {
                if cancel.is_cancelled() {
                    return Ok(true);
                }
                let part = &history[*valid..end.min(*valid + chunk)];
                backend.forward(
                    &Batch::chain(part, *valid),
                    Want {
                        rows: Rows::Last,
                        top_k: Some(1),
                    },
                )?;
                *valid += part.len();
            }
            Ok(false)
        };
        if run(&mut *self.target, &self.history, &mut self.target_valid)? {
            return Ok(true);
        }
        if let Some(d) = &mut self.drafter {
            if run(&mut *d.backend, &self.history, &mut d.valid)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send() {
        fn send<T: Send>() {}
        send::<Engine>();
        send::<CancelHandle>();
        fn sync<T: Sync>() {}
        sync::<CancelHandle>();
    }

    #[test]
    fn devices_parse() {
        assert_eq!("CPU".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert!("tpu".parse::<Device>().is_err());
    }
}
