//! Speculative generation: the drafter grows a tree, the target verifies it in one pass, the
//! accepted path (plus the target's own token) is emitted and committed to both caches.

use super::cost::{CostModel, PassTimes, RoundCost};
use super::drafter::{Draft, Drafter, Extension, Growth, TreeShape};
use super::fallback::{Fallback, FallbackPolicy, Outcome, ThresholdTrace};
use super::frequent::DraftVocab;
use super::verify::{accept, Verdict};
use crate::backend::{Backend, Batch, Logits, Rows, Want};
use crate::error::{Error, Result};
use crate::generate::{check_context, prefill, GenerateOptions, Generation, Output, StopReason};
use crate::sampling::{next_token, SamplerRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How drafts are shaped.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecMode {
    /// Token trees under the fallback policy (LLMCad).
    Tree,
    /// Vanilla speculative decoding: a chain of exactly `k` drafted tokens per pass.
    Chain { k: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpecOptions {
    pub mode: SpecMode,
    pub fallback: FallbackPolicy,
    /// Most nodes per tree; `None` sizes trees by measured cost (capped at `AUTO_MAX_NODES`).
    pub max_nodes: Option<usize>,
    pub max_depth: usize,
    pub branch_threshold: f32,
    pub max_children: usize,
    /// Keep drafting on another thread while the target verifies (tree mode).
    pub overlap: Overlap,
    /// Which tokens the drafter may propose: its output head keeps only the most frequent
    /// (FR-Spec). Exact either way: the target verifies every token.
    pub draft_vocab: DraftVocab,
    /// The verifier's pass times learned so far (by earlier generations, or kept from an
    /// earlier process), to size trees by cost from the first round.
    pub pass_times: PassTimes,
}

/// Whether the drafter keeps drafting while the target verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Unless the target runs on the CPU: there the drafting thread would take cores from the
    /// target's own pass and slow it down more than drafting gains.
    Auto,
    On,
    Off,
}

/// The node cap when trees are sized by cost (the verifier kernels are tuned up to 64).
pub const AUTO_MAX_NODES: usize = 64;

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            mode: SpecMode::Tree,
            fallback: FallbackPolicy::Adaptive,
            max_nodes: None,
            max_depth: 12,
            // low: the best-first growth already ranks branches by path confidence, and
            // second choices near the root beat deep first choices for this kind of drafter
            branch_threshold: 0.02,
            max_children: 4,
            overlap: Overlap::Auto,
            draft_vocab: DraftVocab::Auto,
            pass_times: PassTimes::default(),
        }
    }
}

impl SpecOptions {
    /// Fails on a parameter outside its meaningful range, naming it and the range.
    pub fn validate(&self) -> Result<()> {
        crate::sampling::check_range("branch_threshold", self.branch_threshold, 0.0, 1.0)
    }

    fn shape(&self) -> TreeShape {
        match self.mode {
            SpecMode::Chain { k } => TreeShape::chain(k),
            SpecMode::Tree => TreeShape {
                max_nodes: self.max_nodes.unwrap_or(AUTO_MAX_NODES),
                max_depth: self.max_depth,
                branch_threshold: self.branch_threshold,
                max_children: self.max_children,
            },
        }
    }
}

/// What speculation did, on top of the plain generation stats.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Drafted tokens (tree nodes other than the roots).
    pub draft_tokens: usize,
    pub draft_passes: usize,
    /// Drafted tokens the target accepted.
    pub accepted_tokens: usize,
    /// Tokens emitted by verification passes (accepted + the target's own).
    pub emitted_tokens: usize,
    pub tree_nodes: usize,
    pub draft_time: Duration,
    pub verify_time: Duration,
    pub threshold: ThresholdTrace,
    /// Rounds that verified the target's token alone because speculation did not pay.
    pub plain_rounds: usize,
    /// The drafter's catch-up on the prompt and on the tokens of those rounds, before it
    /// drafted (part of `draft_time`).
    pub catch_up_tokens: usize,
    pub catch_up_time: Duration,
    /// Nodes drafted while the target verified, and how many of them were used.
    pub overlap_drafted: usize,
    pub overlap_kept: usize,
    /// The verifier's pass times as learned by the end, when trees were sized by cost.
    pub pass_times: Option<PassTimes>,
}

impl SpecStats {
    /// Tokens emitted per target pass (the number the drafter's README reports).
    pub fn mean_accepted_per_pass(&self, passes: usize) -> f64 {
        ratio(self.emitted_tokens, passes)
    }

    pub fn mean_tree_nodes(&self, passes: usize) -> f64 {
        ratio(self.tree_nodes, passes)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub struct SpecGeneration {
    pub generation: Generation,
    pub spec: SpecStats,
}

/// Generates like [`crate::generate::generate`] (same tokens under greedy decoding, the same
/// distribution under sampling) with `drafter` proposing and `target` verifying.
pub fn generate_speculative(
    target: &mut dyn Backend,
    drafter: &mut dyn Backend,
    prompt: &[u32],
    stop_ids: &[u32],
    opts: &GenerateOptions,
    spec: &SpecOptions,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<SpecGeneration> {
    if opts.max_tokens == 0 {
        return Ok(SpecGeneration {
            generation: crate::generate::generate(target, prompt, stop_ids, opts, on_token)?,
            spec: SpecStats::default(),
        });
    }
    check_context(prompt.len(), opts.max_tokens, target)?;
    check_context(prompt.len(), 0, drafter)?;
    if !drafter.capabilities().speculative_cache {
        return Err(Error::Unsupported(format!(
            "the drafter runs on {}, which cannot draft over its own cached tree; run the \
             drafter on the CPU",
            drafter.device_name()
        )));
    }
    let params = &opts.sampling;
    let mut rng = SamplerRng::new(params.seed);
    let top_k = target.capabilities().top_k_for(params.candidates_needed());
    let want = Want {
        rows: Rows::All,
        top_k,
    };
    let mut out = SpecGeneration {
        generation: Generation {
            tokens: Vec::new(),
            stop: StopReason::MaxTokens,
            stats: Default::default(),
        },
        spec: SpecStats::default(),
    };
    let stats = &mut out.generation.stats;
    stats.prompt_tokens = prompt.len();

    let t0 = Instant::now();
    let logits = prefill(target, prompt, opts.prefill_chunk, top_k)?;
    let mut history = prompt.to_vec();
    let mut root = next_token(params, &logits, 0, &history, &mut rng);
    stats.prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let shape = spec.shape();
    let mut cost = match (&spec.mode, spec.max_nodes) {
        (SpecMode::Tree, None) => Some(CostModel::new(spec.pass_times.clone())),
        _ => None,
    };
    let mut fallback = Fallback::new(match spec.mode {
        SpecMode::Tree => spec.fallback,
        SpecMode::Chain { .. } => FallbackPolicy::Fixed(0.0),
    });
    let mut drafter = Drafter::new(drafter, prompt, opts.prefill_chunk, shape.max_children);
    let overlap = spec.mode == SpecMode::Tree
        && match spec.overlap {
            Overlap::Auto => !target.on_cpu(),
            Overlap::On => true,
            Overlap::Off => false,
        };
    let tokens = &mut out.generation.tokens;
    let stop = 'outer: loop {
        // the root is the target's token: emit it before drafting past it
        let mut output = Output {
            tokens,
            history: &mut history,
        };
        if let Some(stop) = output.emit(root, stop_ids, opts, on_token) {
            break stop;
        }
        let remaining = opts.max_tokens - tokens.len();

        let round = Instant::now();
        let committed = target.kv_len();
        let mut shape = shape.clone();
        // never draft past what is left to generate or what the target's cache holds
        shape.max_depth = shape.max_depth.min(remaining - 1);
        shape.max_nodes = shape.max_nodes.min(target.kv_capacity() - committed);
        if let Some(c) = cost.as_mut() {
            c.set_streamed_io(target.streamed_io_ms());
        }
        // trees sized by cost: speculate only while it pays (or while work drafted during
        // the last verification is waiting)
        let drafting =
            drafter.has_carry() || cost.as_mut().is_none_or(|c| c.should_draft(remaining));
        // the fallback decides when drafting stops; leaves the drafter already proposed cost
        // only verification, which the cost model weighs when trees are sized by cost
        let draft = if drafting {
            drafter.draft(root, &shape, &mut |tree, conf, step| {
                (step == Growth::Leaf || !fallback.should_verify(conf))
                    && cost
                        .as_ref()
                        .is_none_or(|c| c.worth_growing(tree.len(), conf, step))
            })?
        } else {
            out.spec.plain_rounds += 1;
            drafter.skip(root)
        };
        let draft_ms = round.elapsed();

        let t = Instant::now();
        let batch = draft.tree.batch(committed);
        // (a plain round's drafter is behind: it has tokens to catch up on first)
        let (logits, extension) = if overlap && drafting {
            verify_while_drafting(target, &mut drafter, &draft, &batch, want, shape.max_depth)?
        } else {
            (target.forward(&batch, want)?, None)
        };
        if let Some(c) = cost.as_mut() {
            c.record_pass(draft.tree.len(), t.elapsed().as_secs_f64() * 1e3);
        }
        let verdict = accept(params, &draft.tree, &logits, &history, &mut rng);
        target.kv_compact(committed, &verdict.path)?;
        out.spec.overlap_drafted += extension.as_ref().map_or(0, |e| e.len());
        out.spec.overlap_kept += drafter.commit(&draft, &verdict.path, verdict.next, extension)?;
        out.spec.verify_time += t.elapsed();
        out.spec.draft_time += draft_ms;
        out.spec.catch_up_tokens += draft.catch_up.tokens;
        out.spec.catch_up_time += Duration::from_secs_f64(draft.catch_up.ms / 1e3);

        let drafted = draft.tree.len() - 1;
        let accepted = verdict.path.len() - 1;
        stats.target_passes += 1;
        out.spec.tree_nodes += draft.tree.len();
        out.spec.draft_tokens += drafted;
        out.spec.draft_passes += draft.passes;
        out.spec.accepted_tokens += accepted;
        out.spec.emitted_tokens += accepted + 1;
        let round_ms = round.elapsed().as_secs_f64() * 1e3;
        match cost.as_mut() {
            Some(c) if !drafting => c.record_plain(round_ms),
            Some(c) => c.record(&RoundCost {
                draft_ms: draft_ms.as_secs_f64() * 1e3,
                draft_passes: draft.passes,
                drafted_conf: draft.tree.nodes()[1..].iter().map(|n| n.conf as f64).sum(),
                accepted,
                total_ms: round_ms,
                emitted: accepted + 1,
                catch_up: draft.catch_up,
            }),
            None => {}
        }
        if drafting {
            fallback.record(outcome(&draft.tree, &verdict));
        }

        let emitted = verdict.emitted(&draft.tree);
        let (accepted_tokens, next) = emitted.split_at(emitted.len() - 1);
        let mut output = Output {
            tokens,
            history: &mut history,
        };
        for &tok in accepted_tokens {
            if let Some(stop) = output.emit(tok, stop_ids, opts, on_token) {
                break 'outer stop;
            }
        }
        root = next[0];
    };
    stats.decode_time = t1.elapsed();
    stats.generated_tokens = tokens.len();
    out.generation.stop = stop;
    out.spec.threshold = fallback.trace().clone();
    out.spec.pass_times = cost.map(CostModel::into_pass_times);
    Ok(out)
}

/// Runs the target over the tree while the drafter, on another thread, drafts a chain below
/// the tree's most likely leaf; the drafter stops as soon as the target is done.
fn verify_while_drafting(
    target: &mut dyn Backend,
    drafter: &mut Drafter,
    draft: &Draft,
    batch: &Batch,
    want: Want,
    max_steps: usize,
) -> Result<(Logits, Option<Extension>)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| drafter.extend(draft, &stop, max_steps));
        let verified = target.forward(batch, want);
        stop.store(true, Ordering::Release);
        let extension = worker
            .join()
            .map_err(|_| Error::InvalidArgument("the drafting thread panicked".into()))?;
        Ok((verified?, Some(extension?)))
    })
}

/// Whether verification found an error in the drafted tree, for the fallback policy.
fn outcome(tree: &super::TokenTree, v: &Verdict) -> Outcome {
    let last = *v.path.last().expect("the root is always accepted");
    // no child of the last accepted node matched the target's token (or it would be accepted)
    match tree
        .children(last)
        .map(|c| tree.node(c).conf)
        .reduce(f32::max)
    {
        Some(conf) => Outcome::Rejected { conf },
        None => Outcome::NoError,
    }
}
