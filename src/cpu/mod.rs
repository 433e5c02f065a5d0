//! The CPU backend: the model recipe's ops (`forward.rs`) with a KV cache, multi-threaded,
//! over batches of nodes with explicit positions and masks. It runs the drafter, and the target when there
//! is no GPU.

mod attention;
mod forward;
mod kv;
mod matmul;
pub mod ops;
mod packs;
pub mod pool;

pub use matmul::Precision;
pub use pool::ThreadPool;

use crate::backend::{Backend, Batch, Capabilities, Logits, Rows, Want};
use crate::error::{Error, Result};
use crate::format::Bytes;
use crate::model::{recipe, Matrix, ModelConfig, ModelWeights};
use crate::quant::{PackedWeights, Q8Acts};
use forward::CpuPass;
use kv::KvCache;
use matmul::{linear_many, Input, Weight};
use ops::softcap;
use packs::Packs;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct CpuOptions {
    pub threads: usize,
    pub precision: Precision,
    /// KV-cache capacity in tokens (at most the model's context).
    pub context: usize,
}

impl CpuOptions {
    /// All physical parallelism, fast path, the model's full context.
    pub fn for_model(cfg: &ModelConfig) -> Self {
        CpuOptions {
            threads: default_threads(),
            precision: Precision::default(),
            context: cfg.max_context,
        }
    }
}

/// Threads to use when the user does not say: every core the process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `asked` threads, or the core count when `asked` is more than 4 per core (threads beyond the
/// cores only take turns on them, and thousands would exhaust memory), with a notice saying so.
pub fn clamp_threads(asked: usize) -> (usize, Option<String>) {
    let cores = default_threads();
    if asked > 4 * cores {
        let notice =
            format!("{asked} threads is far more than this machine's {cores} cores; using {cores}");
        (cores, Some(notice))
    } else {
        (asked, None)
    }
}

pub struct CpuBackend {
    cfg: ModelConfig,
    weights: Arc<ModelWeights>,
    pool: ThreadPool,
    precision: Precision,
    /// Per RoPE of the model (`ModelConfig::ropes`).
    inv_freqs: Vec<Vec<f32>>,
    kv: KvCache,
    q8: Q8Acts,
    /// The matrices packed for the kernels in use.
    packs: Packs,
    /// The output head's rows for a restricted vocabulary (and their packed copy), and their
    /// token ids.
    head_subset: Option<(Matrix, Option<PackedWeights>, Vec<u32>)>,
}

impl CpuBackend {
    /// Fails when the OS refuses the worker threads (a process limit).
    pub fn new(cfg: ModelConfig, weights: Arc<ModelWeights>, opts: &CpuOptions) -> Result<Self> {
        let context = opts.context.min(cfg.max_context);
        let pool = ThreadPool::new(opts.threads).map_err(|e| {
            Error::InvalidArgument(format!(
                "the system refused to start {} CPU threads ({e}); ask for fewer",
                opts.threads
            ))
        })?;
        Ok(CpuBackend {
            packs: Packs::new(&weights, opts.precision, &pool),
            inv_freqs: cfg.ropes().iter().map(|r| r.inv_freqs(context)).collect(),
            kv: KvCache::new(cfg.n_layers, cfg.kv_dim(), context),
            pool,
            precision: opts.precision,
            weights,
            cfg,
            q8: Q8Acts::default(),
            head_subset: None,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Final hidden states (after the output norm) for the rows the caller wants.
    fn hidden_states(&mut self, batch: &Batch, rows: Rows) -> Result<Vec<f32>> {
        batch.validate(self.kv.len())?;
        let c = &self.cfg;
        let n = batch.len();
        if n == 0 {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                c.vocab
            )));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p >= self.kv.capacity()) {
            return Err(Error::ContextOverflow {
                needed: p + 1,
                limit: self.kv.capacity(),
                hint: String::new(),
            });
        }
        self.kv.reserve(n)?;
        let mut pass = CpuPass::new(
            c,
            &self.weights,
            &self.packs,
            &self.pool,
            self.precision,
            &mut self.kv,
            &mut self.q8,
            batch,
            rows,
            &self.inv_freqs,
        );
        recipe::forward(c, &mut pass)?;
        let hidden = pass.into_hidden();
        self.kv.advance(n);
        Ok(hidden)
    }
}

impl Backend for CpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            speculative_cache: true,
            max_top_k: usize::MAX,
        }
    }

    fn on_cpu(&self) -> bool {
        true
    }

    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.pool.n_threads())
    }

    fn forward(&mut self, batch: &Batch, want: Want) -> Result<Logits> {
        let hidden = self.hidden_states(batch, want.rows)?;
        let vocab = self.cfg.vocab;
        let rows = hidden.len() / self.cfg.hidden;
        let mut input = Input::new(&hidden, self.cfg.hidden, &mut self.q8);
        let final_softcap = self.cfg.final_softcap;
        let cap = |logits: &mut [f32]| {
            if let Some(c) = final_softcap {
                softcap(logits, c);
            }
        };
        let logits = match &self.head_subset {
            None => {
                let mut logits = vec![0f32; rows * vocab];
                let head = self.packs.head(&self.weights);
                linear_many(
                    &self.pool,
                    self.precision,
                    &mut input,
                    &[head],
                    &mut [&mut logits],
                );
                cap(&mut logits);
                logits
            }
            Some((head, packed, ids)) => {
                let mut some = vec![0f32; rows * ids.len()];
                let head = Weight {
                    matrix: head,
                    packed: packed.as_ref(),
                };
                linear_many(
                    &self.pool,
                    self.precision,
                    &mut input,
                    &[head],
                    &mut [&mut some],
                );
                // before the scatter: the tokens left out stay at -∞
                cap(&mut some);
                let mut logits = vec![f32::NEG_INFINITY; rows * vocab];
                for (row, part) in logits
                    .chunks_exact_mut(vocab)
                    .zip(some.chunks_exact(ids.len()))
                {
                    for (&id, &l) in ids.iter().zip(part) {
                        row[id as usize] = l;
                    }
                }
                logits
            }
        };
        let dense = Logits::Dense {
            vocab,
            data: logits,
        };
        Ok(match want.top_k {
            None => dense,
            Some(k) => dense.into_top_k(k),
        })
    }

    fn restrict_vocab(&mut self, ids: &[u32]) -> bool {
        let head = &self.weights.head;
        if !ids.is_sorted() || ids.last().is_some_and(|&id| id as usize >= head.rows) {
            return false;
        }
        let rb = head.row_bytes();
        let mut data = Vec::with_capacity(ids.len() * rb);
        for &id in ids {
            data.extend_from_slice(&head.data[id as usize * rb..(id as usize + 1) * rb]);
        }
        let sub = Matrix {
            name: format!("{} (restricted to {} tokens)", head.name, ids.len()),
            dtype: head.dtype,
            rows: ids.len(),
            cols: head.cols,
            data: Bytes::Owned(data.into()),
        };
        // the whole head's packed copy is not read again: its memory goes back
        self.packs.drop_head();
        let packed = packs::pack(&sub);
        self.head_subset = Some((sub, packed, ids.to_vec()));
        true
    }

    fn kv_len(&self) -> usize {
        self.kv.len()
    }

    fn kv_capacity(&self) -> usize {
        self.kv.capacity()
    }

    fn kv_compact(&mut self, base: usize, keep: &[usize]) -> Result<()> {
        self.kv.compact(base, keep)
    }

    fn kv_truncate(&mut self, len: usize) {
        self.kv.truncate(len)
    }
}
