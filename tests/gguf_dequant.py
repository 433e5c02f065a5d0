#!/usr/bin/env python3
"""Independent dequantization reference for tests/dequant.rs: the `gguf` Python package
(llama.cpp's gguf-py, `pip install gguf`) dequantizes raw blocks, and llmcad must agree.

    gguf_dequant.py OUT_DIR random SEED      # fresh random raw blocks of every type gguf reads
    gguf_dequant.py OUT_DIR file GGUF...     # rows of one tensor of every quantized type in each file

Writes OUT_DIR/manifest.json, a list of cases
    {"name", "type", "row_len", "raw", "values", ...}
where `raw` names a file of raw blocks (rows of `row_len` elements) and `values` a file of
little-endian f32, gguf's dequantization of them. File cases also give "file", "tensor" and
"first_row" so that the Rust side can read the same bytes with its own GGUF reader.
Exit status 2 when numpy or gguf is missing (with a message saying so).
"""

import json
import os
import struct
import sys

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.constants import GGML_QUANT_SIZES
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"gguf_dequant.py: {e}: install the gguf Python package (pip install gguf)", file=sys.stderr)
    sys.exit(2)

# Types checked on random blocks, with the byte offsets of their f16 scale fields.
F16_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}
BLOCKS = 1024  # random blocks per type
FILE_ROWS = 8  # rows from the start of each chosen tensor
FILE_TAIL_ROWS = 2  # and from its end


def small_f16(rng, n):
    """n finite f16 values of either sign, magnitudes about 2^-22 .. 2^2 (subnormals included),
    a few exact zeros of either sign."""
    mant = rng.uniform(0.5, 1.0, n)
    exp = rng.integers(-21, 3, n)
    sign = rng.choice([-1.0, 1.0], n)
    v = (sign * np.ldexp(mant, exp)).astype(np.float16)
    zeros = rng.random(n) < 0.02
    v[zeros] = np.float16(0.0) * sign[zeros].astype(np.float16)
    assert np.isfinite(v).all()
    return v


def dequantize(raw, qtype):
    """gguf's dequantization of raw blocks (rows, row_bytes) as f32."""
    out = gguf.quants.dequantize(raw, qtype)
    assert out.dtype == np.float32, out.dtype
    return out


def write_case(out_dir, cases, name, qtype, raw, values, **extra):
    rawf, valf = f"{name}.raw", f"{name}.f32"
    raw.tofile(os.path.join(out_dir, rawf))
    values.astype("<f4").tofile(os.path.join(out_dir, valf))
    block_len, _ = GGML_QUANT_SIZES[qtype]
    row_len = values.shape[-1]
    assert row_len % block_len == 0
    cases.append(dict(name=name, type=qtype.name, row_len=int(row_len), raw=rawf, values=valf, **extra))


def random_cases(out_dir, seed):
    rng = np.random.default_rng(seed)
    cases = []
    for tname, fields in F16_FIELDS.items():
        qtype = T[tname]
        block_len, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (BLOCKS, block_bytes), dtype=np.uint8)
        for off in fields:
            raw[:, off : off + 2] = small_f16(rng, BLOCKS).view(np.uint8).reshape(BLOCKS, 2)
        # one row of 4 blocks each, so that row handling is exercised too
        raw = raw.reshape(BLOCKS // 4, 4 * block_bytes)
        values = dequantize(raw, qtype)
        assert values.shape == (BLOCKS // 4, 4 * block_len), values.shape
        assert np.isfinite(values).all(), tname
        write_case(out_dir, cases, f"random-{tname}", qtype, raw, values)
    return cases


class SkimReader(gguf.GGUFReader):
    """gguf.GGUFReader that skims the metadata's arrays (the tokenizer's ~150k tokens, types and
    merges, which gguf-py otherwise splits into numpy views per element, ~10 s a file): string
    arrays come out empty, number arrays as one view. Tensor infos and data are read by gguf-py
    itself, and only they are used."""

    def _get_field_parts(self, orig_offs, raw_type):
        A, S = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING
        if raw_type == A:
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            nptype = self.gguf_scalar_to_np.get(gguf.GGUFValueType(raw_itype[0]))
            if nptype is not None:  # numbers: one view of the whole array
                vals = self._get(orig_offs + 12, nptype, alen[0])
                return 12 + int(vals.nbytes), [raw_itype, alen, vals], [2], [A, gguf.GGUFValueType(raw_itype[0])]
            if raw_itype[0] == S:
                fmt = "<Q" if (self.byte_order == "S") == (sys.byteorder == "big") else ">Q"
                buf, offs = memoryview(self.data), orig_offs + 12
                for _ in range(int(alen[0])):
                    offs += 8 + struct.unpack_from(fmt, buf, offs)[0]
                return offs - orig_offs, [raw_itype, alen], [], [A, S]
        return super()._get_field_parts(orig_offs, raw_type)


def open_reader(path):
    if hasattr(gguf.GGUFReader, "_get_field_parts"):
        return SkimReader(path)
    return gguf.GGUFReader(path)  # a gguf-py without that hook: slower, same tensors


def file_cases(out_dir, paths):
    cases = []
    for fi, path in enumerate(paths):
        reader = open_reader(path)
        seen = set()
        for t in reader.tensors:
            qtype = t.tensor_type
            if qtype in seen or qtype in (T.F32, T.F16, T.BF16):
                continue
            seen.add(qtype)
            block_len, block_bytes = GGML_QUANT_SIZES[qtype]
            row_len = int(t.shape[0])
            n_rows = int(t.n_elements) // row_len
            row_bytes = row_len // block_len * block_bytes
            data = np.asarray(t.data).reshape(-1).view(np.uint8)
            assert data.size == n_rows * row_bytes, (t.name, data.size)
            rows = data.reshape(n_rows, row_bytes)
            for first, count in [(0, FILE_ROWS), (n_rows - FILE_TAIL_ROWS, FILE_TAIL_ROWS)]:
                raw = np.ascontiguousarray(rows[first : first + count])
                values = dequantize(raw, qtype)
                assert values.shape == (count, row_len), values.shape
                write_case(
                    out_dir,
                    cases,
                    f"file{fi}-{qtype.name}-{first}",
                    qtype,
                    raw,
                    values,
                    file=os.path.abspath(path),
                    tensor=t.name,
                    first_row=first,
                )
    return cases


def main(argv):
    if len(argv) < 3 or argv[1] not in ("random", "file"):
        print(__doc__, file=sys.stderr)
        return 1
    out_dir = argv[0]
    os.makedirs(out_dir, exist_ok=True)
    if argv[1] == "random":
        cases = random_cases(out_dir, int(argv[2]))
    else:
        cases = file_cases(out_dir, argv[2:])
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"gguf_version": getattr(gguf, "__version__", None) or pkg_version(), "cases": cases}, f, indent=1)
    return 0


def pkg_version():
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
