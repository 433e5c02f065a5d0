//! GGUF (llama.cpp's model format), versions 2 and 3: header, metadata and tensor index.
//! Everything is bounds-checked so a truncated or corrupt file gives an error, never a panic.

use super::{map_file, Bytes, RawTensor};
use crate::error::{format_err, unsupported, Result};
use crate::quant::DType;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// Short description for `info` output (arrays are summarised).
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.len() > 60 => {
                format!(
                    "{:?}… ({} bytes)",
                    s.chars().take(60).collect::<String>(),
                    s.len()
                )
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::Bool(b) => b.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            other => other
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }
}

/// A parsed GGUF file: its metadata and its tensors (borrowing from the mapping).
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// The tensors of types llmcad reads.
    pub tensors: Vec<RawTensor>,
    pub file_size: usize,
    /// The first tensor of a type llmcad does not read, as a message; `check_types` reports it
    /// (after the loader has checked the architecture, which is the better message when both
    /// are unsupported).
    unsupported_type: Option<String>,
}

/// Refuses tensors whose data share bytes of the file: a forged table (an offset of 0, a
/// relabelled type) would make one tensor read another's data as its own.
fn check_disjoint(tensors: &[RawTensor]) -> Result<()> {
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter_map(|t| match t.data {
            Bytes::Mapped { start, len, .. } if len > 0 => Some((start, start + len, &*t.name)),
            _ => None,
        })
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format_err!(
                "tensors {a} and {b} share the file's bytes from {start}: the tensor table is \
                 corrupt"
            ));
        }
    }
    Ok(())
}

impl GgufFile {
    /// Fails when a tensor has a type llmcad does not read, naming the tensor and the type.
    pub fn check_types(&self) -> Result<()> {
        match &self.unsupported_type {
            Some(m) => Err(unsupported!("{m}")),
            None => Ok(()),
        }
    }

    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        Self::parse(map).map_err(|e| match e {
            crate::Error::Format(m) => format_err!("{}: {m}", path.display()),
            crate::Error::Unsupported(m) => unsupported!("{}: {m}", path.display()),
            other => other,
        })
    }

    pub fn parse(map: Arc<Mmap>) -> Result<Self> {
        let mut r = Reader { buf: &map, pos: 0 };
        let magic = r.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(format_err!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            ));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(unsupported!(
                "GGUF version {version} (llmcad reads versions 2 and 3)"
            ));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // each entry needs at least a few bytes, which bounds absurd counts from corrupt headers
        r.check_count(n_tensors, 8 + 4 + 4 + 8, "tensor count")?;
        r.check_count(n_kv, 8 + 4, "metadata count")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata type")?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        struct Info {
            name: String,
            dims: Vec<u64>,
            ty: u32,
            offset: u64,
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > 4 {
                return Err(format_err!(
                    "tensor {name}: {n_dims} dimensions (expected 1 to 4)"
                ));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64("tensor dimension"))
                .collect::<Result<Vec<_>>>()?;
            let ty = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            infos.push(Info {
                name,
                dims,
                ty,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(format_err!("general.alignment {v:?} is not a power of two")),
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_size = map.len();

        let mut tensors = Vec::with_capacity(infos.len());
        let mut unsupported_type = None;
        for info in infos {
            let dtype = match DType::from_ggml_id(info.ty) {
                Ok(d) => d,
                Err(ty) => {
                    unsupported_type.get_or_insert_with(|| {
                        format!(
                            "tensor {} has type {ty}; llmcad reads {} (requantize the model, \
                             e.g. with llama-quantize --allow-requantize … Q4_K_M)",
                            info.name,
                            DType::names()
                        )
                    });
                    continue;
                }
            };
            let numel = info
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n < (1u64 << 48))
                .ok_or_else(|| {
                    format_err!("tensor {}: dimensions {:?} overflow", info.name, info.dims)
                })?;
            if info.dims[0] % dtype.block_len() as u64 != 0 {
                return Err(format_err!(
                    "tensor {}: row length {} is not a multiple of the {dtype} block size {}",
                    info.name,
                    info.dims[0],
                    dtype.block_len()
                ));
            }
            let len = numel / dtype.block_len() as u64 * dtype.block_bytes() as u64;
            let start = data_start.checked_add(info.offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_size as u64 => {
                    if info.offset % alignment != 0 {
                        return Err(format_err!(
                            "tensor {}: offset {} is not aligned to {alignment}",
                            info.name,
                            info.offset
                        ));
                    }
                    tensors.push(RawTensor {
                        name: info.name,
                        dtype,
                        shape: info.dims.iter().rev().map(|&d| d as usize).collect(),
                        data: Bytes::Mapped {
                            map: map.clone(),
                            start: start as usize,
                            len: len as usize,
                        },
                    });
                }
                _ => {
                    return Err(format_err!(
                        "tensor {} ({len} bytes at offset {}) extends past the end of the file \
                         ({file_size} bytes): the file is truncated or corrupt",
                        info.name,
                        info.offset
                    ))
                }
            }
        }
        check_disjoint(&tensors)?;
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            unsupported_type,
            file_size,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, Value::as_u64, "an unsigned integer")
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, Value::as_f64, "a number")
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, Value::as_str, "a string")
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, Value::as_bool, "a boolean")
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, Value::as_array, "an array")
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        f: impl Fn(&'a Value) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                format_err!("metadata {key} should be {what}, found {}", v.summary())
            }),
        }
    }

    /// A string array as Vec<String> (token lists, merges).
    pub fn string_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.get_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format_err!("metadata {key} should hold strings"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// A cursor over the header bytes that reports where a truncated file ended.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format_err!(
                    "truncated GGUF: the file ends at byte {} while reading the {what} at byte {}",
                    self.buf.len(),
                    self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<()> {
        let left = (self.buf.len() - self.pos) as u64;
        if count.saturating_mul(min_bytes_each) > left {
            return Err(format_err!(
                "truncated or corrupt GGUF: {what} {count} cannot fit in the {left} bytes left in the file"
            ));
        }
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        self.check_count(len, 1, what)?;
        let b = self.bytes(len as usize, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format_err!("{what} at byte {} is not UTF-8", self.pos))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        macro_rules! num {
            ($t:ty, $n:expr, $v:ident) => {
                Value::$v(<$t>::from_le_bytes(
                    self.bytes($n, key)?.try_into().unwrap(),
                ))
            };
        }
        Ok(match ty {
            0 => num!(u8, 1, U8),
            1 => num!(i8, 1, I8),
            2 => num!(u16, 2, U16),
            3 => num!(i16, 2, I16),
            4 => num!(u32, 4, U32),
            5 => num!(i32, 4, I32),
            6 => num!(f32, 4, F32),
            7 => Value::Bool(self.bytes(1, key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 if depth < 4 => {
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                // the count is checked against the bytes its elements need before anything is
                // allocated for them, and the allocation itself may fail as an error
                let min_bytes = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 4 + 8,
                    _ => return Err(format_err!("metadata {key}: unknown value type {elem_ty}")),
                };
                self.check_count(n, min_bytes, key)?;
                let mut items = Vec::new();
                items.try_reserve_exact(n as usize).map_err(|_| {
                    format_err!("metadata {key}: no memory for an array of {n} values")
                })?;
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => num!(u64, 8, U64),
            11 => num!(i64, 8, I64),
            12 => num!(f64, 8, F64),
            _ => return Err(format_err!("metadata {key}: unknown value type {ty}")),
        })
    }
}
