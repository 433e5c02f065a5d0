#!/usr/bin/env bash
# Runs every test on a fresh machine: installs Lavapipe (Mesa's CPU Vulkan driver, for the wgpu
# tests) when no Vulkan driver is there, fetches the real models (SmolLM2, and the Qwen2.5-Coder
# 1.5B/0.5B pair), the `gguf` Python package (the independent dequantization check) and the
# `openai` one (the server's client test), then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
bash models/fetch-smollm2.sh >/dev/null
bash models/fetch-qwen-pair.sh >/dev/null
python3 -c "import gguf" 2>/dev/null || python3 -m pip install --quiet gguf
# tests/server.rs drives `llmcad serve` with the official OpenAI client
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai
# the Vulkan loader complains on every start without a runtime directory
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# the fuzz targets (tests/fuzz/) run 30 s each on the committed corpus
LLMCAD_FUZZ_SECONDS=30 cargo test --release --locked --no-fail-fast "$@"
# The mobile GPU floor: the GPU suite (kernels, forward pass, SmolLM2 exactness) again under
# WebGPU's default limits with no optional features.
export LLMCAD_GPU_LIMITS=webgpu-default
cargo test --release --locked --no-fail-fast --lib "$@" -- gpu::
cargo test --release --locked --no-fail-fast --test gpu --test streaming "$@"
cargo test --release --locked --no-fail-fast --test qwen "$@" -- on_the_gpu
# injected GPU faults (adapter, device, pipeline, allocation, device loss) under the floor too
cargo test --release --locked --no-fail-fast --test cli --test engine "$@" -- gpu_target device_loss
unset LLMCAD_GPU_LIMITS

# The NEON kernels (phones are ARM): the quant tests again, built for aarch64 and run under qemu
# (every weight type against the scalar reference's bits and an f64 reference).
if [ "$(uname -m)" = x86_64 ]; then
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user \
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
  fi
  rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu"
  cargo test --release --locked --no-fail-fast --target aarch64-unknown-linux-gnu --lib "$@" -- quant::
fi
