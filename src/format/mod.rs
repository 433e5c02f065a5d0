//! Model file formats. Each reader memory-maps its file and hands out tensors that borrow
//! from the mapping (zero-copy); every offset and size is checked against the file first.

pub mod gguf;
pub mod gguf_write;
pub mod hf_dir;
pub mod requantize;
pub mod safetensors;

use crate::error::{Error, Result};
use crate::quant::DType;
use memmap2::Mmap;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Bytes of a tensor: a window into a memory-mapped file, or a buffer made at load time
/// (for quantize-on-load).
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<[u8]>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

impl Bytes {
    /// Gives this window's pages of a mapped file back to the OS, after its bytes were copied
    /// elsewhere (packed at load): the file's pages stay cached, and a later read maps them
    /// again. Owned bytes stay.
    pub fn release_pages(&self) {
        #[cfg(unix)]
        if let Bytes::Mapped { map, start, len } = self {
            // SAFETY: the mapping is a shared read-only one of a file (`map_file`), whose
            // dropped pages read back as the file's bytes: nothing a reader sees changes
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *start, *len)
            };
        }
    }

    /// The bytes in `range` (a window into the same mapping, or a copy of owned bytes).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Bytes {
        assert!(range.start <= range.end && range.end <= self.len());
        match self {
            Bytes::Mapped { map, start, .. } => Bytes::Mapped {
                map: map.clone(),
                start: start + range.start,
                len: range.len(),
            },
            Bytes::Owned(v) => Bytes::Owned(v[range].into()),
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(v.into())
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Mapped { start, len, .. } => write!(f, "Mapped[{start}..+{len}]"),
            Bytes::Owned(v) => write!(f, "Owned[{}]", v.len()),
        }
    }
}

/// A named tensor as stored in a file. `shape` lists the outermost dimension first
/// (PyTorch order): a linear layer's weight is `[out_features, in_features]`, rows contiguous.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Opens a file of a model, refusing anything but a regular file (checked before opening:
/// opening a FIFO blocks until a writer comes, and a device never ends).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{}: not a regular file (a directory, FIFO, device or socket)",
            path.display()
        )));
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// The whole of a file of a model (JSON), checked as by [`open_regular`]; `None` when it does
/// not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match open_regular(path) {
        Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        other => other?,
    };
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|_| Error::OutOfMemory(format!("{}: {size} bytes", path.display())))?;
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| Error::io(path, e))?;
    Ok(Some(bytes))
}

/// Like [`read_optional`], for a file that must exist.
pub fn read_required(path: &Path) -> Result<Vec<u8>> {
    read_optional(path)?
        .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))
}

/// Memory-maps a whole file read-only.
pub fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = open_regular(path)?;
    // SAFETY: the mapping is read-only; like every mmap-based loader we assume nobody truncates
    // the model file while it is in use.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}
