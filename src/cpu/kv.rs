//! The CPU KV cache: per layer, K and V rows of `kv_dim` f32 values, one row per slot, and
//! each slot's position (a drafter's tree slots are not in position order, and sliding-window
//! attention goes by position).

use crate::error::{Error, Result};

pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    len: usize,
    /// `[layer]` → slots × kv_dim
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// `[slot]` → the position of its token
    positions: Vec<usize>,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> Self {
        KvCache {
            kv_dim,
            capacity,
            len: 0,
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            positions: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `n` more slots (memory grows with use, up to the capacity).
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        let need = self.len + n;
        if need > self.capacity {
            return Err(Error::ContextOverflow {
                needed: need,
                limit: self.capacity,
                hint: String::new(),
            });
        }
        let floats = need.saturating_mul(self.kv_dim);
        let total_mb = floats.saturating_mul(8 * self.k.len()) >> 20;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            if buf.len() < floats {
                // fallible, so that a context the device cannot hold is an error, not an abort
                buf.try_reserve(floats - buf.len()).map_err(|_| {
                    Error::OutOfMemory(format!(
                        "the KV cache cannot grow to {need} tokens ({total_mb} MB); ask for a smaller \
                         context"
                    ))
                })?;
                buf.resize(floats, 0.0);
            }
        }
        if self.positions.len() < need {
            self.positions.resize(need, 0);
        }
        Ok(())
    }

    /// Writes one slot's K and V for a layer, for a token at `position` (the slot must be
    /// reserved).
    pub fn write(&mut self, layer: usize, slot: usize, position: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        self.k[layer][slot * d..(slot + 1) * d].copy_from_slice(k);
        self.v[layer][slot * d..(slot + 1) * d].copy_from_slice(v);
        self.positions[slot] = position;
    }

    /// A layer's K and V rows, and every slot's position.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32], &[usize]) {
        (&self.k[layer], &self.v[layer], &self.positions)
    }

    /// Marks `n` reserved slots as filled.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// See `Backend::kv_compact`.
    pub fn compact(&mut self, base: usize, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1])
            || keep.last().is_some_and(|&j| base + j >= self.len)
        {
            return Err(Error::InvalidArgument(format!(
                "kv compaction: keep {keep:?} from base {base} with {} entries",
                self.len
            )));
        }
        let d = self.kv_dim;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            for (j, &src) in keep.iter().enumerate() {
                if src != j {
                    buf.copy_within((base + src) * d..(base + src + 1) * d, (base + j) * d);
                }
            }
        }
        for (j, &src) in keep.iter().enumerate() {
            self.positions[base + j] = self.positions[base + src];
        }
        self.len = base + keep.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_too_big_for_memory_is_an_error() {
        let mut small = KvCache::new(2, 4, 8);
        small.reserve(8).unwrap();
        assert_eq!(small.layer(1).0.len(), 32);
        assert!(matches!(
            small.reserve(9),
            Err(Error::ContextOverflow { .. })
        ));
        // 2^61 floats per row: more bytes than an allocation may have
        let mut huge = KvCache::new(2, 1 << 61, 8);
        let e = huge.reserve(1).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
    }
}
