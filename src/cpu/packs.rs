//! The model's matrices packed at load for the kernels in use, where they read a packed layout
//! (`PackedWeights`: the AVX-512 kernels' rows in lanes). Packing costs one pass over the
//! weights at load; every pass then reads the copy, and the file's pages of a packed matrix go
//! back to the OS (read again only for embedding rows).

use super::matmul::{Precision, Weight};
use super::pool::ThreadPool;
use crate::model::recipe::Mat;
use crate::model::{Matrix, ModelWeights};
use crate::quant::{PackedWeights, Simd};
use std::sync::Mutex;
use std::time::Instant;

/// The packed copies of one model's matrices (none where the kernels read the file's layout).
#[derive(Default)]
pub struct Packs {
    layers: Vec<[Option<PackedWeights>; 7]>,
    head: Option<PackedWeights>,
}

impl Packs {
    /// Packs every matrix of `weights` the active kernels read packed, over the pool's threads.
    /// The f32 path reads the file's layout only.
    pub fn new(weights: &ModelWeights, precision: Precision, pool: &ThreadPool) -> Packs {
        if precision == Precision::F32 {
            return Packs::default();
        }
        let start = Instant::now();
        let mut all: Vec<&Matrix> = weights.layers.iter().flat_map(|l| l.matrices()).collect();
        all.push(&weights.head);
        let done: Vec<Mutex<Option<PackedWeights>>> =
            all.iter().map(|_| Mutex::new(None)).collect();
        pool.for_each_item(all.len(), |_: &mut (), i| {
            let packed = pack(all[i]);
            if packed.is_some() {
                // the passes read the copy: the file's pages need not stay in this process
                all[i].data.release_pages();
            }
            *done[i].lock().expect("no panics while packing") = packed;
        });
        let mut done = done
            .into_iter()
            .map(|m| m.into_inner().expect("no panics while packing"));
        let layers = weights
            .layers
            .iter()
            .map(|_| std::array::from_fn(|_| done.next().expect("7 per layer")))
            .collect();
        let packs = Packs {
            layers,
            head: done.next().expect("the head"),
        };
        let bytes: usize = packs.all().map(PackedWeights::bytes).sum();
        if bytes > 0 {
            log::info!(
                "packed {:.0} MB of weights for the {} kernels in {:.0} ms",
                bytes as f64 / 1e6,
                Simd::active().name(),
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        packs
    }

    fn all(&self) -> impl Iterator<Item = &PackedWeights> {
        self.layers.iter().flatten().chain([&self.head]).flatten()
    }

    /// Matrix `m` of layer `layer`, with its packed copy.
    pub fn layer<'a>(&'a self, weights: &'a ModelWeights, layer: usize, m: Mat) -> Weight<'a> {
        Weight {
            matrix: weights.layers[layer].mat(m),
            packed: self.layers.get(layer).and_then(|l| l[m as usize].as_ref()),
        }
    }

    /// Frees the output head's packed copy.
    pub fn drop_head(&mut self) {
        self.head = None;
    }

    /// The output head, with its packed copy.
    pub fn head<'a>(&'a self, weights: &'a ModelWeights) -> Weight<'a> {
        Weight {
            matrix: &weights.head,
            packed: self.head.as_ref(),
        }
    }
}

/// `m` packed for the active kernels, where they read it packed.
pub fn pack(m: &Matrix) -> Option<PackedWeights> {
    PackedWeights::new(Simd::active(), m.dtype, &m.data, m.rows, m.cols)
}
