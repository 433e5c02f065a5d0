//! `.safetensors` files (one or several shards), read zero-copy through the `safetensors` crate,
//! which validates the header (its size, JSON, and every tensor's byte range).

use super::{map_file, Bytes, RawTensor};
use crate::error::{format_err, unsupported, Result};
use crate::quant::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use std::sync::Arc;

/// Every tensor of one safetensors file.
pub fn read_file(path: &Path) -> Result<Vec<RawTensor>> {
    parse(map_file(path)?, &path.display().to_string())
}

/// Every tensor of a mapped safetensors file; `name` names it in errors.
pub fn parse(map: Arc<Mmap>, name: &str) -> Result<Vec<RawTensor>> {
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| format_err!("{name}: not a valid safetensors file: {e}"))?;
    let base = map.as_ptr() as usize;
    let mut out = Vec::new();
    for (tensor, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(unsupported!(
                    "{name}: tensor {tensor} has dtype {other:?}; llmcad reads F32, F16 and \
                     BF16 safetensors (quantizing on load makes Q8_0/Q4_0 from them)"
                ))
            }
        };
        let data = view.data();
        out.push(RawTensor {
            name: tensor,
            dtype,
            shape: view.shape().to_vec(),
            data: Bytes::Mapped {
                map: map.clone(),
                start: data.as_ptr() as usize - base,
                len: data.len(),
            },
        });
    }
    Ok(out)
}

/// Every tensor of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_dir(dir: &Path) -> Result<Vec<RawTensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let bytes = super::read_required(&index)?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format_err!("{}: {e}", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| format_err!("{}: no \"weight_map\" object", index.display()))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut out = Vec::new();
        for shard in shards {
            if shard.contains("..") || shard.contains('/') {
                return Err(format_err!(
                    "{}: suspicious shard name {shard:?}",
                    index.display()
                ));
            }
            out.extend(read_file(&dir.join(shard))?);
        }
        Ok(out)
    } else if single.exists() {
        read_file(&single)
    } else {
        Err(format_err!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        ))
    }
}
