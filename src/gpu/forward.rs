//! One GPU forward pass: the recipe's ops recorded as compute passes. With every weight
//! resident the whole pass is one command buffer; when layers stream, each layer's work is
//! submitted at `end_layer` so that the next streamed unit uploads while it computes.

use super::buffers::Gpu;
use super::matrix::{pack_rows, row_range_layouts, GpuMatrix};
use super::ops::{AttentionArgs, MatmulArgs};
use super::recorder::{Recorder, Timing};
use super::scratch::Scratch;
use super::shaders::WFormat;
use super::uploader::StreamStats;
use super::weights::{Gather, GpuLayer, LayerMats, Stream, Streamed, GATHER_ROWS};
use crate::backend::{Batch, Rows};
use crate::error::Result;
use crate::model::recipe::{Act, Activation, LayerOps, Mat, Norm, Write};
use crate::model::{Matrix, ModelConfig, RopeLayout, RopeTable};
use std::time::Instant;

/// Per-pass inputs, uploaded before the backend's fields are lent to the pass.
pub(super) struct PassInputs {
    tokens: wgpu::Buffer,
    /// cos and sin at the batch's positions, per RoPE of the model (`ModelConfig::ropes`).
    ropes: Vec<[wgpu::Buffer; 2]>,
    /// Node i sees batch nodes `vis[vis_off[i]..vis_off[i + 1]]`.
    vis_off: wgpu::Buffer,
    vis: wgpu::Buffer,
    /// The position of every slot's token up to the batch's last.
    positions: wgpu::Buffer,
    rope_half: usize,
}

/// The backend's state a pass records into, borrowed for the pass.
pub(super) struct GpuPass<'a> {
    pub g: &'a Gpu,
    pub cfg: &'a ModelConfig,
    pub batch: &'a Batch,
    pub s: &'a Scratch,
    pub layers: &'a [GpuLayer],
    /// Resident embedding table, else rows are gathered from the file.
    pub embed: Option<&'a GpuMatrix>,
    pub gather: &'a mut Option<Gather>,
    pub norm: &'a wgpu::Buffer,
    pub stream: &'a mut Option<Stream>,
    pub stats: &'a mut StreamStats,
    pub timing: &'a mut Option<Timing>,
    pub rec: Recorder,
    /// Cached slots before the batch.
    pub base: usize,
    /// The rows the pass returns.
    pub rows: Rows,
    inputs: PassInputs,
    /// The streamed layer being recorded: its matrices in a ring slot, and its unit.
    slot: Option<(LayerMats, usize)>,
    /// Streaming progress: the next unit to load, the next unit to record, units submitted.
    next_load: usize,
    next_unit: usize,
    submitted: usize,
}

impl PassInputs {
    /// `inv_freqs` per RoPE of the model; `positions`: every slot's up to the batch's last.
    pub fn upload(
        g: &Gpu,
        cfg: &ModelConfig,
        batch: &Batch,
        inv_freqs: &[Vec<f32>],
        positions: &[u32],
    ) -> Self {
        let tables: Vec<RopeTable> = cfg
            .ropes()
            .into_iter()
            .zip(inv_freqs)
            .map(|(rope, f)| RopeTable::new(rope, f, &batch.positions))
            .collect();
        let mut vis_off = Vec::with_capacity(batch.len() + 1);
        let mut vis = Vec::new();
        for i in 0..batch.len() {
            vis_off.push(vis.len() as u32);
            vis.extend(batch.visible(i).into_iter().map(|j| j as u32));
        }
        vis_off.push(vis.len() as u32);
        PassInputs {
            tokens: g.upload(&batch.tokens, "tokens"),
            ropes: tables
                .iter()
                .map(|t| [g.upload(&t.cos, "cos"), g.upload(&t.sin, "sin")])
                .collect(),
            vis_off: g.upload(&vis_off, "vis_off"),
            vis: g.upload(&vis, "vis"),
            positions: g.upload(positions, "positions"),
            rope_half: tables[0].half,
        }
    }
}

impl<'a> GpuPass<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        g: &'a Gpu,
        cfg: &'a ModelConfig,
        batch: &'a Batch,
        s: &'a Scratch,
        layers: &'a [GpuLayer],
        embed: Option<&'a GpuMatrix>,
        gather: &'a mut Option<Gather>,
        norm: &'a wgpu::Buffer,
        stream: &'a mut Option<Stream>,
        stats: &'a mut StreamStats,
        timing: &'a mut Option<Timing>,
        base: usize,
        rows: Rows,
        inputs: PassInputs,
    ) -> Self {
        GpuPass {
            g,
            cfg,
            batch,
            s,
            layers,
            embed,
            gather,
            norm,
            stream,
            stats,
            timing,
            rec: Recorder::default(),
            base,
            rows,
            inputs,
            slot: None,
            next_load: 0,
            next_unit: 0,
            submitted: 0,
        }
    }

    fn n(&self) -> usize {
        self.batch.len()
    }

    fn depth(&self) -> usize {
        self.stream.as_ref().map_or(1, |st| st.uploader.depth())
    }

    fn buf(&self, a: Act) -> &'a wgpu::Buffer {
        let s = self.s;
        match a {
            Act::X => &s.x,
            Act::Xn => &s.xn,
            Act::Q => &s.q,
            Act::K => &s.k,
            Act::V => &s.v,
            Act::Att => &s.att,
            Act::Gate => &s.gate,
            Act::Up => &s.up,
        }
    }

    /// Uploads streamed units until `upto` are loaded (each waits for its ring slot).
    fn load_upto(&mut self, upto: usize) -> Result<()> {
        let Some(st) = self.stream.as_mut() else {
            return Ok(());
        };
        let depth = st.uploader.depth();
        while self.next_load < st.units.len() && self.next_load < upto {
            let unit = &st.units[self.next_load].1;
            let (io, stall) = st.uploader.load(self.g, self.next_load % depth, unit)?;
            self.stats.io_time += io;
            self.stats.stall_time += stall;
            self.stats.bytes_streamed += unit.file_bytes;
            self.next_load += 1;
        }
        Ok(())
    }

    /// When streaming, submits what was recorded; `unit`'s ring slot is free once it ran.
    fn flush(&mut self, unit: Option<usize>) -> Result<()> {
        if self.stream.is_none() || self.rec.is_empty() {
            return Ok(());
        }
        let rec = std::mem::take(&mut self.rec);
        let index = self.g.submit_timed(rec, self.timing.as_mut())?;
        if let (Some(u), Some(st)) = (unit, self.stream.as_mut()) {
            let depth = st.uploader.depth();
            st.uploader.used(u % depth, index);
        }
        Ok(())
    }

    /// Records the LM head over the normalized rows into the logits buffer: the resident head,
    /// or each streamed part of it in turn. Returns the recorder for the readback.
    pub fn head(mut self, resident: Option<&GpuMatrix>, head: &Matrix) -> Result<Recorder> {
        let (h, vocab) = (self.cfg.hidden, self.cfg.vocab);
        let head_args = MatmulArgs {
            x: &self.s.xn,
            x_off: 0,
            x_stride: h,
            n: self.rows_out(),
            y: &self.s.logits,
            y_off: 0,
            y_stride: vocab,
            accumulate: false,
            bias: None,
        };
        if let Some(m) = resident {
            self.g.matmul(&mut self.rec, m, &head_args)?;
            return self.cap_logits();
        }
        let depth = self.depth();
        let n_units = self.stream.as_ref().map_or(0, |st| st.units.len());
        while self.next_unit < n_units {
            let u = self.next_unit;
            self.load_upto(u + 1)?;
            let st = self.stream.as_ref().expect("streamed head");
            debug_assert!(matches!(st.units[u].0, Streamed::Head));
            let m = &st.units[u].1.mats[0];
            let part = GpuMatrix::view(
                m.format,
                head.rows,
                head.cols,
                st.uploader.dst(u % depth),
                &m.parts,
            );
            self.g.matmul(&mut self.rec, &part, &head_args)?;
            self.flush(Some(u))?;
            self.submitted += 1;
            self.next_unit += 1;
            self.load_upto(self.submitted + depth)?;
        }
        debug_assert!(self.next_load == n_units);
        self.cap_logits()
    }

    /// Soft-caps the logits where the model says so; returns the recorder for the readback.
    fn cap_logits(mut self) -> Result<Recorder> {
        if let Some(cap) = self.cfg.final_softcap {
            let len = self.rows_out() * self.cfg.vocab;
            self.g.softcap(&mut self.rec, &self.s.logits, cap, len)?;
        }
        Ok(self.rec)
    }

    fn rows_out(&self) -> usize {
        match self.rows {
            Rows::Last => 1,
            Rows::All => self.n(),
        }
    }
}

impl LayerOps for GpuPass<'_> {
    fn embed(&mut self) -> Result<()> {
        let n = self.n();
        match self.embed {
            Some(e) => self
                .g
                .embed(&mut self.rec, e, &self.inputs.tokens, n, &self.s.x)?,
            None => {
                let gather = self
                    .gather
                    .as_mut()
                    .expect("gather without a resident table");
                let t0 = Instant::now();
                let bytes = gather_rows(
                    self.g,
                    gather,
                    &self.batch.tokens,
                    &self.s.x,
                    self.timing.as_mut(),
                )?;
                self.stats.io_time += t0.elapsed();
                self.stats.bytes_streamed += bytes;
            }
        }
        // streaming starts: fill the ring
        self.flush(None)?;
        self.load_upto(self.depth())
    }

    fn begin_layer(&mut self, layer: usize) -> Result<()> {
        if self.layers[layer].mats.is_some() {
            return Ok(());
        }
        let u = self.next_unit;
        let st = self.stream.as_ref().expect("a streamed layer needs a ring");
        debug_assert!(matches!(st.units[u].0, Streamed::Layer(i) if i == layer));
        let mats = LayerMats::from_slot(&st.units[u].1, st.uploader.dst(u % self.depth()));
        self.slot = Some((mats, u));
        self.next_unit += 1;
        self.load_upto(u + 1)
    }

    fn end_layer(&mut self, _layer: usize) -> Result<()> {
        let unit = self.slot.take().map(|(_, u)| u);
        self.flush(unit)?;
        if unit.is_some() {
            self.submitted += 1;
        }
        self.load_upto(self.submitted + self.depth())
    }

    fn rms_norm(&mut self, w: Norm, x: Act, out: Act) -> Result<()> {
        let c = self.cfg;
        let (n, h) = (self.n(), c.hidden);
        let qk_norm = |l: usize, i: usize| &self.layers[l].qk_norm.as_ref().expect("qk norm")[i];
        let post_norm = |l: usize, i: usize| &self.layers[l].post_norm.as_ref().expect("post")[i];
        // (weight, its length, first row, rows)
        let (weight, len, first, rows) = match w {
            Norm::Attn(l) => (&self.layers[l].attn_norm, h, 0, n),
            Norm::Ffn(l) => (&self.layers[l].ffn_norm, h, 0, n),
            Norm::QHeads(l) => (qk_norm(l, 0), c.head_dim, 0, n * c.n_heads),
            Norm::KHeads(l) => (qk_norm(l, 1), c.head_dim, 0, n * c.n_kv_heads),
            Norm::Output => (self.norm, h, n - self.rows_out(), self.rows_out()),
            Norm::PostAttn(l) => (post_norm(l, 0), h, 0, n),
            Norm::PostFfn(l) => (post_norm(l, 1), h, 0, n),
        };
        let (mut src, dst) = (self.buf(x), self.buf(out));
        if x == out {
            // a kernel may not read and write one buffer
            self.rec
                .copy(src, 0, &self.s.tmp, 0, (rows * len * 4) as u64);
            src = &self.s.tmp;
        }
        let first = first * len;
        self.g.rms_norm(
            &mut self.rec,
            src,
            first,
            weight,
            c.rms_eps,
            dst,
            0,
            rows,
            len,
        )
    }

    fn linear(&mut self, layer: usize, x: Act, outs: &[(Mat, Act)], write: Write) -> Result<()> {
        let l = &self.layers[layer];
        let mats = match (&l.mats, &self.slot) {
            (Some(m), _) | (None, Some((m, _))) => m,
            (None, None) => unreachable!("begin_layer puts a streamed layer in its slot"),
        };
        for &(m, out) in outs {
            let matrix = mats.get(m);
            let bias = l.bias.as_ref().and_then(|b| match m {
                Mat::Q => Some(&b[0]),
                Mat::K => Some(&b[1]),
                Mat::V => Some(&b[2]),
                _ => None,
            });
            let args = MatmulArgs {
                x: self.buf(x),
                x_off: 0,
                x_stride: matrix.cols,
                n: self.batch.len(),
                y: self.buf(out),
                y_off: 0,
                y_stride: matrix.rows,
                accumulate: write == Write::Add,
                bias,
            };
            self.g.matmul(&mut self.rec, matrix, &args)?;
        }
        Ok(())
    }

    fn rope(&mut self, layer: usize, x: Act, heads: usize) -> Result<()> {
        let c = self.cfg;
        let i = &self.inputs;
        let [cos, sin] = &i.ropes[c.rope_index(layer)];
        let half_split = c.rope.layout == RopeLayout::HalfSplit;
        let buf = self.buf(x);
        self.g.rope(
            &mut self.rec,
            buf,
            self.batch.len(),
            heads,
            c.head_dim,
            i.rope_half,
            half_split,
            cos,
            sin,
        )
    }

    fn kv_write(&mut self, layer: usize) -> Result<()> {
        let kv_dim = self.cfg.kv_dim();
        let off = (self.base * kv_dim * 4) as u64;
        let bytes = (self.n() * kv_dim * 4) as u64;
        let l = &self.layers[layer];
        self.rec.copy(&self.s.k, 0, &l.k_cache, off, bytes);
        self.rec.copy(&self.s.v, 0, &l.v_cache, off, bytes);
        Ok(())
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let c = self.cfg;
        let l = &self.layers[layer];
        let args = AttentionArgs {
            q: &self.s.q,
            k_cache: &l.k_cache,
            v_cache: &l.v_cache,
            vis_off: &self.inputs.vis_off,
            vis: &self.inputs.vis,
            out: &self.s.att,
            positions: &self.inputs.positions,
            n: self.n(),
            base: self.base,
            layer: c.attention(layer),
        };
        self.g.attention(&mut self.rec, &args)
    }

    fn glu(&mut self, act: Activation) -> Result<()> {
        let len = self.n() * self.cfg.ffn;
        self.g
            .glu(&mut self.rec, act, &self.s.gate, &self.s.up, len)
    }

    fn add(&mut self, x: Act, y: Act) -> Result<()> {
        let len = self.n() * x.width(self.cfg);
        let (x, y) = (self.buf(x), self.buf(y));
        self.g.add(&mut self.rec, x, y, len)
    }

    fn scale(&mut self, x: Act, factor: f32) -> Result<()> {
        let len = self.n() * x.width(self.cfg);
        let x = self.buf(x);
        self.g.scale(&mut self.rec, x, factor, len)
    }
}

/// Embeds `tokens` into `x` from rows gathered out of the model file, `GATHER_ROWS` per
/// submit. Returns the bytes read.
fn gather_rows(
    g: &Gpu,
    ga: &mut Gather,
    tokens: &[u32],
    x: &wgpu::Buffer,
    mut timing: Option<&mut Timing>,
) -> Result<u64> {
    let m = &ga.table;
    let format = WFormat::for_dtype(m.dtype, g.ctx.f16);
    let mut bytes = 0;
    for (ci, chunk) in tokens.chunks(GATHER_ROWS).enumerate() {
        let mut data = Vec::with_capacity(chunk.len() * m.row_bytes());
        for &t in chunk {
            data.extend_from_slice(m.row(t as usize));
        }
        bytes += data.len() as u64;
        let sub = Matrix {
            name: m.name.clone(),
            dtype: m.dtype,
            rows: chunk.len(),
            cols: m.cols,
            data: data.into(),
        };
        let layouts = row_range_layouts(&sub, 0, sub.rows, u64::MAX >> 1)?;
        let total: usize = layouts.iter().map(|l| l.bytes).sum();
        ga.scratch.clear();
        ga.scratch.resize(total, 0);
        let mut parts = Vec::with_capacity(layouts.len());
        let mut off = 0;
        for l in layouts {
            pack_rows(&sub, &l, &mut ga.scratch[off..off + l.bytes]);
            parts.push((l, off as u64));
            off += l.bytes;
        }
        debug_assert!(parts.len() == 1);
        g.ctx.queue.write_buffer(&ga.buf, 0, &ga.scratch);
        let ids: Vec<u32> = (0..chunk.len() as u32).collect();
        let ids = g.upload(&ids, "gather ids");
        let table = GpuMatrix::view(format, sub.rows, sub.cols, &ga.buf, &parts);
        let mut rec = Recorder::default();
        g.embed_at(&mut rec, &table, &ids, chunk.len(), x, ci * GATHER_ROWS)?;
        g.submit_timed(rec, timing.as_deref_mut())?;
    }
    Ok(bytes)
}
