//! The activation buffers of a pass, sized for the largest batch so far.

use super::GpuBackend;
use crate::error::{Error, Result};

/// Activations for up to `cap` tokens.
pub(super) struct Scratch {
    pub(super) cap: usize,
    pub(super) x: wgpu::Buffer,
    pub(super) xn: wgpu::Buffer,
    pub(super) q: wgpu::Buffer,
    pub(super) k: wgpu::Buffer,
    pub(super) v: wgpu::Buffer,
    pub(super) att: wgpu::Buffer,
    pub(super) gate: wgpu::Buffer,
    pub(super) up: wgpu::Buffer,
    /// A copy of an activation normalized in place.
    pub(super) tmp: wgpu::Buffer,
    pub(super) logits: wgpu::Buffer,
    pub(super) ids: wgpu::Buffer,
    pub(super) vals: wgpu::Buffer,
}

impl GpuBackend {
    pub(super) fn ensure_scratch(&mut self, n: usize) -> Result<()> {
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
            // only per-head q/k norms and Gemma's post norms run in place; other models keep a
            // one-float placeholder
            tmp: {
                let qk = if c.arch.qk_norm() {
                    c.q_dim().max(c.kv_dim())
                } else {
                    0
                };
                let post = if c.arch.gemma() { c.hidden } else { 0 };
                let width = qk.max(post);
                if width > 0 {
                    f(cap_rows(width) * width, "tmp")?
                } else {
                    f(1, "tmp")?
                }
            },
            logits: f(cap_rows(c.vocab) * c.vocab, "logits")?,
            ids: f(cap * 128, "ids")?,
            vals: f(cap * 64, "vals")?,
        });
        Ok(())
    }
}
