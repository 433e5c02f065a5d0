#!/usr/bin/env bash
# Decode and prefill against llama.cpp on the same files, as BENCHMARKS.md reports them: for
# each model, `llmcad bench` with each activation mode, then `llama-bench`, the rounds
# interleaved so that a machine's drift hits both engines alike. Prints one table row per
# round and model.
#
#   bash benches/vs_llama_cpp.sh LLAMA_BIN_DIR MODEL.gguf...
#
# ROUNDS (default 2), THREADS (2), TOKENS (128, generated), PROMPT (64, prefill) and ACTS
# ("q16 q8") change the run. SIMD picks llmcad's kernel set (LLMCAD_CPU_SIMD: avx2,
# avx512vnni, ...; default: the best this CPU runs); compare it with a llama.cpp built for the
# same instructions (for AVX2 only: -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON
# -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || {
    sed -n '2,13p' "$0"
    exit 2
}
llama=$1
shift
rounds=${ROUNDS:-2}
threads=${THREADS:-2}
tokens=${TOKENS:-128}
prompt=${PROMPT:-64}
acts=${ACTS:-q16 q8}
bin=target/release/llmcad
cargo build --release --quiet
json=$(mktemp)
trap 'rm -f "$json"' EXIT

header="| round | model |"
for a in $acts; do header+=" llmcad $a tg$tokens | llmcad $a pp$prompt |"; done
echo "$header llama.cpp tg$tokens | llama.cpp pp$prompt | decode ratios |"
for round in $(seq "$rounds"); do
    for model in "$@"; do
        row="| $round | $(basename "$model") |"
        decode=()
        for a in $acts; do
            LLMCAD_CPU_SIMD=${SIMD:-} "$bin" bench -m "$model" --thread-counts "$threads" \
                -n "$tokens" --n-prompt "$prompt" --activations "$a" --json-out "$json" \
                >/dev/null 2>&1
            read -r tg pp < <(python3 -c "
import json, sys
row = json.load(open(sys.argv[1]))['cpu'][0]
print(row['decode_tokens_per_s'], row['prompt_tokens_per_s'])" "$json")
            row+=" $(printf '%.1f' "$tg") | $(printf '%.1f' "$pp") |"
            decode+=("$tg")
        done
        read -r ltg lpp < <("$llama/llama-bench" -m "$model" -t "$threads" -p "$prompt" \
            -n "$tokens" -r 2 -o csv 2>/dev/null | python3 -c "
import csv, sys
rows = list(csv.DictReader(sys.stdin))
speed = {('pp' if int(r['n_prompt']) else 'tg'): float(r['avg_ts']) for r in rows}
print(speed['tg'], speed['pp'])")
        ratios=""
        for tg in "${decode[@]}"; do ratios+="$(python3 -c "print(f'{$tg / $ltg:.2f}')") "; done
        echo "$row $(printf '%.2f' "$ltg") | $(printf '%.2f' "$lpp") | $ratios|"
    done
done
