//! Opening a GPU: adapter choice (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
//! `WGPU_POWER_PREF`), the adapter's real limits, optional features, and errors that arrive
//! asynchronously (validation, device loss) collected as `Error::Gpu` instead of panics.

use super::fault::{self, Fault};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// What to ask of the device. `Default` reads the environment switches.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Use `SHADER_F16` when the adapter has it (`LLMCAD_GPU_NO_F16=1` turns it off).
    pub f16: bool,
    /// Use `SUBGROUP` operations when the adapter has them (`LLMCAD_GPU_NO_SUBGROUP=1`).
    pub subgroups: bool,
    /// Caps the size of one weight binding below the device's own limit (tests use a tiny
    /// value to exercise the splitting of large matrices). `LLMCAD_GPU_MAX_BINDING` sets it.
    pub max_binding: Option<u64>,
    /// Request and honour only WebGPU's default limits (128 MiB per storage binding, 256 MiB
    /// per buffer, 16 KiB workgroup memory, 256 invocations, 8 storage buffers per stage) and
    /// no optional features: the floor that every phone GPU offers.
    /// `LLMCAD_GPU_LIMITS=webgpu-default` sets it.
    pub webgpu_default: bool,
    /// A failure to inject (tests; `LLMCAD_GPU_FAULT`).
    pub fault: Option<Fault>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            f16: !env_flag("LLMCAD_GPU_NO_F16"),
            subgroups: !env_flag("LLMCAD_GPU_NO_SUBGROUP"),
            fault: fault::from_env(),
            webgpu_default: std::env::var("LLMCAD_GPU_LIMITS").as_deref() == Ok("webgpu-default"),
            max_binding: std::env::var("LLMCAD_GPU_MAX_BINDING")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// An open device with what the kernels need to know about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// `SHADER_F16` is enabled on the device.
    pub f16: bool,
    /// `SUBGROUP` is enabled on the device.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY` is enabled on the device.
    pub timestamps: bool,
    /// Largest storage binding the device allows (and the kernels use for activations and the
    /// KV cache).
    pub max_binding: u64,
    /// Largest binding for one piece of a weight matrix (`max_binding`, or less when asked).
    pub weight_binding: u64,
    /// The failure to inject later (pipeline creation, allocation, device loss).
    pub fault: Option<Fault>,
    errors: Arc<Mutex<Vec<String>>>,
}

const NO_ADAPTER_HELP: &str = "no GPU adapter found. On Linux without a GPU, install the \
    Lavapipe software Vulkan driver (`apt install mesa-vulkan-drivers`); WGPU_BACKEND and \
    WGPU_ADAPTER_NAME select among several adapters";

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL;
    }
    wgpu::Instance::new(desc)
}

fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want = want.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want))
            .ok_or_else(|| {
                Error::Gpu(format!(
                    "WGPU_ADAPTER_NAME={want:?} matches no adapter (found: {names:?})"
                ))
            });
    }
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference:
            wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
        force_fallback_adapter: false,
        apply_limit_buckets: false,
        compatible_surface: None,
    }))
    .map_err(|e| Error::Gpu(format!("{NO_ADAPTER_HELP} ({e})")))
}

/// "name (backend, type)" of the adapter `open` would pick.
pub fn adapter_summary() -> Result<String> {
    let a = pick_adapter(&instance())?;
    Ok(describe(&a.get_info()))
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Opens the adapter chosen by the environment with its real limits and the optional features
/// `opts` allows.
pub fn open(opts: &DeviceOptions) -> Result<GpuContext> {
    if opts.fault == Some(Fault::Adapter) {
        return Err(fault::error(Fault::Adapter));
    }
    let adapter = pick_adapter(&instance())?;
    let info = adapter.get_info();
    let have = adapter.features();
    let mut features = wgpu::Features::empty();
    let optional = !opts.webgpu_default;
    let f16 = optional && opts.f16 && have.contains(wgpu::Features::SHADER_F16);
    let subgroups = optional && opts.subgroups && have.contains(wgpu::Features::SUBGROUP);
    if f16 {
        features |= wgpu::Features::SHADER_F16;
    }
    if subgroups {
        features |= wgpu::Features::SUBGROUP;
    }
    if opts.fault == Some(Fault::Device) {
        return Err(fault::error(Fault::Device));
    }
    // timestamps measure the verifier's compute time (stream statistics); optional
    let timestamps = optional
        && have.contains(wgpu::Features::TIMESTAMP_QUERY)
        && !env_flag("LLMCAD_GPU_NO_TIMESTAMPS");
    if timestamps {
        features |= wgpu::Features::TIMESTAMP_QUERY;
    }
    let limits = if opts.webgpu_default {
        wgpu::Limits::default()
    } else {
        adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("llmcad"),
        required_features: features,
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| Error::Gpu(format!("requesting a device from {}: {e}", describe(&info))))?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        if let Ok(mut v) = sink.lock() {
            v.push(e.to_string());
        }
    }));
    let sink = errors.clone();
    device.set_device_lost_callback(move |reason, msg| {
        if reason != wgpu::DeviceLostReason::Destroyed {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("device lost ({reason:?}): {msg}"));
            }
        }
    });
    let dev_max = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let max_binding = dev_max & !3;
    let weight_binding = opts.max_binding.map_or(dev_max, |m| m.clamp(256, dev_max)) & !3;
    Ok(GpuContext {
        device,
        queue,
        info,
        limits,
        f16,
        subgroups,
        timestamps,
        max_binding,
        weight_binding,
        fault: opts.fault,
        errors,
    })
}

impl GpuContext {
    /// A CPU implementation of the API (Lavapipe, SwiftShader, WARP): correct but slow.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// "name (backend, type)" plus the enabled features.
    pub fn summary(&self) -> String {
        format!(
            "{}{}{}",
            describe(&self.info),
            if self.f16 { " +f16" } else { "" },
            if self.subgroups { " +subgroups" } else { "" }
        ) + if self.limits == wgpu::Limits::default() {
            " (webgpu-default limits)"
        } else {
            ""
        }
    }

    /// Errors the device reported since the last call, as one short `Error::Gpu`: a lost
    /// device reports every failed call after it with wgpu's full chain, so the message keeps
    /// the first line of the first error and `log` gets the rest.
    pub fn take_error(&self) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("poisoned".into()))?;
        if v.is_empty() {
            return Ok(());
        }
        let errors = std::mem::take(&mut *v);
        Err(Error::Gpu(summarize_errors(&errors)))
    }

    /// Waits for all submitted work, then reports any device error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.take_error()
    }
}

/// The first error's first and last lines (what failed and wgpu's innermost cause) and how
/// many errors there were; the full text goes to `log` at debug level.
fn summarize_errors(errors: &[String]) -> String {
    let mut lines = errors[0].lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let mut msg = match lines.next_back() {
        Some(cause) => format!("{first}: {cause}"),
        None => first.to_string(),
    };
    if errors.len() > 1 || msg.len() < errors[0].trim().len() {
        log::debug!("GPU errors: {}", errors.join("\n"));
        msg += &format!(" ({} GPU errors; RUST_LOG=debug shows them)", errors.len());
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mobile floor asks for WebGPU's defaults and no optional feature, whatever the
    /// adapter offers (skipped only where there is no adapter and LLMCAD_SKIP_GPU=1).
    #[test]
    fn webgpu_default_requests_only_the_floor() {
        let opts = DeviceOptions {
            webgpu_default: true,
            ..DeviceOptions::default()
        };
        let ctx = match open(&opts) {
            Ok(c) => c,
            Err(e) if env_flag("LLMCAD_SKIP_GPU") => return eprintln!("NOTICE: skipped: {e}"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ctx.limits, wgpu::Limits::default());
        assert_eq!(
            ctx.device.limits().max_storage_buffer_binding_size,
            128 << 20
        );
        assert!(!ctx.f16 && !ctx.subgroups);
        assert!(ctx.device.features().is_empty());
        assert!(ctx.summary().contains("webgpu-default"));
    }

    #[test]
    fn a_burst_of_errors_is_reported_in_one_line() {
        assert_eq!(summarize_errors(&["lost".into()]), "lost");
        let chain = "Validation Error\n\nCaused by:\n  In Queue::submit\n    Parent device is lost";
        let msg = summarize_errors(&[chain.into(), "device lost (Unknown): gone".into()]);
        assert_eq!(
            msg,
            "Validation Error: Parent device is lost (2 GPU errors; RUST_LOG=debug shows them)"
        );
    }
}
