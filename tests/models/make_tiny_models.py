#!/usr/bin/env python3
"""Regenerate the tiny reference models under tests/models/.

Usage (from anywhere; needs the venv described in tests/models/README.md):

    /work/venv-ref/bin/python tests/models/make_tiny_models.py            # all archs
    /work/venv-ref/bin/python tests/models/make_tiny_models.py qwen2 phi3 # a subset

Environment:
    LLAMA_CPP_DIR   llama.cpp checkout holding convert_hf_to_gguf.py and gguf-py/
                    (default /opt/llama/llama_cpp_python-0.3.36/vendor/llama.cpp)
    LLAMA_CPP_LIB   optional directory with a built libllama.so; when set (and the
                    llama_cpp python bindings are importable, LLAMA_CPP_PY) the GGUF is
                    also run through llama.cpp and the difference to HF is recorded in
                    gguf_check.json. Purely informational.

For every architecture <arch> in ARCHS this writes tests/models/<arch>/:
    target/            Hugging Face dir (config.json, model.safetensors f32, tokenizer files)
    target.gguf        written by llama.cpp's convert_hf_to_gguf.py --outtype f32
    draft/, draft.gguf 1-layer sibling, same tokenizer, other seed
    reference.json     transformers logits for every prompt position + 20 greedy tokens
    draft_reference.json  greedy tokens of the draft for the same prompt
    gguf_check.json    GGUF metadata, tensor list, and the HF->GGUF weight transforms
                       verified tensor by tensor (max abs diff after undoing them)

Everything is deterministic: fixed torch seeds, single-threaded SentencePiece and
`tokenizers` training on the inline corpus below. Nothing is downloaded.

Internal mode (used by the script itself):
    make_tiny_models.py --convert HF_DIR OUT.gguf PRE_NAME
runs llama.cpp's converter with get_vocab_base_pre() patched to return PRE_NAME
(our tiny BPE vocab cannot match llama.cpp's hash table of known tokenizers).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", "/opt/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"))
GGUF_PY = LLAMA_CPP_DIR / "gguf-py"
CONVERTER = LLAMA_CPP_DIR / "convert_hf_to_gguf.py"

ARCHS = ["llama3", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]
N_PROMPT = 12
N_GEN = 20
# Gemma query_pre_attn_scalar != head_dim so that the query scale matters.
GEMMA_QUERY_PRE_ATTN_SCALAR = 24
GEMMA_EMB_STD = 0.05

# ---------------------------------------------------------------------------------------------
# training corpus for the tiny tokenizers (English + code; deterministic, inline)
# ---------------------------------------------------------------------------------------------
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Once upon a time there was a little model that wanted to predict the next token.",
    "It read many books, and every book taught it something new about the world.",
    "In the morning the model would wake up, load its weights, and start to think.",
    "Hello world! How are you today? I am fine, thank you. What's your name?",
    "We're going to the market; they'll buy apples, oranges and 12 bananas for $3.50.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 65536 3.14159 2.71828",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, 'is even')\n    else:\n        continue\n",
    "fn main() {\n    let x: u32 = 5;\n    println!(\"x = {}\", x);\n}\n",
    "struct Point { x: f32, y: f32 }\nimpl Point { fn norm(&self) -> f32 { (self.x * self.x + self.y * self.y).sqrt() } }\n",
    "import numpy as np\nx = np.zeros((4, 4), dtype=np.float32)\nx[0, 0] = 1.0\n",
    "SELECT name, age FROM users WHERE age > 18 ORDER BY name;",
    "<html><body><p>Tiny models are useful for tests.</p></body></html>",
    "Attention is all you need. The transformer uses self-attention and feed-forward layers.",
    "Rotary position embeddings rotate pairs of dimensions by an angle that grows with position.",
    "A key, a value, and a query walk into a bar. The softmax decides who gets served.",
    "She said: \"I'll be there at 10:30, don't be late!\" He replied: 'OK, see you.'",
    "The weather is nice and warm, the sky is blue, and the birds are singing in the trees.",
    "Tokenizers split text into pieces; byte pairs merge into larger and larger tokens.",
    "if (x > 0 && y < 10) { return x * y; } else { return -1; }",
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "café naïve résumé über straße — “quotes” … 你好 世界 🙂",
    "    indented line\n\ttabbed line\n\n\ndouble newline above\n",
]
CORPUS_TEXT = "\n".join(CORPUS)

PROMPT_TEXT = ("The quick brown fox jumps over the lazy dog. The dog sleeps in the sun and the model "
               "starts to think about the next token")

# Llama 3 / Qwen2 pre-tokenizer regexes (from their tokenizer.json files)
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# converter wrapper (runs in a subprocess)
# ---------------------------------------------------------------------------------------------
def run_converter_inprocess(hf_dir: str, out: str, pre: str) -> None:
    sys.path.insert(0, str(LLAMA_CPP_DIR))
    sys.path.insert(1, str(GGUF_PY))
    import conversion.base as cb  # noqa: E402  (llama.cpp's package)

    if pre != "-":
        def _pre(self, tokenizer, _pre=pre):  # the tiny vocab never matches the known hashes
            return _pre
        cb.TextModel.get_vocab_base_pre = _pre
    # llama.cpp's Gemma2/Gemma3 converters drop query_pre_attn_scalar (llama.cpp hard-codes
    # 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) for the 27B sizes). Record it in the standard
    # "{arch}.attention.scale" key so that the GGUF alone determines the HF computation.
    import conversion.gemma as cg
    for cls in (cg.Gemma2Model, cg.Gemma3Model):
        orig = cls.set_gguf_parameters

        def _sgp(self, _orig=orig):
            _orig(self)
            q = self.hparams.get("query_pre_attn_scalar")
            if q is not None:
                self.gguf_writer.add_attention_scale(float(q) ** -0.5)
        cls.set_gguf_parameters = _sgp
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", "f32"]
    import runpy
    runpy.run_path(str(CONVERTER), run_name="__main__")


def convert(hf_dir: Path, out: Path, pre: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(GGUF_PY)
    env.pop("NO_LOCAL_GGUF", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--convert", str(hf_dir), str(out), pre]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-8000:])
        raise SystemExit(f"converter failed for {hf_dir}")


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def build_bpe_tokenizer(family: str, out_dir: Path):
    """Byte-level BPE with the family's pre-tokenizer regex, trained on CORPUS."""
    from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    if family == "llama3":
        pat, specials = LLAMA3_PAT, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                     "<|end_header_id|>", "<|eot_id|>"]
        tok = Tokenizer(models.BPE(ignore_merges=True))
    else:
        pat, specials = QWEN2_PAT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok.add_special_tokens(specials)  # appended after the BPE vocab, like the real models
    if family == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                     chat_template=LLAMA3_TEMPLATE, model_max_length=256,
                                     clean_up_tokenization_spaces=False)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     chat_template=CHATML_TEMPLATE, model_max_length=256,
                                     clean_up_tokenization_spaces=False)
    hf.save_pretrained(out_dir)
    return hf


def train_spm(family: str) -> bytes:
    import sentencepiece as spm
    buf = io.BytesIO()
    common = dict(model_type="bpe", vocab_size=420, byte_fallback=True, character_coverage=1.0,
                  num_threads=1, shuffle_input_sentence=False, split_digits=True,
                  normalization_rule_name="identity", remove_extra_whitespaces=False,
                  allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
                  minloglevel=2, hard_vocab_limit=False)
    if family == "gemma":
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 3), model_writer=buf, add_dummy_prefix=False,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
            unk_piece="<unk>", user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"], **common)
    else:  # llama-style (phi3)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 3), model_writer=buf, add_dummy_prefix=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, **common)
    return buf.getvalue()


def build_spm_tokenizer(family: str, out_dir: Path):
    from transformers import AutoTokenizer
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(train_spm("gemma" if family.startswith("gemma") else "llama"))
    if family.startswith("gemma"):
        cfg = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
               "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
               "model_max_length": 256, "clean_up_tokenization_spaces": False}
    else:
        cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|endoftext|>",
               "unk_token": "<unk>", "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
               "legacy": False, "model_max_length": 256, "clean_up_tokenization_spaces": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    hf = AutoTokenizer.from_pretrained(out_dir)
    if family == "phi3":
        # Phi-3 chat specials live after the SentencePiece vocab (ids >= 32000 in the real model)
        hf.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|assistant|>", "<|system|>",
                                                             "<|end|>", "<|user|>"]})
        hf.eos_token = "<|endoftext|>"
        hf.pad_token = "<|endoftext|>"
        hf.chat_template = PHI3_TEMPLATE
    else:
        # like Gemma's tokenizer_config.json: the turn markers are special (CONTROL in the GGUF)
        hf.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
        hf.chat_template = GEMMA_TEMPLATE
    hf.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# model configs
# ---------------------------------------------------------------------------------------------
def make_config(arch: str, vocab: int, n_layers: int, tok):
    import transformers as T
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, initializer_range=0.2, dtype="float32")
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama3":
        return T.LlamaConfig(**common, **ids, head_dim=16, tie_word_embeddings=False, hidden_act="silu",
                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64})
    if arch == "qwen2":
        return T.Qwen2Config(**common, **ids, tie_word_embeddings=True, hidden_act="silu",
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                             use_sliding_window=False)
    if arch == "qwen3":
        return T.Qwen3Config(**common, **ids, head_dim=16, tie_word_embeddings=True, hidden_act="silu",
                             attention_bias=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                             use_sliding_window=False)
    if arch == "gemma2":
        common["initializer_range"] = 0.3
        return T.Gemma2Config(**common, **ids, head_dim=16, tie_word_embeddings=True,
                              hidden_activation="gelu_pytorch_tanh",
                              query_pre_attn_scalar=GEMMA_QUERY_PRE_ATTN_SCALAR, sliding_window=8,
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                              layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention"
                                           for i in range(n_layers)],
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if arch == "gemma3":
        common["initializer_range"] = 0.3
        common["intermediate_size"] = 64  # 6 layers (llama.cpp's fixed 5:1 pattern): keep the file small
        return T.Gemma3TextConfig(**common, **ids, head_dim=16, tie_word_embeddings=True,
                                  hidden_activation="gelu_pytorch_tanh",
                                  query_pre_attn_scalar=GEMMA_QUERY_PRE_ATTN_SCALAR, sliding_window=8,
                                  final_logit_softcapping=None, attn_logit_softcapping=None,
                                  layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention"
                                               for i in range(n_layers)],
                                  rope_parameters={
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    if arch == "phi3":
        half = 8  # head_dim 16 / 2
        return T.Phi3Config(**common, **ids, tie_word_embeddings=False, hidden_act="silu",
                            original_max_position_embeddings=32, sliding_window=None,
                            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                             "short_factor": [round(1.0 + 0.25 * i, 4) for i in range(half)],
                                             "long_factor": [round(1.5 + 0.5 * i, 4) for i in range(half)],
                                             "original_max_position_embeddings": 32})
    raise ValueError(arch)


MODEL_CLASS = {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}
N_LAYERS = {"llama3": 2, "qwen2": 2, "qwen3": 2, "gemma2": 2, "gemma3": 6, "phi3": 2}
PRE = {"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "gemma2": "-", "gemma3": "-", "phi3": "-"}
TOKENIZER_CLASS = {"llama3": "PreTrainedTokenizerFast", "qwen2": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer",
                   "gemma2": "GemmaTokenizer", "gemma3": "GemmaTokenizer", "phi3": "LlamaTokenizer"}
ADD_BOS = {"llama3": True, "qwen2": False, "qwen3": False, "gemma2": True, "gemma3": True, "phi3": False}
SEEDS = {a: 1000 + i for i, a in enumerate(ARCHS)}


def build_model(arch: str, cfg, seed: int):
    import torch
    import transformers as T
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = getattr(T, MODEL_CLASS[arch])(cfg).float().eval()
    # HF initialises norms to 1 (or 0 for Gemma's 1+w) and biases to 0: perturb them so that an
    # engine that ignores a norm weight or a bias gets different logits.
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        if arch.startswith("gemma"):
            # Gemma multiplies embeddings by sqrt(hidden) and ties the head: with plain random init the
            # residual stream is dominated by the input embedding and greedy decoding repeats one token.
            # Shrink the embedding, raise the norm gains (x*(1+w) with w~3) so that attention/MLP
            # matter and logits are large enough for the softcaps to bite.
            model.model.embed_tokens.weight.mul_(GEMMA_EMB_STD / cfg.initializer_range)
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(2.0)
            model.model.norm.weight.add_(3.0)
    return model


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def r6(x: float) -> float:
    return float(f"{x:.6g}")


def choose_prompt(tok):
    """The first N_PROMPT ids of PROMPT_TEXT (with the family's BOS), shortened until the decoded
    text re-encodes to exactly those ids, so that prompt_text <-> prompt_ids is a tokenizer test too."""
    full = tok(PROMPT_TEXT)["input_ids"]
    for k in range(N_PROMPT, 4, -1):
        ids = full[:k]
        text = tok.decode(ids, skip_special_tokens=True)
        if tok(text)["input_ids"] == ids:
            return text, ids
    raise RuntimeError("no round-tripping prompt prefix")


def greedy(model, ids, n):
    import torch
    from transformers import GenerationConfig
    inp = torch.tensor([ids])
    gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=None,
                          pad_token_id=0, bos_token_id=None, use_cache=True, num_beams=1)
    with torch.no_grad():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc)
    cached = out[0, len(ids):].tolist()
    seq = list(ids)
    for _ in range(n):  # no-cache full forward argmax loop
        with torch.no_grad():
            logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
        seq.append(int(torch.argmax(logits)))
    nocache = seq[len(ids):]
    return cached, nocache


def make_reference(arch, model, tok, prompt_text, ids, cfg, extra_notes=""):
    import torch
    import transformers
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]
    cached, nocache = greedy(model, ids, N_GEN)
    assert cached == nocache, f"{arch}: generate() {cached} != no-cache loop {nocache}"
    assert len(set(cached)) > 3, f"{arch}: greedy output too repetitive: {cached}"
    add_bos = bool(ids and tok.bos_token_id is not None and ids[0] == tok.bos_token_id)
    return {
        "arch": arch,
        "hf_class": MODEL_CLASS[arch],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompt_text": prompt_text,
        "add_bos": add_bos,
        "prompt_ids": ids,
        "vocab_size": cfg.vocab_size,
        "logits": [[r6(v) for v in row] for row in logits.tolist()],
        "greedy_ids": cached,
        "greedy_text": tok.decode(cached),
        "notes": extra_notes,
    }


# ---------------------------------------------------------------------------------------------
# GGUF verification
# ---------------------------------------------------------------------------------------------
def gguf_field_value(f):
    import gguf
    t = f.types[0] if f.types else None
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        n = len(f.data)
        if sub == gguf.GGUFValueType.STRING:
            vals = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data[:8]]
        else:
            vals = [f.parts[i].tolist()[0] for i in f.data[:8]]
        return {"array_of": sub.name if sub is not None else None, "len": n, "first": vals}
    if t == gguf.GGUFValueType.STRING:
        s = bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        return s if len(s) <= 200 else s[:200] + "...(%d chars)" % len(s)
    v = f.parts[f.data[0]].tolist()[0]
    return v


def verify_gguf(arch: str, hf_dir: Path, gguf_path: Path, cfg) -> dict:
    import numpy as np
    import torch
    sys.path.insert(0, str(GGUF_PY))
    import gguf
    from safetensors.torch import load_file

    rd = gguf.GGUFReader(str(gguf_path))
    meta = {}
    for k, f in rd.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0]
        meta[k] = {"type": (t.name if t != gguf.GGUFValueType.ARRAY else "ARRAY"), "value": gguf_field_value(f)}
    gg_arch = meta["general.architecture"]["value"]
    tensors = {}
    for t in rd.tensors:
        tensors[t.name] = {"ggml_type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                           "data": np.array(t.data)}
    # token type histogram
    tt = rd.fields.get("tokenizer.ggml.token_type")
    if tt is not None:
        types = [int(tt.parts[i][0]) for i in tt.data]
        hist = {}
        for x in types:
            name = gguf.TokenType(x).name
            hist[name] = hist.get(name, 0) + 1
        meta["tokenizer.ggml.token_type"]["histogram"] = hist
        toks = rd.fields["tokenizer.ggml.tokens"]
        strs = [bytes(toks.parts[i]).decode("utf-8", "replace") for i in toks.data]
        meta["tokenizer.ggml.tokens"]["non_normal"] = {
            str(i): [strs[i], gguf.TokenType(types[i]).name] for i in range(len(types))
            if types[i] not in (1, 6)}
        meta["tokenizer.ggml.tokens"]["byte_tokens"] = sum(1 for x in types if x == 6)

    sd = load_file(str(hf_dir / "model.safetensors"))
    n_layers = cfg.num_hidden_layers
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[{v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[gg_arch].name],
                                    n_layers)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads

    def permute(w, nh):  # llama.cpp LlamaModel.permute (rope layout: HF half-split -> interleaved pairs)
        return w.reshape(nh, 2, w.shape[0] // nh // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    checks = []
    used = set()

    def cmp(hf_name, gname, expect, transform):
        g = tensors[gname]["data"].astype(np.float64)
        used.add(gname)
        d = float(np.max(np.abs(g.reshape(expect.shape) - expect))) if g.size == expect.size else None
        checks.append({"hf": hf_name, "gguf": gname, "hf_shape": list(sd[hf_name].shape) if hf_name in sd else None,
                       "gguf_ne": tensors[gname]["ne"], "ggml_type": tensors[gname]["ggml_type"],
                       "transform": transform, "max_abs_diff": d})

    for name, w in sd.items():
        w = w.double().numpy()
        if arch == "phi3" and ("qkv_proj" in name or "gate_up_proj" in name):
            pass
        base = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if base is None:
            checks.append({"hf": name, "gguf": None, "transform": "dropped by converter"})
            continue
        transform = "identity"
        exp = w
        if arch == "llama3" and name.endswith("q_proj.weight"):
            exp, transform = permute(w, n_head), f"permute(n_head={n_head}) rows: per head [2, hd/2] -> [hd/2, 2]"
        elif arch == "llama3" and name.endswith("k_proj.weight"):
            exp, transform = permute(w, n_kv), f"permute(n_head={n_kv}) rows: per head [2, hd/2] -> [hd/2, 2]"
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            exp, transform = w + 1.0, "+1.0 (Gemma RMSNorm computes x*(1+w))"
        cmp(name, base, exp, transform)
    if cfg.tie_word_embeddings:
        checks.append({"hf": "lm_head.weight (tied, not stored in safetensors)", "gguf": None,
                       "transform": "absent: engine must reuse token_embd.weight as output"})
    for gname in tensors:
        if gname not in used:
            d = tensors[gname]["data"]
            checks.append({"hf": None, "gguf": gname, "gguf_ne": tensors[gname]["ne"],
                           "ggml_type": tensors[gname]["ggml_type"], "transform": "generated by converter",
                           "values": [r6(float(x)) for x in d.reshape(-1)[:64]]})
    tensor_list = {k: {"ggml_type": v["ggml_type"], "ne": v["ne"]} for k, v in tensors.items()}
    return {"gguf_architecture": gg_arch, "metadata": meta, "tensors": tensor_list, "weight_checks": checks}


def llama_cpp_check(gguf_path: Path, ids: list[int], ref_logits, greedy_ids, n_ctx: int = 64) -> dict | None:
    """Optional: run the GGUF through llama.cpp (if its python bindings + lib are available)."""
    lib = os.environ.get("LLAMA_CPP_LIB")
    pyp = os.environ.get("LLAMA_CPP_PY")
    if not lib or not pyp:
        return None
    code = r"""
import json, sys, numpy as np
import llama_cpp
gg, ids, n, n_ctx = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = llama_cpp.Llama(model_path=gg, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1, n_batch=64, type_k=0, type_v=0)
m.eval(ids)
lg = np.array(m.scores[:len(ids)]).tolist()
seq = list(ids); out = []
for _ in range(n):
    t = int(np.argmax(m.scores[len(seq) - 1])); out.append(t); seq.append(t); m.eval([t])
print(json.dumps({"logits": lg, "greedy": out}))
"""
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=lib, PYTHONPATH=pyp)
    r = subprocess.run([sys.executable, "-c", code, str(gguf_path), json.dumps(ids), str(N_GEN), str(n_ctx)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    import numpy as np
    res = json.loads(r.stdout.strip().splitlines()[-1])
    lg = np.array(res["logits"])
    ref = np.array(ref_logits)
    return {"n_ctx": n_ctx, "llama_cpp_logits_max_abs_diff": float(np.max(np.abs(lg - ref))),
            "llama_cpp_argmax_equal_per_position": [bool(a == b) for a, b in zip(lg.argmax(1), ref.argmax(1))],
            "llama_cpp_greedy_ids": res["greedy"],
            "llama_cpp_greedy_equal": res["greedy"] == greedy_ids}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def arch_notes(arch: str, cfg) -> str:
    n = {
        "llama3": "Untied lm_head. rope_type llama3 with original_max_position_embeddings=64 (factor 8, low 1, "
                  "high 4): at head_dim 16 / theta 5e5 inv_freq pair 0 is unchanged (wavelen 6.3 < 16), pair 1 is "
                  "smoothly interpolated (wavelen 32.5 in [16, 64]), pairs 2..7 are divided by 8. "
                  "The GGUF carries these as rope_freqs.weight (per-pair divisors, ggml rope freq_factors).",
        "qwen2": "q/k/v biases (perturbed, non-zero), tied embeddings, rope_theta 1e6, no BOS.",
        "qwen3": "Per-head q_norm/k_norm (RMSNorm over head_dim, applied before RoPE), no qkv bias, tied.",
        "gemma2": "Embeddings scaled by sqrt(hidden)=8. RMSNorm x*(1+w) (GGUF stores 1+w). Layer 0 sliding "
                  "(window 8: query q attends keys k with q-k < 8), layer 1 global. attn softcap 50, final "
                  f"softcap 30, query scale query_pre_attn_scalar**-0.5 = {GEMMA_QUERY_PRE_ATTN_SCALAR}**-0.5 "
                  "(not head_dim**-0.5!). gelu_pytorch_tanh. Four norms per layer. Tied.",
        "gemma3": "6 layers: 0-4 sliding (window 8, rope theta 10000), 5 global (rope theta 1e6). q_norm/k_norm "
                  "(1+w). Embedding scale sqrt(hidden). query_pre_attn_scalar "
                  f"{GEMMA_QUERY_PRE_ATTN_SCALAR} != head_dim 32. No softcapping. Tied.",
        "phi3": "Fused qkv_proj and gate_up_proj. rope longrope: original_max_position_embeddings 32, "
                "max_position_embeddings 256, attention_factor sqrt(1+ln(8)/ln(32)) multiplies cos/sin. HF picks "
                "short_factor when (max position id + 1) <= 32, long_factor otherwise; this reference has "
                f"{N_PROMPT}+{N_GEN} <= 32 tokens so SHORT factors are used throughout. See reference_long.json.",
    }
    return n[arch]


def fix_tokenizer_config(d: Path, tok, tokenizer_class: str, extra: dict) -> None:
    """Put the chat template and added_tokens_decoder into tokenizer_config.json (transformers 5 writes
    chat_template.jinja and keeps added tokens only in tokenizer.json) and use the classic tokenizer_class
    names, so that the directory looks like the real models' and older transformers load it too."""
    p = d / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tok.added_tokens_decoder.items())}
    jinja = d / "chat_template.jinja"
    if jinja.exists():
        cfg["chat_template"] = jinja.read_text()
        jinja.unlink()
    cfg["tokenizer_class"] = tokenizer_class
    for k in ("vocab_file", "is_local", "local_files_only", "name_or_path", "_name_or_path"):
        cfg.pop(k, None)  # machine-specific paths / loader state
    cfg.update(extra)
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_arch(arch: str) -> None:
    import torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    d = HERE / arch
    if d.exists():
        shutil.rmtree(d)
    tgt, drf = d / "target", d / "draft"
    tgt.mkdir(parents=True)

    if arch in ("llama3", "qwen2", "qwen3"):
        tok = build_bpe_tokenizer("llama3" if arch == "llama3" else "qwen2", tgt)
    else:
        tok = build_spm_tokenizer(arch, tgt)
    vocab = len(tok)
    fix_tokenizer_config(tgt, tok, TOKENIZER_CLASS[arch], {"add_bos_token": ADD_BOS[arch], "add_eos_token": False})
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tgt)  # what a user of the saved directory gets
    assert len(tok) == vocab, (len(tok), vocab)

    cfg = make_config(arch, vocab, N_LAYERS[arch], tok)
    model = build_model(arch, cfg, SEEDS[arch])
    model.save_pretrained(tgt, safe_serialization=True)
    # draft: same tokenizer files, 1 layer, different seed
    shutil.copytree(tgt, drf, ignore=shutil.ignore_patterns("model.safetensors", "config.json",
                                                            "generation_config.json"))
    dcfg = make_config(arch, vocab, 1, tok)
    draft = build_model(arch, dcfg, SEEDS[arch] + 1000)
    draft.save_pretrained(drf, safe_serialization=True)

    prompt_text, ids = choose_prompt(tok)
    ref = make_reference(arch, model, tok, prompt_text, ids, cfg, arch_notes(arch, cfg))
    dref = make_reference(arch, draft, tok, prompt_text, ids, dcfg, "1-layer draft model; logits included too.")

    # reload from disk to make sure the saved HF dir reproduces the reference exactly
    import transformers as T
    re = getattr(T, MODEL_CLASS[arch]).from_pretrained(tgt, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        l2 = re(torch.tensor([ids]), use_cache=False).logits[0]
        l1 = model(torch.tensor([ids]), use_cache=False).logits[0]
    assert torch.equal(l1, l2), f"{arch}: reloaded model differs"

    for hf_dir, out in ((tgt, d / "target.gguf"), (drf, d / "draft.gguf")):
        convert(hf_dir, out, PRE[arch])

    check = verify_gguf(arch, tgt, d / "target.gguf", cfg)
    dcheck = verify_gguf(arch, drf, d / "draft.gguf", dcfg)
    maxd = max((c["max_abs_diff"] for c in check["weight_checks"] + dcheck["weight_checks"]
                if c.get("max_abs_diff") is not None), default=None)
    bad = [c for c in check["weight_checks"] + dcheck["weight_checks"]
           if c.get("max_abs_diff") is None and c.get("gguf") and c["transform"] != "generated by converter"]
    assert not bad, bad
    ref["gguf_vs_safetensors_max_abs_diff"] = maxd
    # llama.cpp picks Phi-3 long rope factors iff n_ctx > original ctx (32): use n_ctx 32 there
    n_ctx = 32 if arch == "phi3" else 64
    long_ref = phi3_long_reference(model, tok, ids) if arch == "phi3" else None
    # llama.cpp pads n_ctx to 256 > 32, so for Phi-3 it always uses rope_factors_long: compare it with
    # the HF logits computed with the long factors forced (reference_long.json).
    cmp_logits = long_ref["prompt_logits_long_factors"] if long_ref else ref["logits"]
    cmp_greedy = long_ref["greedy_ids_long_factors"] if long_ref else ref["greedy_ids"]
    lc = llama_cpp_check(d / "target.gguf", ids, cmp_logits, cmp_greedy)
    if lc is not None:
        check["llama_cpp"] = lc
        if arch.startswith("gemma"):
            lc["note"] = ("llama.cpp ignores gemma*.attention.scale and uses 1/sqrt(head_dim); with "
                          "query_pre_attn_scalar == head_dim the same fixture matches llama.cpp (greedy 20/20 equal, "
                          "logits within 2.2e-3 (gemma2) / 1.7e-2 (gemma3), uniformly over positions; ggml's "
                          "CPU GELU uses an fp16 lookup table)")
        if not long_ref:
            check["llama_cpp_draft"] = llama_cpp_check(d / "draft.gguf", ids, dref["logits"], dref["greedy_ids"])

    (d / "reference.json").write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    (d / "draft_reference.json").write_text(json.dumps(dref, separators=(",", ":")) + "\n")
    (d / "gguf_check.json").write_text(json.dumps(check, indent=1, ensure_ascii=False) + "\n")

    if long_ref:
        (d / "reference_long.json").write_text(json.dumps(long_ref, separators=(",", ":")) + "\n")
    print(f"{arch}: vocab={vocab} prompt={ids} greedy={ref['greedy_ids']} gguf_maxdiff={maxd}"
          + (f" llama.cpp={ {k: v for k, v in lc.items() if 'per_position' not in k} }" if lc else ""))


def phi3_long_reference(model, tok, ids):
    """HF behaviour past original_max_position_embeddings for Phi-3 longrope."""
    import torch
    n = 30
    cached, nocache = greedy(model, ids, n)
    seq = ids + nocache
    with torch.no_grad():
        full = model(torch.tensor([seq]), use_cache=False).logits[0]
    import transformers as T
    cfg = T.Phi3Config.from_dict(model.config.to_dict())
    rp = dict(cfg.rope_parameters)
    cfg.rope_parameters = dict(rp, short_factor=list(rp["long_factor"]))
    cfg._attn_implementation = "eager"
    forced = T.Phi3ForCausalLM(cfg).float().eval()
    forced.load_state_dict(model.state_dict())
    with torch.no_grad():
        lf = forced(torch.tensor([ids]), use_cache=False).logits[0]
    lcached, lnocache = greedy(forced, ids, N_GEN)
    assert lcached == lnocache
    return {
        "arch": "phi3",
        "prompt_ids": ids,
        "prompt_logits_long_factors": [[r6(v) for v in row] for row in lf.tolist()],
        "greedy_ids_long_factors": lcached,
        "long_factors_note": ("prompt_logits_long_factors / greedy_ids_long_factors: same weights, HF forward "
                              "with long_factor used for every position (what llama.cpp does whenever its "
                              "context n_ctx > 32, i.e. always, since it pads n_ctx to 256)."),
        "n_generated": n,
        "greedy_ids_cached_generate": cached,
        "greedy_ids_nocache_loop": nocache,
        "full_sequence_ids": seq,
        "full_sequence_len": len(seq),
        "full_sequence_last_logits": [r6(v) for v in full[-1].tolist()],
        "full_sequence_argmax": full.argmax(-1).tolist(),
        "notes": ("HF Phi3 picks the rope factor set per forward call from max(position_ids)+1: <= 32 -> "
                  "short_factor, > 32 -> long_factor for ALL positions of that call. The no-cache loop "
                  "recomputes every position with long factors once the sequence passes 32; generate() with a "
                  "KV cache keeps keys of earlier positions rotated with short factors and only rotates new "
                  "tokens with long factors, so the two can diverge after 32 tokens. full_sequence_* is one "
                  "no-cache forward over prompt+nocache greedy tokens (length > 32 => long factors everywhere). "
                  "llama.cpp instead picks long factors iff the context size n_ctx > n_ctx_orig (32), "
                  "for every position."),
    }


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--convert":
        run_converter_inprocess(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    archs = sys.argv[1:] or ARCHS
    for a in archs:
        if a not in ARCHS:
            raise SystemExit(f"unknown arch {a}; choose from {ARCHS}")
    for a in archs:
        build_arch(a)


if __name__ == "__main__":
    main()
