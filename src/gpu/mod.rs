//! The GPU backend (wgpu, WGSL compute shaders): the verifier of the speculative pipeline. It
//! runs the same Llama-family forward pass as the CPU backend over batches of tree nodes, with
//! weights uploaded once, one command buffer per pass, and a small readback (the top-k of each
//! row when the caller asks for it).

mod device;
mod fault;
pub mod kernels;
pub mod shaders;

pub use device::{adapter_summary, open, DeviceOptions, GpuContext};
pub use fault::Fault;
pub use kernels::{AttentionArgs, Gpu, GpuMatrix, MatmulArgs, Recorder};

use crate::backend::{Backend, Batch, CacheView, Logits, Rows, Want};
use crate::cpu::ops::RopeTable;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, ModelWeights, RopeLayout};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to run a model on the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// KV-cache capacity in tokens (at most the model's context).
    pub context: usize,
    /// Device switches (f16, subgroups, binding-size cap); defaults read the environment.
    pub device: DeviceOptions,
}

impl GpuOptions {
    pub fn for_model(cfg: &ModelConfig) -> Self {
        GpuOptions {
            context: cfg.max_context,
            device: DeviceOptions::default(),
        }
    }
}

struct GpuLayer {
    attn_norm: wgpu::Buffer,
    ffn_norm: wgpu::Buffer,
    wq: GpuMatrix,
    wk: GpuMatrix,
    wv: GpuMatrix,
    wo: GpuMatrix,
    w_gate: GpuMatrix,
    w_up: GpuMatrix,
    w_down: GpuMatrix,
    bias: Option<[wgpu::Buffer; 3]>,
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
}

/// Activations for up to `cap` tokens.
struct Scratch {
    cap: usize,
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    logits: wgpu::Buffer,
    ids: wgpu::Buffer,
    vals: wgpu::Buffer,
}

pub struct GpuBackend {
    cfg: ModelConfig,
    gpu: Gpu,
    embed: GpuMatrix,
    layers: Vec<GpuLayer>,
    norm: wgpu::Buffer,
    head: Option<GpuMatrix>,
    inv_freqs: Vec<f32>,
    capacity: usize,
    len: usize,
    scratch: Option<Scratch>,
    kv_tmp: wgpu::Buffer,
    weight_bytes: u64,
}

impl GpuBackend {
    /// Opens the device `opts` describes and uploads the weights.
    pub fn new(cfg: ModelConfig, weights: Arc<ModelWeights>, opts: &GpuOptions) -> Result<Self> {
        let ctx = device::open(&opts.device)?;
        Self::with_context(cfg, weights, opts.context, ctx)
    }

    /// Uploads the weights to an already open device.
    pub fn with_context(
        cfg: ModelConfig,
        weights: Arc<ModelWeights>,
        context: usize,
        ctx: GpuContext,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.head_dim > kernels::MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "GPU attention handles head dimensions up to {}, the model has {}",
                kernels::MAX_HEAD_DIM,
                cfg.head_dim
            )));
        }
        let gpu = Gpu::new(ctx);
        let capacity = context.min(cfg.max_context).max(1);
        let kv_bytes = capacity * cfg.kv_dim() * 4;
        if kv_bytes as u64 > gpu.ctx.max_binding {
            return Err(Error::Unsupported(format!(
                "a layer's KV cache for {capacity} tokens ({kv_bytes} bytes) exceeds the GPU \
                 binding limit ({} bytes): use a shorter context",
                gpu.ctx.max_binding
            )));
        }
        let w = &*weights;
        let up = |m| GpuMatrix::upload(&gpu, m);
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(GpuLayer {
                attn_norm: gpu.upload(&l.attn_norm, "attn_norm"),
                ffn_norm: gpu.upload(&l.ffn_norm, "ffn_norm"),
                wq: up(&l.wq)?,
                wk: up(&l.wk)?,
                wv: up(&l.wv)?,
                wo: up(&l.wo)?,
                w_gate: up(&l.w_gate)?,
                w_up: up(&l.w_up)?,
                w_down: up(&l.w_down)?,
                bias: l.bias.as_ref().map(|b| {
                    [
                        gpu.upload(&b.q, "bq"),
                        gpu.upload(&b.k, "bk"),
                        gpu.upload(&b.v, "bv"),
                    ]
                }),
                k_cache: gpu.buffer(kv_bytes, "k_cache"),
                v_cache: gpu.buffer(kv_bytes, "v_cache"),
            });
        }
        let embed = up(&w.embed)?;
        let head = if w.tied_head && w.head.dtype == w.embed.dtype {
            None
        } else {
            Some(up(&w.head)?)
        };
        let mut weight_bytes = embed.byte_len() + head.as_ref().map_or(0, |h| h.byte_len());
        for l in &layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                weight_bytes += m.byte_len();
            }
        }
        let norm = gpu.upload(&w.norm, "norm");
        gpu.ctx.wait()?;
        Ok(GpuBackend {
            inv_freqs: cfg.rope.inv_freqs(),
            kv_tmp: gpu.buffer(4, "kv_tmp"),
            gpu,
            embed,
            layers,
            norm,
            head,
            capacity,
            len: 0,
            scratch: None,
            weight_bytes,
            cfg,
        })
    }

    /// The device and its kernels (for tools and benchmarks).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights resident on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bindings the weight matrices occupy (more than the matrix count when some are split).
    pub fn weight_bindings(&self) -> usize {
        let mut n = self.embed.chunks.len() + self.head.as_ref().map_or(0, |h| h.chunks.len());
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                n += m.chunks.len();
            }
        }
        n
    }

    fn head(&self) -> &GpuMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    fn ensure_scratch(&mut self, n: usize) -> Result<()> {
        if self.scratch.as_ref().is_some_and(|s| s.cap >= n) {
            return Ok(());
        }
        let cap = n.next_power_of_two().max(16);
        let c = &self.cfg;
        let f = |len: usize, what: &str| -> Result<wgpu::Buffer> {
            let bytes = len * 4;
            if bytes as u64 > self.gpu.ctx.max_binding {
                return Err(Error::Unsupported(format!(
                    "GPU {what} for a batch of {n} ({bytes} bytes) exceeds the binding limit \
                     ({} bytes): use smaller batches",
                    self.gpu.ctx.max_binding
                )));
            }
            Ok(self.gpu.buffer(bytes, what))
        };
        let cap_rows = |len: usize| {
            // activations are sized for `cap` rows but must still fit one binding
            let max_rows = (self.gpu.ctx.max_binding as usize / 4 / len).max(1);
            cap.min(max_rows.max(n))
        };
        self.scratch = Some(Scratch {
            cap: cap_rows(c.ffn.max(c.vocab)),
            x: f(cap_rows(c.hidden) * c.hidden, "x")?,
            xn: f(cap_rows(c.hidden) * c.hidden, "xn")?,
            q: f(cap_rows(c.q_dim()) * c.q_dim(), "q")?,
            k: f(cap_rows(c.kv_dim()) * c.kv_dim(), "k")?,
            v: f(cap_rows(c.kv_dim()) * c.kv_dim(), "v")?,
            att: f(cap_rows(c.q_dim()) * c.q_dim(), "att")?,
            gate: f(cap_rows(c.ffn) * c.ffn, "gate")?,
            up: f(cap_rows(c.ffn) * c.ffn, "up")?,
            logits: f(cap_rows(c.vocab) * c.vocab, "logits")?,
            ids: f(cap * 128, "ids")?,
            vals: f(cap * 64, "vals")?,
        });
        Ok(())
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.validate(self.len)?;
        if batch.cache != CacheView::All {
            // drafting runs on the CPU backend; the verifier always sees its whole prefix
            return Err(Error::Unsupported(
                "the GPU backend verifies over the committed prefix only (no speculative cache view)"
                    .into(),
            ));
        }
        let n = batch.len();
        if n == 0 {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.cfg.vocab
            )));
        }
        let needed = (self.len + n).max(batch.positions.iter().max().map_or(0, |p| p + 1));
        if needed > self.capacity {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.capacity,
                hint: String::new(),
            });
        }
        Ok(())
    }

    /// Records the forward pass; returns the recorder and where the requested rows' logits are.
    fn record(&mut self, batch: &Batch, want: Want) -> Result<(Recorder, usize)> {
        self.check_batch(batch)?;
        let n = batch.len();
        self.ensure_scratch(n)?;
        let c = &self.cfg;
        let g = &self.gpu;
        let s = self.scratch.as_ref().expect("scratch");
        let base = self.len;
        let (h, q_dim, kv_dim, ffn) = (c.hidden, c.q_dim(), c.kv_dim(), c.ffn);

        // per-pass inputs
        let tokens = g.upload(&batch.tokens, "tokens");
        let rope = RopeTable::new(&c.rope, &self.inv_freqs, &batch.positions);
        let cos = g.upload(&rope.cos, "cos");
        let sin = g.upload(&rope.sin, "sin");
        let mut vis_off = Vec::with_capacity(n + 1);
        let mut vis = Vec::new();
        for i in 0..n {
            vis_off.push(vis.len() as u32);
            vis.extend(batch.visible(i).into_iter().map(|j| j as u32));
        }
        vis_off.push(vis.len() as u32);
        let vis_off = g.upload(&vis_off, "vis_off");
        let vis = g.upload(&vis, "vis");
        let half_split = c.rope.layout == RopeLayout::HalfSplit;

        let mut rec = Recorder::default();
        g.embed(&mut rec, &self.embed, &tokens, n, &s.x)?;
        let mm = |rec: &mut Recorder,
                  m: &GpuMatrix,
                  x: &wgpu::Buffer,
                  y: &wgpu::Buffer,
                  accumulate: bool,
                  bias: Option<&wgpu::Buffer>|
         -> Result<()> {
            g.matmul(
                rec,
                m,
                &MatmulArgs {
                    x,
                    x_off: 0,
                    x_stride: m.cols,
                    n,
                    y,
                    y_off: 0,
                    y_stride: m.rows,
                    accumulate,
                    bias,
                },
            )
        };
        for l in &self.layers {
            g.rms_norm(&mut rec, &s.x, 0, &l.attn_norm, c.rms_eps, &s.xn, 0, n, h)?;
            let b = l.bias.as_ref();
            mm(&mut rec, &l.wq, &s.xn, &s.q, false, b.map(|b| &b[0]))?;
            mm(&mut rec, &l.wk, &s.xn, &s.k, false, b.map(|b| &b[1]))?;
            mm(&mut rec, &l.wv, &s.xn, &s.v, false, b.map(|b| &b[2]))?;
            let half = rope.half;
            g.rope(
                &mut rec, &s.q, n, c.n_heads, c.head_dim, half, half_split, &cos, &sin,
            )?;
            g.rope(
                &mut rec,
                &s.k,
                n,
                c.n_kv_heads,
                c.head_dim,
                half,
                half_split,
                &cos,
                &sin,
            )?;
            let off = (base * kv_dim * 4) as u64;
            let bytes = (n * kv_dim * 4) as u64;
            rec.copy(&s.k, 0, &l.k_cache, off, bytes);
            rec.copy(&s.v, 0, &l.v_cache, off, bytes);
            g.attention(
                &mut rec,
                &AttentionArgs {
                    q: &s.q,
                    k_cache: &l.k_cache,
                    v_cache: &l.v_cache,
                    vis_off: &vis_off,
                    vis: &vis,
                    out: &s.att,
                    n,
                    base,
                    n_heads: c.n_heads,
                    n_kv_heads: c.n_kv_heads,
                    head_dim: c.head_dim,
                },
            )?;
            mm(&mut rec, &l.wo, &s.att, &s.x, true, None)?;
            g.rms_norm(&mut rec, &s.x, 0, &l.ffn_norm, c.rms_eps, &s.xn, 0, n, h)?;
            mm(&mut rec, &l.w_gate, &s.xn, &s.gate, false, None)?;
            mm(&mut rec, &l.w_up, &s.xn, &s.up, false, None)?;
            g.swiglu(&mut rec, &s.gate, &s.up, n * ffn)?;
            mm(&mut rec, &l.w_down, &s.gate, &s.x, true, None)?;
        }
        let _ = q_dim;
        let (first, rows) = match want.rows {
            Rows::Last => (n - 1, 1),
            Rows::All => (n, n),
        };
        let first = if want.rows == Rows::Last { first } else { 0 };
        g.rms_norm(
            &mut rec,
            &s.x,
            first * h,
            &self.norm,
            c.rms_eps,
            &s.xn,
            0,
            rows,
            h,
        )?;
        let head = self.head();
        g.matmul(
            &mut rec,
            head,
            &MatmulArgs {
                x: &s.xn,
                x_off: 0,
                x_stride: h,
                n: rows,
                y: &s.logits,
                y_off: 0,
                y_stride: c.vocab,
                accumulate: false,
                bias: None,
            },
        )?;
        self.len += n;
        Ok((rec, rows))
    }

    fn forward_inner(&mut self, batch: &Batch, want: Want) -> Result<Logits> {
        let base = self.len;
        let (rec, rows) = match self.record(batch, want) {
            Ok(r) => r,
            Err(e) => {
                self.len = base;
                return Err(e);
            }
        };
        let out = self.run_pass(rec, rows, want);
        if out.is_err() {
            self.len = base;
        }
        out
    }

    fn run_pass(&self, mut rec: Recorder, rows: usize, want: Want) -> Result<Logits> {
        let vocab = self.cfg.vocab;
        let s = self.scratch.as_ref().expect("scratch");
        let g = &self.gpu;
        match want.top_k {
            None => {
                let b = g.run_and_read(rec, &s.logits, 0, rows * vocab * 4)?;
                Ok(Logits::Dense {
                    vocab,
                    data: bytemuck::pod_collect_to_vec(&b),
                })
            }
            Some(k) => {
                let k = k.clamp(1, vocab.min(64));
                g.top_k(&mut rec, &s.logits, 0, rows, vocab, k, &s.ids, &s.vals)?;
                // one readback: ids then values
                let bytes = (rows * k * 4) as u64;
                rec.copy(&s.vals, 0, &s.ids, bytes, bytes);
                let b = g.run_and_read(rec, &s.ids, 0, 2 * rows * k * 4)?;
                let all: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
                Ok(Logits::TopK {
                    k,
                    ids: all[..rows * k].to_vec(),
                    logits: all[rows * k..].iter().map(|&b| f32::from_bits(b)).collect(),
                })
            }
        }
    }

    /// Time of one verification pass of `n` nodes (a binary tree over a prefix of `prefix`
    /// cache entries, all rows, top-8 readback) for each `n`: the median of `reps` runs after
    /// a warm-up. Committed entries are never overwritten (a prefix shorter than `kv_len` is
    /// measured at `kv_len`), and `kv_len` is restored afterwards.
    pub fn pass_cost_curve(
        &mut self,
        ns: &[usize],
        prefix: usize,
        reps: usize,
    ) -> Result<Vec<(usize, Duration)>> {
        let saved = self.len;
        let prefix = prefix.max(saved);
        let mut out = Vec::with_capacity(ns.len());
        let max_n = ns.iter().copied().max().unwrap_or(1);
        if prefix + max_n > self.capacity {
            return Err(Error::ContextOverflow {
                needed: prefix + max_n,
                limit: self.capacity,
                hint: " (pass cost curve)".into(),
            });
        }
        self.len = prefix;
        let want = Want {
            rows: Rows::All,
            top_k: Some(8),
        };
        for &n in ns {
            let parents: Vec<Option<usize>> = (0..n)
                .map(|i| if i == 0 { None } else { Some((i - 1) / 2) })
                .collect();
            let tokens: Vec<u32> = (0..n).map(|i| (i % self.cfg.vocab) as u32).collect();
            let batch = Batch::tree(&tokens, &parents, prefix);
            let mut times = Vec::with_capacity(reps + 1);
            for _ in 0..=reps.max(1) {
                self.len = prefix;
                let t = Instant::now();
                let r = self.forward_inner(&batch, want);
                times.push(t.elapsed());
                if let Err(e) = r {
                    self.len = saved;
                    return Err(e);
                }
            }
            times.remove(0);
            times.sort();
            out.push((n, times[times.len() / 2]));
        }
        self.len = saved;
        Ok(out)
    }
}

impl Backend for GpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn device_name(&self) -> String {
        format!("gpu: {}", self.gpu.ctx.summary())
    }

    fn forward(&mut self, batch: &Batch, want: Want) -> Result<Logits> {
        self.forward_inner(batch, want)
    }

    fn kv_len(&self) -> usize {
        self.len
    }

    fn kv_capacity(&self) -> usize {
        self.capacity
    }

    fn kv_compact(&mut self, base: usize, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep.last().is_some_and(|&j| base + j >= self.len)
        {
            return Err(Error::InvalidArgument(format!(
                "kv compaction: keep {keep:?} from base {base} with {} entries",
                self.len
            )));
        }
        if keep.iter().enumerate().any(|(j, &k)| j != k) {
            let kv_dim = self.cfg.kv_dim();
            let bytes = keep.len() * kv_dim * 4;
            if self.kv_tmp.size() < bytes as u64 {
                self.kv_tmp = self.gpu.buffer(bytes, "kv_tmp");
            }
            let keep32: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
            let kb = self.gpu.upload(&keep32, "keep");
            let mut rec = Recorder::default();
            for l in &self.layers {
                for cache in [&l.k_cache, &l.v_cache] {
                    self.gpu.kv_compact(
                        &mut rec,
                        cache,
                        kv_dim,
                        base,
                        &kb,
                        keep.len(),
                        &self.kv_tmp,
                    )?;
                }
            }
            self.gpu.submit(rec)?;
        }
        self.len = base + keep.len();
        Ok(())
    }

    fn kv_truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests;
