#!/usr/bin/env bash
# Speculative decoding with the real pair (Qwen2.5-Coder 1.5B target, 0.5B drafter, Q4_K_M) on
# the CPU, as users run it: one fresh `llmcad generate` process per prompt and mode, the modes
# interleaved prompt by prompt, next to llama.cpp's llama-speculative-simple on the same files.
# The learned pass times start from an empty cache directory, so the first prompt is a first
# run on a fresh cache.
#
#   bash benches/spec_pair.sh [LLAMA_BIN_DIR]
#
# PROMPTS (default 12), TOKENS (128) and THREADS (2) change the run; CHAT=1 sends each prompt
# as a chat turn (llmcad --chat; llama.cpp gets the same turn in Qwen's chat format), MODES
# picks llmcad's modes (default "none default chain-k4"; also "default-stored": the drafter
# as stored, where the default requantizes it to Q4_0 and keeps it in the cache directory;
# "default-all": the drafter's whole vocabulary instead of the shipped frequency table's
# tokens; "default-q16": the drafter with 16-bit
# activations instead of 8-bit; "none-q8" and "default-q8": the target with 8-bit activations
# too) and LLAMA_K llama.cpp's draft lengths
# (default "4 8"). Prints decode tokens/s per mode (all tokens over all decode time) and the
# ratios, then each prompt's tokens/s and its ratio to `--spec none`.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:-}
prompts=${PROMPTS:-12}
tokens=${TOKENS:-128}
threads=${THREADS:-2}
chat=${CHAT:-0}
modes=${MODES:-none default chain-k4}
llama_k=${LLAMA_K:-4 8}
target=models/cache/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
drafter=models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
bin=target/release/llmcad
[ -f "$target" ] && [ -f "$drafter" ] || bash models/fetch-qwen-pair.sh
cargo build --release --quiet
cache=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$cache" "$out"' EXIT

# llmcad MODE ARGS...: appends "MODE tokens seconds PROMPT_NUMBER"
llmcad() {
    local mode=$1
    shift
    local as_chat=()
    [ "$chat" = 1 ] && as_chat=(--chat)
    LLMCAD_CACHE_DIR=$cache "$bin" generate -m "$target" -p "$prompt" "${as_chat[@]}" -n "$tokens" \
        --ignore-eos -t "$threads" --json "$@" 2>/dev/null |
        python3 -c "import json,sys; s=json.load(sys.stdin)['stats']; print('$mode', s['decode_ms']/1e3 * s['tokens_per_s'], s['decode_ms']/1e3, $number)" >>"$out"
}

# llama K: appends "llama-spec-K tokens seconds PROMPT_NUMBER"
llama_spec() {
    local text=$prompt
    if [ "$chat" = 1 ]; then
        # Qwen2.5's template with its default system turn, as llmcad --chat renders it
        printf -v text '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n' "$prompt"
    fi
    "$llama/llama-speculative-simple" -m "$target" -md "$drafter" --spec-type draft-simple \
        --spec-draft-n-max "$1" -p "$text" -n "$tokens" --ignore-eos -t "$threads" --temp 0 \
        -c 2048 2>&1 | sed -n 's/.*decoded *\([0-9]*\) tokens in *\([0-9.]*\) seconds.*/\1 \2/p' |
        sed "s/^/llama-spec-k$1 /; s/\$/ $number/" >>"$out"
}

number=0
head -n "$prompts" benches/prompts.txt | while IFS= read -r prompt; do
    number=$((number + 1))
    for mode in $modes; do
        case $mode in
            none) llmcad none --spec none ;;
            default) llmcad default --draft "$drafter" ;;
            default-all) llmcad default-all --draft "$drafter" --draft-vocab all ;;
            default-stored) llmcad default-stored --draft "$drafter" --draft-quantize none ;;
            default-q16) llmcad default-q16 --draft "$drafter" --draft-activations q16 ;;
            none-q8) llmcad none-q8 --spec none --activations q8 ;;
            default-q8) llmcad default-q8 --draft "$drafter" --activations q8 ;;
            chain-k4) llmcad chain-k4 --draft "$drafter" --spec chain --draft-max 4 ;;
            *) echo "unknown mode $mode" >&2 && exit 2 ;;
        esac
    done
    if [ -n "$llama" ]; then
        for k in $llama_k; do llama_spec "$k"; done
    fi
    echo "done: $prompt" >&2
done

python3 - "$out" <<'PY'
import collections, sys
tok, sec, runs = collections.Counter(), collections.Counter(), collections.Counter()
per_prompt = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    mode, n, s, number = line.split()
    tok[mode] += float(n); sec[mode] += float(s); runs[mode] += 1
    per_prompt[int(number)][mode] = float(n) / float(s)
rate = {m: tok[m] / sec[m] for m in tok}
base = rate["none"]
best_llama = max((r for m, r in rate.items() if m.startswith("llama")), default=None)
print("| mode | runs | decode tokens/s | vs llmcad --spec none | vs best llama-speculative-simple |")
print("|---|---|---|---|---|")
for m in rate:
    vs = f"{rate[m] / best_llama:.2f}x" if best_llama else "-"
    print(f"| {m} | {runs[m]} | {rate[m]:.2f} | {rate[m] / base:.2f}x | {vs} |")
print()
# where a mode loses to target-only, it shows here, prompt by prompt
print("| prompt | " + " | ".join(rate) + " |")
print("|---" * (len(rate) + 1) + "|")
for number, by_mode in sorted(per_prompt.items()):
    none = by_mode.get("none")
    cells = [f"{by_mode[m]:.2f}" + (f" ({by_mode[m] / none:.2f}x)" if none and m != "none" else "")
             if m in by_mode else "-" for m in rate]
    print(f"| {number} | " + " | ".join(cells) + " |")
PY
