"""Writes the committed fuzz corpus from the real GGUF files (tests/fuzz.rs reads it).

For each model, two small files:
- <name>.header.gguf: the real header, metadata and tensor table, cut before the tensor data
  (the reader then refuses it: the corpus entry for the tensor-table checks);
- <name>.vocab.gguf: the real metadata without tensors (it parses, and its vocabulary builds).
Token arrays keep their first KEEP entries plus the special tokens the metadata names (the
ids renumbered to match) and only the merges among the kept tokens, so that every file stays
a few tens of kB while its vocabulary still builds.

python3 tests/fuzz/make_corpus.py models/cache/*.gguf
"""
import os
import struct
import sys

import gguf

KEEP = 400
OUT = os.path.join(os.path.dirname(__file__), "corpus", "gguf")
T = gguf.GGUFValueType


def field_value(f):
    if f.types[0] == T.ARRAY:
        return [f.parts[i].tobytes() if f.types[1] == T.STRING else f.parts[i][0].item()
                for i in f.data]
    if f.types[0] == T.STRING:
        return f.parts[f.data[0]].tobytes()
    return f.parts[f.data[0]][0].item()


def shorten(fields):
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        return fields
    _, toks = tokens
    id_keys = [k for k in fields if k.startswith("tokenizer.ggml.") and k.endswith("_id")]
    keep = list(range(min(KEEP, len(toks))))
    for k in id_keys:
        i = fields[k][1]
        if i < len(toks) and i not in keep:
            keep.append(i)
    new_id = {old: new for new, old in enumerate(keep)}
    out = dict(fields)
    for k in id_keys:
        ty, i = fields[k]
        out[k] = (ty, new_id.get(i, i))
    for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if k in fields:
            ty, v = fields[k]
            out[k] = (ty, [v[i] for i in keep])
    if "tokenizer.ggml.merges" in fields:
        ty, merges = fields["tokenizer.ggml.merges"]
        kept = {toks[i] for i in keep}
        out["tokenizer.ggml.merges"] = (ty, [m for m in merges
                                             if all(p in kept for p in m.split(b" ", 1))
                                             and m.replace(b" ", b"", 1) in kept])
    return {k: v for k, v in out.items() if v is not None}


def scalar(ty, v):
    fmt = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I",
           T.INT32: "<i", T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q",
           T.FLOAT64: "<d"}
    if ty == T.STRING:
        return struct.pack("<Q", len(v)) + v
    return struct.pack(fmt[ty], v)


def kv(key, ty, v):
    b = scalar(T.STRING, key.encode()) + struct.pack("<I", ty[0])
    if ty[0] == T.ARRAY:
        return b + struct.pack("<IQ", ty[1], len(v)) + b"".join(scalar(ty[1], x) for x in v)
    return b + scalar(ty[0], v)


def write(path, fields, tensors):
    b = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(fields))
    b += b"".join(kv(k, ty, v) for k, (ty, v) in fields.items())
    for t in tensors:
        b += scalar(T.STRING, t.name.encode()) + struct.pack("<I", len(t.shape))
        b += b"".join(struct.pack("<Q", int(d)) for d in t.shape)
        b += struct.pack("<IQ", int(t.tensor_type), t.data_offset - tensors[0].data_offset)
    with open(path, "wb") as f:
        f.write(b)


for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    fields = {k: (f.types, field_value(f)) for k, f in r.fields.items()
              if not k.startswith("GGUF.")}
    fields = shorten(fields)
    name = os.path.basename(path).split(".gguf")[0]
    os.makedirs(OUT, exist_ok=True)
    write(os.path.join(OUT, f"{name}.header.gguf"), fields, r.tensors)
    write(os.path.join(OUT, f"{name}.vocab.gguf"), fields, [])
