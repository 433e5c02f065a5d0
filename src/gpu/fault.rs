//! Fault injection for the GPU path: each failure an app meets on real phones (no adapter, a
//! refused device, a driver that fails pipeline creation, out of memory, a device lost in the
//! middle of a generation) can be forced on any adapter, Lavapipe included, to test that the
//! engine survives it. `LLMCAD_GPU_FAULT=adapter|device|pipeline|alloc|lost:N` sets it (N: the
//! forward pass at which the device is destroyed).

use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No adapter is found.
    Adapter,
    /// The adapter refuses to create a device.
    Device,
    /// Compute pipeline creation fails.
    Pipeline,
    /// Allocating the weight buffers runs out of memory.
    Alloc,
    /// The device is lost (destroyed) when forward pass number N (from 0) starts.
    Lost(usize),
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "adapter" => Fault::Adapter,
            "device" => Fault::Device,
            "pipeline" => Fault::Pipeline,
            "alloc" => Fault::Alloc,
            _ => match s.strip_prefix("lost:").map(str::parse) {
                Some(Ok(n)) => Fault::Lost(n),
                _ => {
                    return Err(format!(
                        "{s:?}: expected adapter, device, pipeline, alloc or lost:N"
                    ))
                }
            },
        })
    }
}

/// The fault the environment asks for, if any (an unparsable value is reported and ignored).
pub fn from_env() -> Option<Fault> {
    let v = std::env::var("LLMCAD_GPU_FAULT").ok()?;
    v.parse()
        .map_err(|e| log::warn!("LLMCAD_GPU_FAULT ignored: {e}"))
        .ok()
}

/// The error an injected fault produces.
pub fn error(f: Fault) -> crate::Error {
    crate::Error::Gpu(format!("injected fault ({f:?}, LLMCAD_GPU_FAULT)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault() {
        assert_eq!("adapter".parse(), Ok(Fault::Adapter));
        assert_eq!("lost:3".parse(), Ok(Fault::Lost(3)));
        assert!("lost:x".parse::<Fault>().is_err());
        assert!("oops".parse::<Fault>().is_err());
    }
}
