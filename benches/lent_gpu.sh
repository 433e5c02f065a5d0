#!/usr/bin/env bash
# The GPU figures of a lent machine that the model files cannot reach, as one prepared command:
# a random-weight model with the real target's shape (and a drafter derived from it), the
# ceilings and per-format matvec bandwidth, the pass cost over tree sizes with a per-kernel
# profile, the speculation table, and fresh `llmcad generate` processes, interleaved.
#
#   here:  cargo build --release --all-targets; mkdir -p gpu-bin; echo /gpu-bin/ >> .git/info/exclude
#          cp target/release/llmcad target/release/examples/synthetic_model gpu-bin/
#          cp target/release/deps/gpu_kernels-<hash> gpu-bin/gpu_kernels; strip gpu-bin/*
#   there: bash benches/lent_gpu.sh gpu-bin   (carry gpu-bin; results under $OUT, else /tmp/lent-gpu)
#
# PRESET (default qwen2.5-1.5b) picks the model's shape, SHAPE (151936x1536) the matvec's; the
# device's Vulkan driver must be found (VK_DRIVER_FILES). BENCHMARKS.md, "A real GPU", was
# measured this way.
set -uo pipefail
bin=$(cd "${1:?usage: lent_gpu.sh BIN_DIR}" && pwd)
out=${OUT:-/tmp/lent-gpu}; preset=${PRESET:-qwen2.5-1.5b}; work=$(mktemp -d)
mkdir -p "$out"; cd "$work"
export XDG_CACHE_HOME=$work/cache # the learned pass costs start empty
step() { echo "== $* ($(date +%T))"; }
{
  step synthesize "$preset"
  "$bin/synthetic_model" "$preset" q4_k t.gguf --drafter d.gguf --drafter-layers 4
  step kernels
  LLMCAD_BENCH_SHAPE=${SHAPE:-151936x1536} timeout 120 "$bin/gpu_kernels" t.gguf
  step passes
  timeout 120 "$bin/llmcad" bench -m t.gguf --device gpu -n 32 --gpu-sizes 1,2,4,8,16,32,64 \
    --gpu-profile 1,16 --gpu-reps 3 --json-out "$out/passes.json"
  step speculation
  timeout 150 "$bin/llmcad" bench -m t.gguf --draft d.gguf --device gpu --prompts 4 -n 64 \
    --gpu-sizes --budget-sweep --json-out "$out/speculation.json"
  step fresh processes
  for mode in none default none default; do
    args=(--spec none); [ "$mode" = default ] && args=(--draft d.gguf)
    echo -n "$mode: "
    timeout 60 "$bin/llmcad" generate -m t.gguf --device gpu "${args[@]}" -n 128 --ignore-eos --json \
      -p "Write a Python function that checks whether a number is prime." 2>/dev/null \
      | grep -o '"tokens_per_s":[0-9.]*' || echo "(no result within 60 s)"
  done
} 2>&1 | tee "$out/log.txt"
rm -rf "$work"
