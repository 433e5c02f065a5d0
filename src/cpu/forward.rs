//! One CPU forward pass: the recipe's ops over host buffers, multi-threaded where the work is
//! (linear layers, attention).

use super::attention::{self, Keys, Prefix, Visibility};
use super::kv::KvCache;
use super::matmul::{linear_many, Input, Precision, Weight};
use super::ops::{glu, rms_norm};
use super::packs::Packs;
use super::pool::ThreadPool;
use crate::backend::{Batch, BatchMask, CacheView, Rows};
use crate::error::Result;
use crate::model::recipe::{Act, Activation, LayerOps, Mat, Norm, Write};
use crate::model::{ModelConfig, ModelWeights, RopeTable};
use crate::quant::Q8Acts;

/// A pass over one batch, its cache slots reserved; `kv.advance` is the caller's.
pub(super) struct CpuPass<'a> {
    pub cfg: &'a ModelConfig,
    pub weights: &'a ModelWeights,
    pub packs: &'a Packs,
    pub pool: &'a ThreadPool,
    pub precision: Precision,
    pub kv: &'a mut KvCache,
    pub q8: &'a mut Q8Acts,
    pub batch: &'a Batch,
    pub rows: Rows,
    /// Cached slots before the batch.
    base: usize,
    /// One table per RoPE of the model (`ModelConfig::ropes`).
    ropes: Vec<RopeTable>,
    /// Each node's visible batch nodes, unless the mask is causal.
    visible: Option<Vec<Vec<usize>>>,
    acts: [Vec<f32>; Act::ALL.len()],
    /// Results waiting to be added to an activation (`Write::Add`).
    spare: Vec<Vec<f32>>,
}

impl<'a> CpuPass<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a ModelConfig,
        weights: &'a ModelWeights,
        packs: &'a Packs,
        pool: &'a ThreadPool,
        precision: Precision,
        kv: &'a mut KvCache,
        q8: &'a mut Q8Acts,
        batch: &'a Batch,
        rows: Rows,
        inv_freqs: &[Vec<f32>],
    ) -> Self {
        let n = batch.len();
        let visible = match batch.mask {
            BatchMask::Causal => None,
            _ => Some((0..n).map(|i| batch.visible(i)).collect()),
        };
        let acts = std::array::from_fn(|i| vec![0f32; n * Act::ALL[i].width(cfg)]);
        CpuPass {
            base: kv.len(),
            ropes: cfg
                .ropes()
                .into_iter()
                .zip(inv_freqs)
                .map(|(rope, f)| RopeTable::new(rope, f, &batch.positions))
                .collect(),
            visible,
            acts,
            spare: Vec::new(),
            cfg,
            weights,
            packs,
            pool,
            precision,
            kv,
            q8,
            batch,
            rows,
        }
    }

    /// The pass's result: the normalized final hidden states of the rows asked for.
    pub fn into_hidden(mut self) -> Vec<f32> {
        std::mem::take(&mut self.acts[Act::Xn as usize])
    }

    fn n(&self) -> usize {
        self.batch.len()
    }
}

impl LayerOps for CpuPass<'_> {
    fn embed(&mut self) -> Result<()> {
        let h = self.cfg.hidden;
        let x = &mut self.acts[Act::X as usize];
        for (row, &t) in x.chunks_exact_mut(h).zip(&self.batch.tokens) {
            self.weights.embed.dequantize_row(t as usize, row);
        }
        Ok(())
    }

    fn begin_layer(&mut self, _layer: usize) -> Result<()> {
        Ok(())
    }

    fn end_layer(&mut self, _layer: usize) -> Result<()> {
        Ok(())
    }

    fn rms_norm(&mut self, w: Norm, x: Act, out: Act) -> Result<()> {
        let weight = self.weights.norm_weights(w);
        let mut dst = std::mem::take(&mut self.acts[out as usize]);
        let mut copy = Vec::new();
        let src = if x == out {
            copy = self.spare.pop().unwrap_or_default();
            copy.clone_from(&dst);
            &copy
        } else {
            &self.acts[x as usize]
        };
        // the output norm runs over the returned rows only
        let src = match (w, self.rows) {
            (Norm::Output, Rows::Last) => &src[src.len() - weight.len()..],
            _ => src,
        };
        dst.resize(src.len(), 0.0);
        rms_norm(src, weight, self.cfg.rms_eps, &mut dst);
        self.acts[out as usize] = dst;
        if x == out {
            self.spare.push(copy);
        }
        Ok(())
    }

    fn linear(&mut self, layer: usize, x: Act, outs: &[(Mat, Act)], write: Write) -> Result<()> {
        let l = &self.weights.layers[layer];
        let n = self.n();
        let mats: Vec<Weight> = outs
            .iter()
            .map(|&(m, _)| self.packs.layer(self.weights, layer, m))
            .collect();
        let mut results: Vec<Vec<f32>> = outs
            .iter()
            .zip(&mats)
            .map(|(&(_, out), m)| match write {
                Write::Set => std::mem::take(&mut self.acts[out as usize]),
                Write::Add => {
                    let mut t = self.spare.pop().unwrap_or_default();
                    t.resize(n * m.matrix.rows, 0.0);
                    t
                }
            })
            .collect();
        let input = &self.acts[x as usize];
        let mut input = Input::new(input, input.len() / n, self.q8);
        let mut dsts: Vec<&mut [f32]> = results.iter_mut().map(|r| r.as_mut_slice()).collect();
        linear_many(self.pool, self.precision, &mut input, &mats, &mut dsts);
        for (&(m, out), mut result) in outs.iter().zip(results) {
            if let Some(bias) = l.bias(m) {
                for row in result.chunks_exact_mut(bias.len()) {
                    add_into(row, bias);
                }
            }
            match write {
                Write::Set => self.acts[out as usize] = result,
                Write::Add => {
                    add_into(&mut self.acts[out as usize], &result);
                    self.spare.push(result);
                }
            }
        }
        Ok(())
    }

    fn rope(&mut self, layer: usize, x: Act, heads: usize) -> Result<()> {
        let c = self.cfg;
        let w = heads * c.head_dim;
        let table = &self.ropes[c.rope_index(layer)];
        for (i, row) in self.acts[x as usize].chunks_exact_mut(w).enumerate() {
            table.apply(c.rope.layout, i, row, c.head_dim);
        }
        Ok(())
    }

    fn kv_write(&mut self, layer: usize) -> Result<()> {
        let kv_dim = self.cfg.kv_dim();
        let (k, v) = (&self.acts[Act::K as usize], &self.acts[Act::V as usize]);
        for (i, (k, v)) in k
            .chunks_exact(kv_dim)
            .zip(v.chunks_exact(kv_dim))
            .enumerate()
        {
            let pos = self.batch.positions[i];
            self.kv.write(layer, self.base + i, pos, k, v);
        }
        Ok(())
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let c = self.cfg;
        let shape = c.attention(layer);
        let vis = match &self.visible {
            None => Visibility::Causal,
            Some(lists) => Visibility::Lists(lists),
        };
        let prefix = match &self.batch.cache {
            CacheView::All => Prefix::All,
            CacheView::Speculative { committed, visible } => Prefix::Partial {
                committed: *committed,
                extra: visible,
            },
        };
        let (k, v, positions) = self.kv.layer(layer);
        let keys = Keys { k, v, positions };
        let mut att = std::mem::take(&mut self.acts[Act::Att as usize]);
        let q = &self.acts[Act::Q as usize];
        let q_pos = &self.batch.positions;
        attention::attend(
            self.pool, &shape, q, q_pos, &keys, self.base, &prefix, &vis, &mut att,
        );
        self.acts[Act::Att as usize] = att;
        Ok(())
    }

    fn glu(&mut self, act: Activation) -> Result<()> {
        let mut gate = std::mem::take(&mut self.acts[Act::Gate as usize]);
        glu(act, &mut gate, &self.acts[Act::Up as usize]);
        self.acts[Act::Gate as usize] = gate;
        Ok(())
    }

    fn add(&mut self, x: Act, y: Act) -> Result<()> {
        let mut dst = std::mem::take(&mut self.acts[x as usize]);
        add_into(&mut dst, &self.acts[y as usize]);
        self.acts[x as usize] = dst;
        Ok(())
    }

    fn scale(&mut self, x: Act, factor: f32) -> Result<()> {
        self.acts[x as usize].iter_mut().for_each(|v| *v *= factor);
        Ok(())
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
