//! Rewrites a GGUF file with its larger matrices quantized to a smaller block type, as
//! `llama-quantize` does: the metadata and every other tensor are copied as they are. Used to
//! keep a drafter requantized at load (`--draft-quantize`) in the cache directory, so that
//! only the first process pays for the requantization.

use super::gguf::GgufFile;
use super::gguf_write::{GgufWriter, TensorOut};
use super::RawTensor;
use crate::error::{Error, Result};
use crate::model::{quantize_matrix, Matrix};
use crate::quant::DType;
use std::path::Path;

/// Metadata that describes the file's layout rather than the model: the writer sets its own.
const LAYOUT_KEYS: [&str; 2] = ["general.alignment", "general.file_type"];

/// Writes `src` to `dst` with every matrix stored at more bits per weight than `to` (and whose
/// rows are whole blocks of it) quantized to `to`; returns how many were. `dst` appears
/// complete or not at all (written beside it, then renamed).
pub fn requantize_gguf(src: &Path, to: DType, dst: &Path) -> Result<usize> {
    let file = GgufFile::open(src)?;
    file.check_types()?;
    let mut out = GgufWriter::default();
    for (key, value) in &file.metadata {
        if !LAYOUT_KEYS.contains(&key.as_str()) {
            out.meta(key, value.clone());
        }
    }
    let untied = is_untied(&file);
    let mut changed = 0;
    for t in &file.tensors {
        let data = match t.shape[..] {
            [rows, cols] if becomes(t, to, untied) => {
                changed += 1;
                let m = Matrix::from_raw(t, rows, cols);
                (to, quantize_matrix(&m, to).data.to_vec())
            }
            _ => (t.dtype, t.data.to_vec()),
        };
        out.tensor(TensorOut {
            name: t.name.clone(),
            dtype: data.0,
            shape: t.shape.clone(),
            data: data.1,
        });
    }
    let partial = dst.with_extension(format!("partial-{}", std::process::id()));
    let written = out
        .write(&partial)
        .and_then(|()| std::fs::rename(&partial, dst).map_err(|e| Error::io(dst, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written.map(|()| changed)
}

/// Whether `requantize_gguf(src, to, _)` would requantize any matrix.
pub fn requantizes(src: &Path, to: DType) -> Result<bool> {
    let file = GgufFile::open(src)?;
    let untied = is_untied(&file);
    Ok(file.tensors.iter().any(|t| becomes(t, to, untied)))
}

/// As when loading: untied embeddings are looked up, not multiplied, so they stay as stored.
fn is_untied(file: &GgufFile) -> bool {
    file.tensors.iter().any(|t| t.name == "output.weight")
}

/// Whether tensor `t` is a matrix stored at more bits per weight than `to`, whose rows are
/// whole blocks of it (and not untied embeddings).
fn becomes(t: &RawTensor, to: DType, untied: bool) -> bool {
    matches!(t.shape[..], [_, cols] if cols.is_multiple_of(to.block_len()))
        && !(untied && t.name == "token_embd.weight")
        && t.dtype.bits_per_weight() > to.bits_per_weight()
}
