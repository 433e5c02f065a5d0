//! Load progress, reported to whoever loads a model: the CLI draws a bar on its terminal, an
//! app updates its own UI. The library itself never draws.

use crate::quant::DType;
use std::sync::Arc;

/// Where a model load stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadStatus {
    pub tensors_done: usize,
    pub tensors: usize,
    /// The block type matrices are being quantized to on the way (`LoadOptions::quantize`).
    pub quantizing_to: Option<DType>,
}

/// A callback that receives the [`LoadStatus`] as each tensor is loaded (from the loading
/// thread; with a drafter, its load follows the target's).
#[derive(Clone)]
pub struct LoadProgress(Arc<dyn Fn(LoadStatus) + Send + Sync>);

impl LoadProgress {
    pub fn new(report: impl Fn(LoadStatus) + Send + Sync + 'static) -> Self {
        LoadProgress(Arc::new(report))
    }

    pub(crate) fn report(&self, status: LoadStatus) {
        (self.0)(status)
    }
}

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress(..)")
    }
}
