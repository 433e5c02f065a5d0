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
cargo test --release --locked --no-fail-fast --test families "$@" -- on_the_gpu
# injected GPU faults (adapter, device, pipeline, allocation, device loss) under the floor too
cargo test --release --locked --no-fail-fast --test cli --test engine "$@" -- gpu_target device_loss
unset LLMCAD_GPU_LIMITS

# Phones are ARM: the CPU suite again, built once for aarch64 and run under qemu at two CPU
# levels, so that the kernel dispatch goes both ways: baseline NEON (cortex-a53) and `max`
# (dotprod and i8mm); the kernel tests also at cortex-a76 (dotprod without i8mm). The C example
# is cross-compiled and run under qemu too.
if [ "$(uname -m)" = x86_64 ]; then
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user \
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
  fi
  rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1
  arm=(--release --locked --target aarch64-unknown-linux-gnu)
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  export LLMCAD_CROSS_CC=aarch64-linux-gnu-gcc
  cargo build "${arm[@]}" --lib
  cargo test "${arm[@]}" --no-run --lib --test formats --test tokenizer --test engine \
    --test ffi --test smollm2 --test spec --test families
  log=$(mktemp)
  start=$SECONDS
  for level in cortex-a53:neon max:neon-i8mm; do
    cpu=${level%%:*}
    export LLMCAD_EXPECT_SIMD=${level#*:}
    emulator="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=$emulator LLMCAD_CROSS_RUNNER=$emulator
    echo "aarch64 under qemu -cpu $cpu: expecting the $LLMCAD_EXPECT_SIMD kernels"
    echo "aarch64 under qemu: GPU tests skipped (no Vulkan adapter under emulation): the lib's" \
      "gpu:: tests are not run, the GPU cases of the other tests return early (LLMCAD_SKIP_GPU=1)"
    export LLMCAD_SKIP_GPU=1
    cargo test "${arm[@]}" --no-fail-fast --lib "$@" -- --skip gpu:: 2>&1 | tee -a "$log"
    # SmolLM2 decodes at a few tokens/s under emulation: its chat tests in engine and ffi are
    # left to the x86 run; the exactness tests below take SmolLM2's first reference and few tokens
    echo "aarch64 under qemu: the real-model tests of engine and ffi skipped" \
      "(too slow emulated; they run on x86)"
    cargo test "${arm[@]}" --no-fail-fast --test formats --test tokenizer --test engine \
      --test ffi "$@" -- --skip real_model 2>&1 | tee -a "$log"
    # the tiny-pair speculative tests, every mode and both dtypes on one prompt and fewer
    # sampling runs (the full size takes 15 minutes emulated; it runs on x86)
    LLMCAD_SPEC_QUICK=1 cargo test "${arm[@]}" --no-fail-fast --test spec "$@" 2>&1 | tee -a "$log"
    # every model family against its transformers reference (tiny float32 models: quick)
    cargo test "${arm[@]}" --no-fail-fast --test families "$@" 2>&1 | tee -a "$log"
    # SmolLM2's first reference and the first committed cross-architecture case on the default
    # (q16) path; the f32 path too at cortex-a53 only (minutes emulated), since every NEON
    # level runs the same f32 kernel (arm::matmul_f32: no dotprod or i8mm in it)
    modes=q16
    if [ "$cpu" = cortex-a53 ]; then modes=q16,f32; fi
    LLMCAD_SMOLLM2_PROMPTS=1 LLMCAD_EXACT_MODES=$modes cargo test "${arm[@]}" --no-fail-fast \
      --test smollm2 "$@" -- default_path_reproduces greedy_tokens_are_the_same_on_every_architecture \
      2>&1 | tee -a "$log"
    unset LLMCAD_SKIP_GPU
  done
  export LLMCAD_EXPECT_SIMD=neon-dotprod
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu"
  echo "aarch64 under qemu -cpu cortex-a76: the kernel tests, expecting the neon-dotprod kernels"
  cargo test "${arm[@]}" --no-fail-fast --lib "$@" -- quant:: 2>&1 | tee -a "$log"
  awk '/^test result:/ { p += $4; f += $6; i += $8 }
    END { printf "aarch64 under qemu (all CPU levels): %d passed, %d failed, %d ignored\n", p, f, i }' \
    "$log"
  echo "aarch64 under qemu took $((SECONDS - start)) s"
  rm -f "$log"
fi
