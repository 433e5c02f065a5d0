#!/usr/bin/env bash
# Rebuilds a drafter's frequency table (src/spec/frequent/VOCAB.bin; what it is for:
# src/spec/frequent.rs) for one of the vocabularies the library ships a table for. The corpus
# is text any machine here has or gets from PyPI, in seven sources of equal weight:
#   - code: Python's standard library, the Rust crates this project builds with (cargo's
#     registry), C headers (/usr/include), the JavaScript of npm;
#   - prose: the crates' Markdown documents; word counts from `wordfreq` (PyPI) for English, for
#     Chinese, and for ten more languages together.
# Each source is cut at 24 MB. The benchmark prompts and their outputs are not part of it.
#
#   bash models/build-frequent-table.sh VOCAB [RECOMMENDED]
#
# VOCAB: qwen2 (Qwen2 and Qwen2.5, 151,936 tokens: 65,536 ranked, 65,536 kept by default) or
# smollm2 (SmolLM2, 49,152 tokens: 32,768 ranked, 16,384 kept). RECOMMENDED overrides how many
# of the top tokens the drafter keeps by default (chosen by measurement: BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
vocab=${1:?"usage: $0 qwen2|smollm2 [RECOMMENDED]"}
case $vocab in
    qwen2) model=models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf fetch=fetch-qwen-pair.sh
        top=65536 recommended=${2:-65536} ;;
    smollm2) model=models/cache/SmolLM2-135M-Instruct.Q4_1.gguf fetch=fetch-smollm2.sh
        top=32768 recommended=${2:-16384} ;;
    *) echo "unknown vocabulary $vocab (qwen2 or smollm2)" >&2 && exit 2 ;;
esac
[ -f "$model" ] || bash "models/$fetch"
python3 -c "import wordfreq" 2>/dev/null || pip install --quiet wordfreq
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cap=$((24 << 20))

# concat DIR PATTERN NAME: the matching files under DIR, in a stable order, cut at $cap bytes
concat() {
    find "$1" -name "$2" -type f -size -1000k -print0 2>/dev/null | LC_ALL=C sort -z |
        xargs -0 cat 2>/dev/null | head -c "$cap" >"$corpus/$3" || true
}
concat "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" '*.py' python.txt
cargo fetch --quiet
concat "${CARGO_HOME:-$HOME/.cargo}/registry/src" '*.rs' rust.txt
concat /usr/include '*.h' c.txt
concat "$(dirname "$(command -v npm)")/../lib/node_modules/npm" '*.js' javascript.txt
concat "${CARGO_HOME:-$HOME/.cargo}/registry/src" '*.md' markdown.txt

# the most frequent words with their frequencies per billion, as a text would show them: after
# a space, at a line's start, capitalised (languages written without spaces: as they are)
python3 - "$corpus" <<'PY'
import sys, wordfreq
out = sys.argv[1]
def write(name, langs):
    with open(f"{out}/{name}.tsv", "w") as f:
        for lang in langs:
            # the 60,000 most frequent words (the rarer ones are mostly names and typos)
            freqs = wordfreq.get_frequency_dict(lang, wordlist="large")
            for word in sorted(freqs, key=lambda w: (-freqs[w], w))[:60000]:
                n = freqs[word] * 1e9
                forms = [word] if lang in ("zh", "ja") else [" " + word, word, " " + word.capitalize()]
                for form in forms:
                    if "\t" not in form and "\n" not in form:
                        f.write(f"{n / len(forms):.3f}\t{form}\n")
write("words-en", ["en"])
write("words-zh", ["zh"])
write("words-more", ["es", "fr", "de", "ja", "ru", "pt", "it", "nl", "pl", "ar"])
PY
ls -l "$corpus"
cargo run --release --quiet --example frequent_tokens -- "$model" "src/spec/frequent/$vocab.bin" \
    --top "$top" --recommended "$recommended" "$corpus"/*
