//! The weight plan: which weights stay resident under a GPU memory budget and which stream
//! through the ring, computed from the model alone (no device needed), and the streamed units
//! the weights are cut into.

use super::budget;
use super::matrix::{chunk_layouts, row_range_layouts};
use super::shaders::WFormat;
use super::uploader::{Unit, Uploader};
use super::weights::gather_bytes;
use super::{GpuBackend, GpuOptions};
use crate::error::{Error, Result};
use crate::model::{Matrix, ModelWeights};

/// What is resident and what streams.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightPlan {
    /// Per layer: its matrices stay on the GPU.
    pub resident_layers: Vec<bool>,
    pub head_resident: bool,
    /// The embedding table is on the GPU (its own copy, or the tied head's).
    pub embed_resident: bool,
    /// Slots in the streaming ring (0: nothing streams).
    pub ring_depth: usize,
    /// Bytes of one ring slot (the largest streamed unit).
    pub slot_bytes: u64,
    /// Weight bytes the plan allocates on the GPU.
    pub gpu_bytes: u64,
    /// Weight bytes read from the file for every pass (the gathered embedding rows aside).
    pub streamed_bytes_per_pass: u64,
    /// The smallest budget that runs this model (streaming everything through one slot).
    pub min_budget: u64,
    /// The budget that keeps every weight resident.
    pub full_budget: u64,
}

/// Bytes of a small f32 vector on the GPU.
fn small_bytes(len: usize) -> u64 {
    (len * 4).max(16).next_multiple_of(4) as u64
}

impl GpuBackend {
    /// Plans which weights stay resident under `opts.weight_budget` without opening a device
    /// (`weight_binding` and `align` as the device reports them).
    pub fn plan_weights(
        w: &ModelWeights,
        opts: &GpuOptions,
        weight_binding: u64,
        align: u64,
    ) -> Result<WeightPlan> {
        let packed = |m: &Matrix| -> Result<u64> {
            Ok(chunk_layouts(m, weight_binding)?
                .iter()
                .map(|l| (l.bytes as u64).max(16))
                .sum())
        };
        let (layer_units, head_parts, slot) = stream_units(w, weight_binding, align, false)?;
        let mut layer_bytes = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            let mut b = 0;
            for m in l.matrices() {
                b += packed(m)?;
            }
            layer_bytes.push(b);
        }
        let tied = w.tied_head && w.head.dtype == w.embed.dtype;
        let head_bytes = packed(&w.head)?;
        let embed_bytes = packed(&w.embed)?;
        let mut small = small_bytes(w.norm.len());
        for l in &w.layers {
            small += small_bytes(l.attn_norm.len()) + small_bytes(l.ffn_norm.len());
            if let Some(b) = &l.bias {
                small += small_bytes(b.q.len()) + small_bytes(b.k.len()) + small_bytes(b.v.len());
            }
            if let Some(n) = &l.qk_norm {
                small += small_bytes(n.q.len()) + small_bytes(n.k.len());
            }
            if let Some(n) = &l.post_norm {
                small += small_bytes(n.attn.len()) + small_bytes(n.ffn.len());
            }
        }
        let all_layers: u64 = layer_bytes.iter().sum();
        let everything = small + all_layers + head_bytes + if tied { 0 } else { embed_bytes };
        let n = w.layers.len();
        let gather = gather_bytes(&w.embed);
        let mandatory = small + gather;
        let min = (mandatory + Uploader::ring_bytes(slot, 1)).min(everything);
        let resident_all = WeightPlan {
            resident_layers: vec![true; n],
            head_resident: true,
            embed_resident: true,
            ring_depth: 0,
            slot_bytes: 0,
            gpu_bytes: everything,
            streamed_bytes_per_pass: 0,
            min_budget: min,
            full_budget: everything,
        };
        let Some(budget) = opts.weight_budget else {
            return Ok(resident_all);
        };
        if budget >= everything {
            return Ok(resident_all);
        }
        let _ = head_parts;
        if budget < min {
            return Err(Error::Config(format!(
                "a GPU weight budget of {} ({budget} bytes) is below the minimum for streaming \
                 this model: {} ({min} bytes) = one streamed layer ({} in a GPU slot and its \
                 staging copy) + {} of norms and embedding gather buffer",
                budget::mib(budget),
                budget::mib(min),
                budget::mib(slot),
                budget::mib(mandatory),
            )));
        }
        let depth = match opts.ring_depth {
            Some(d) => d.max(1),
            None if budget >= mandatory + Uploader::ring_bytes(slot, 2) => 2,
            None => 1,
        };
        let ring = Uploader::ring_bytes(slot, depth);
        if budget < mandatory + ring {
            return Err(Error::Config(format!(
                "a GPU weight budget of {} ({budget} bytes) cannot hold a streaming ring of \
                 {depth} slots: at least {} needed",
                budget::mib(budget),
                budget::mib(mandatory + ring)
            )));
        }
        let mut avail = budget - mandatory - ring;
        let mut plan = WeightPlan {
            resident_layers: vec![false; n],
            head_resident: false,
            embed_resident: false,
            ring_depth: depth,
            slot_bytes: slot,
            gpu_bytes: 0,
            streamed_bytes_per_pass: 0,
            min_budget: min,
            full_budget: everything,
        };
        if head_bytes <= avail {
            plan.head_resident = true;
            avail -= head_bytes;
            if tied {
                plan.embed_resident = true;
                avail += gather;
            }
        }
        for (i, &b) in layer_bytes.iter().enumerate() {
            if b <= avail {
                plan.resident_layers[i] = true;
                avail -= b;
            } else {
                break;
            }
        }
        if !plan.embed_resident && embed_bytes <= avail + gather {
            plan.embed_resident = true;
            avail = avail + gather - embed_bytes;
        }
        plan.gpu_bytes = budget - avail;
        plan.streamed_bytes_per_pass = layer_units
            .iter()
            .zip(&plan.resident_layers)
            .filter(|(_, &r)| !r)
            .map(|(u, _)| u.file_bytes)
            .sum::<u64>()
            + if plan.head_resident {
                0
            } else {
                w.head.byte_len() as u64
            };
        if plan.streamed_bytes_per_pass == 0 {
            // everything fit after all (rounding): no ring
            return Ok(WeightPlan {
                gpu_bytes: everything,
                ..resident_all
            });
        }
        Ok(plan)
    }
}

/// Streaming units of every layer and of the LM head (row ranges of about one layer's size),
/// and the slot size that holds any of them.
pub(super) fn stream_units(
    w: &ModelWeights,
    binding: u64,
    align: u64,
    f16: bool,
) -> Result<(Vec<Unit>, Vec<Unit>, u64)> {
    let unit = |mats: Vec<(&Matrix, usize, usize)>| -> Result<Unit> {
        let mut v = Vec::with_capacity(mats.len());
        for (m, r0, r1) in mats {
            v.push((
                m.clone(),
                WFormat::for_dtype(m.dtype, f16),
                row_range_layouts(m, r0, r1, binding)?,
            ));
        }
        Ok(Unit::new(v, align))
    };
    let layers: Vec<Unit> = w
        .layers
        .iter()
        .map(|l| unit(l.matrices().iter().map(|&m| (m, 0, m.rows)).collect()))
        .collect::<Result<_>>()?;
    let target = layers.iter().map(|u| u.bytes).max().unwrap_or(0);
    let head = &w.head;
    let row_packed = row_range_layouts(head, 0, 1, binding)?[0].bytes as u64;
    let per = ((target / row_packed.max(1)) as usize).clamp(1, head.rows);
    let mut parts = Vec::new();
    let mut r0 = 0;
    while r0 < head.rows {
        let r1 = (r0 + per).min(head.rows);
        parts.push(unit(vec![(head, r0, r1)])?);
        r0 = r1;
    }
    let slot = parts.iter().map(|u| u.bytes).max().unwrap_or(0).max(target);
    Ok((layers, parts, slot))
}
