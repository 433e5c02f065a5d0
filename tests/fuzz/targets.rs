//! The fuzz targets: each takes one input's bytes to the parser (and what consumes its result)
//! the way a model file or a host app would hand them over. Errors are the expected outcome;
//! only a panic, a hang or an over-allocation is a failure.

use crate::mutate::Shape;
use llmcad::ffi::*;
use llmcad::format::gguf::GgufFile;
use llmcad::model::{LoadOptions, Model, ModelConfig};
use llmcad::quant::DType;
use llmcad::synthetic::{write_tiny, TinyModel, TinySpec};
use llmcad::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use memmap2::{Mmap, MmapMut};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub struct Target {
    pub name: &'static str,
    /// The directory of its committed corpus under tests/fuzz/corpus/ (targets reading the
    /// same format share one).
    pub corpus: &'static str,
    pub shape: Shape,
    /// Inputs made at start (tiny synthetic models), besides the committed corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// The bytes one input may hold allocated at once, given its length: a fixed allowance
    /// plus a multiple of its size (what a parser may need per byte it reads).
    pub cap: fn(usize) -> usize,
    pub run: fn(&[u8]),
}

const MB: usize = 1 << 20;

pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "gguf",
            corpus: "gguf",
            shape: Shape::Gguf,
            seeds: || tiny_ggufs().iter().map(|p| read(p)).collect(),
            cap: |len| 64 * MB + 64 * len,
            run: load_gguf,
        },
        Target {
            name: "gguf_vocab",
            corpus: "gguf",
            shape: Shape::Gguf,
            seeds: || tiny_ggufs().iter().map(|p| read(p)).collect(),
            cap: |len| 64 * MB + 64 * len,
            run: gguf_vocab,
        },
        Target {
            name: "safetensors",
            corpus: "safetensors",
            shape: Shape::Binary,
            seeds: small_safetensors,
            cap: |len| 16 * MB + 16 * len,
            run: safetensors,
        },
        Target {
            name: "hf_json",
            corpus: "hf_json",
            shape: Shape::Text(JSON_WORDS),
            seeds: || {
                ["config.json", "tokenizer.json", "tokenizer_config.json"]
                    .iter()
                    .map(|f| tiny().hf_dir.join(f))
                    .filter(|p| p.exists())
                    .map(|p| read(&p))
                    .collect()
            },
            cap: |len| 64 * MB + 128 * len,
            run: hf_json,
        },
        Target {
            name: "chat_template",
            corpus: "chat_template",
            shape: Shape::Text(JINJA_WORDS),
            seeds: || {
                let t = llmcad::synthetic::tiny_vocabulary().chat_template.unwrap();
                vec![format!("{t}\0system\x01Be brief.\x01user\x01Hi {{{{ x }}}}").into_bytes()]
            },
            // the template's fuel bounds what it builds to ~64 MB (tokenizer/chat_template.rs)
            cap: |len| 256 * MB + 64 * len,
            run: chat_template,
        },
        Target {
            name: "ffi",
            corpus: "ffi",
            shape: Shape::Binary,
            seeds: || {
                vec![
                    b"\x01\x03\0\0\0\0\0\0\0Hello there".to_vec(),
                    b"\x02\x10\0\0\0\0\0\x80\x3f\x28\0\0\0<|im_start|>user\nhi".to_vec(),
                    b"\x00\x00\x01\x00\x00\x00\x02\0\0\0\x04\0\0\0\x08q8_0\x0064MiB\0".to_vec(),
                ]
            },
            cap: |len| 128 * MB + 64 * len,
            run: ffi,
        },
    ]
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The tiny model, F32 GGUF and Hugging Face directory.
fn tiny() -> &'static TinyModel {
    static M: OnceLock<TinyModel> = OnceLock::new();
    M.get_or_init(|| {
        write_tiny(
            scratch(),
            "tiny",
            &TinySpec::default(),
            DType::F32,
            DType::F32,
        )
        .unwrap()
    })
}

/// The tiny model as GGUF in a float and a block type (a second model, Qwen-shaped).
fn tiny_ggufs() -> &'static [PathBuf] {
    static P: OnceLock<Vec<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        let qwen = TinySpec {
            arch: llmcad::model::Arch::Qwen2,
            n_layers: 1,
            context: 64,
            ..TinySpec::default()
        };
        let q = write_tiny(scratch(), "tiny-q4k", &qwen, DType::Q4_K, DType::F16).unwrap();
        vec![tiny().gguf.clone(), q.gguf]
    })
}

/// The bytes as a read-only mapping, as the readers get a file.
fn mapped(b: &[u8]) -> Arc<Mmap> {
    let mut m = MmapMut::map_anon(b.len().max(1)).expect("anonymous mapping");
    m[..b.len()].copy_from_slice(b);
    let m = m.make_read_only().expect("read-only mapping");
    Arc::new(m)
}

/// A whole model load (header, metadata, tensor table, config, vocabulary, chat template,
/// weights) from the bytes as a file; when it loads, a short use of its vocabulary.
fn load_gguf(b: &[u8]) {
    // the reader itself first, on exactly these bytes (the anonymous mapping of a file's
    // length would round up to a page)
    if GgufFile::parse(mapped(b)).is_err() {
        return;
    }
    let path = scratch().join("input.gguf");
    std::fs::write(&path, b).expect("writing the input");
    if let Ok(m) = Model::load(&path, &LoadOptions::default()) {
        if let Ok(ids) = m.encode_prompt("Hello, world 123") {
            let _ = m.tokenizer.decode(&ids);
        }
    }
}

/// The GGUF vocabulary → tokenizer construction, and the model's chat template.
fn gguf_vocab(b: &[u8]) {
    let Ok(g) = GgufFile::parse(mapped(b)) else {
        return;
    };
    let _ = ModelConfig::from_gguf(&g).map(|c| c.validate());
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        if let Ok(ids) = t.encode("Hello <|im_start|> world 123 ü") {
            let _ = t.decode(&ids);
            let mut s = t.stream();
            for id in ids {
                let _ = s.push(id);
            }
            let _ = s.finish();
        }
        let _ = t.decode(&[0, 1, u32::MAX, t.vocab_size() as u32]);
    }
    if let Ok(Some(src)) = g.get_str("tokenizer.chat_template") {
        if let Ok(t) = ChatTemplate::new(src, Some("<s>".into()), None) {
            let _ = t.render(&[ChatMessage::new("user", "hi")], true);
        }
    }
}

/// A few small tensors of every float type, and one llmcad refuses (the tiny model's file is
/// mostly weights, which the parser does not read).
fn small_safetensors() -> Vec<Vec<u8>> {
    use safetensors::tensor::{serialize, Dtype, TensorView};
    let data = [0u8; 96];
    let views = [
        ("a.weight", Dtype::F32, vec![2, 3], &data[..24]),
        ("b.weight", Dtype::F16, vec![4], &data[..8]),
        ("c.bias", Dtype::BF16, vec![1, 2, 2], &data[..8]),
        ("d", Dtype::I8, vec![16], &data[..16]),
    ];
    let tensors: Vec<(&str, TensorView)> = views
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    vec![
        serialize(tensors[..3].to_vec(), meta.clone()).unwrap(),
        serialize(tensors, meta).unwrap(),
    ]
}

fn safetensors(b: &[u8]) {
    if let Ok(tensors) = llmcad::format::safetensors::parse(mapped(b), "input") {
        for t in tensors {
            // every tensor's bytes are within the file
            let _ = (t.data.first(), t.data.last(), t.numel());
        }
    }
}

/// config.json, tokenizer.json or tokenizer_config.json: each reader tries the bytes.
fn hf_json(b: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(b) else {
        return;
    };
    let _ = ModelConfig::from_hf(&json).map(|c| c.validate());
    if let Ok(t) = Tokenizer::from_hf_bytes(b, Some(&json)) {
        if let Ok(ids) = t.encode("Hello <|im_start|> world 123 ü") {
            let _ = t.decode(&ids);
        }
    }
    if let Some(v) = json.get("chat_template") {
        if let Ok(t) = ChatTemplate::from_config_value(v, None, None) {
            let _ = t.render(&[ChatMessage::new("user", "hi")], true);
        }
    }
}

/// The template, then NUL, then the messages as role \x01 content \x01 role …
fn chat_template(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let (src, rest) = text.split_once('\0').unwrap_or((&text, ""));
    let parts: Vec<&str> = rest.split('\x01').collect();
    let messages: Vec<ChatMessage> = parts
        .chunks(2)
        .map(|c| ChatMessage::new(c[0], *c.get(1).unwrap_or(&"")))
        .collect();
    match ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())) {
        Ok(t) => {
            let _ = t.render(&messages, true);
            let _ = t.render(&messages, false);
        }
        // the size checks llmcad adds must keep every template that parses parseable
        Err(e) => assert!(
            !e.to_string().contains("could not add its size checks"),
            "{e}"
        ),
    }
}

/// Fields read from the front of an input, zeros once it runs out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        let v = self.0.first().copied().unwrap_or(0);
        self.0 = self.0.get(1..).unwrap_or(&[]);
        v
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// A C string: bytes up to the next NUL (the rest when none).
    fn c_string(&mut self) -> CString {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        let s = CString::new(&self.0[..end]).unwrap();
        self.0 = self.0.get(end + 1..).unwrap_or(&[]);
        s
    }
}

/// One engine shared by the generate inputs (loading one per input would be all the time).
fn shared_engine() -> *const LlmcadEngine {
    static E: OnceLock<usize> = OnceLock::new();
    *E.get_or_init(|| {
        let path = CString::new(tiny().gguf.to_str().unwrap()).unwrap();
        let mut o = options();
        o.target = path.as_ptr();
        // SAFETY: the options' strings outlive the call
        let e = unsafe { llmcad_engine_new(&o) };
        assert!(!e.is_null(), "the tiny model loads");
        e as usize
    }) as *const LlmcadEngine
}

fn options() -> LlmcadOptions {
    let mut o = std::mem::MaybeUninit::uninit();
    // SAFETY: options_init fills the whole struct
    unsafe {
        assert_eq!(llmcad_options_init(o.as_mut_ptr()), LlmcadStatus::Ok);
        let mut o = o.assume_init();
        o.device = LlmcadDevice::Cpu as i32;
        o.threads = 1;
        o.pass_times_dir = c"".as_ptr();
        o
    }
}

unsafe extern "C" fn stop_after(
    user: *mut c_void,
    _id: u32,
    piece: *const c_char,
    len: usize,
) -> c_int {
    // read the whole piece, as a host would
    let bytes = std::slice::from_raw_parts(piece.cast::<u8>(), len + 1);
    assert_eq!(bytes[len], 0, "pieces are NUL-terminated");
    let left = &mut *(user as *mut u32);
    *left = left.saturating_sub(1);
    (*left == 0) as c_int
}

/// The C ABI: byte 0 picks the call, the following bytes fill its arguments (numbers taken
/// as they come, strings up to a NUL). Token counts are kept small unless they are beyond any
/// context, so that an input takes milliseconds.
fn ffi(b: &[u8]) {
    let mut c = Cursor(b);
    match c.u8() % 8 {
        0 => engine_new(&mut c),
        1 => unsafe {
            assert_eq!(llmcad_reset(shared_engine()), LlmcadStatus::Ok);
        },
        2 => unsafe {
            // NULLs everywhere they may be
            llmcad_generate(
                std::ptr::null(),
                c"x".as_ptr(),
                0,
                std::ptr::null(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            llmcad_generate(
                shared_engine(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            llmcad_cancel(std::ptr::null());
            llmcad_reset(std::ptr::null());
            llmcad_engine_free(std::ptr::null_mut());
            llmcad_options_init(std::ptr::null_mut());
            llmcad_generate_params_init(std::ptr::null_mut());
            llmcad_engine_new(std::ptr::null());
        },
        _ => generate(&mut c),
    }
    // the last error is always a string
    let _ = unsafe { std::ffi::CStr::from_ptr(llmcad_last_error()) }.to_bytes();
}

fn generate(c: &mut Cursor) {
    let chat = c.u8() as c_int & 1;
    let mut p = std::mem::MaybeUninit::uninit();
    let mut p = unsafe {
        llmcad_generate_params_init(p.as_mut_ptr());
        p.assume_init()
    };
    let n = c.u32();
    p.max_tokens = if n > 100_000 { n } else { n % 4 };
    p.temperature = c.f32();
    p.top_k = c.u32();
    p.top_p = c.f32();
    p.min_p = c.f32();
    p.repeat_penalty = c.f32();
    p.repeat_last_n = c.u32();
    p.seed = c.u32() as u64;
    p.ignore_eos = c.u8() as i32 & 1;
    p.reset = c.u8() as i32 & 1;
    let mut stop_in = (c.u8() % 4) as u32;
    let prompt = c.c_string();
    let mut stats = LlmcadStats::default();
    let e = shared_engine();
    let status = unsafe {
        llmcad_generate(
            e,
            prompt.as_ptr(),
            chat,
            &p,
            if stop_in > 0 { Some(stop_after) } else { None },
            (&mut stop_in as *mut u32).cast(),
            &mut stats,
        )
    };
    if status == LlmcadStatus::ErrContextOverflow {
        unsafe { llmcad_reset(e) };
    }
}

fn engine_new(c: &mut Cursor) {
    let paths = [
        tiny().gguf.clone(),
        tiny().hf_dir.clone(),
        tiny_ggufs()[1].clone(),
        PathBuf::from("/dev/null"),
        PathBuf::from("/nonexistent/model.gguf"),
        scratch().to_path_buf(),
    ];
    let pick = |c: &mut Cursor| -> Option<CString> {
        match c.u8() as usize % (paths.len() + 2) {
            i if i < paths.len() => Some(CString::new(paths[i].to_str().unwrap()).unwrap()),
            i if i == paths.len() => Some(c.c_string()),
            _ => None,
        }
    };
    let target = pick(c);
    let drafter = pick(c);
    let mut o = options();
    o.target = target.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    o.drafter = drafter.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // no GPU here: any value but the GPU ones
    o.device = match c.u32() as i32 {
        1 | 2 => 0,
        d => d,
    };
    o.threads = c.u8() as u32 % 3;
    o.draft_threads = c.u8() as u32 % 3;
    o.context = c.u32();
    o.f32_activations = c.u8() as i32 & 1;
    o.spec = c.u8() as i32 % 4;
    o.draft_max = c.u32();
    o.tree_nodes = c.u32();
    o.tree_depth = c.u32();
    o.branch_threshold = c.f32();
    o.fallback_threshold = c.f32();
    let quantize = (c.u8() & 1 == 1).then(|| c.c_string());
    let budget = (c.u8() & 1 == 1).then(|| c.c_string());
    o.quantize = quantize.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    o.memory_budget = budget.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: the options' strings outlive the calls
    unsafe {
        let e = llmcad_engine_new(&o);
        if !e.is_null() {
            let mut p = std::mem::MaybeUninit::uninit();
            llmcad_generate_params_init(p.as_mut_ptr());
            let mut p = p.assume_init();
            p.max_tokens = 2;
            llmcad_generate(
                e,
                c"Hi".as_ptr(),
                0,
                &p,
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            llmcad_engine_free(e);
        }
    }
}

const JSON_WORDS: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "1e308",
    "18446744073709551616",
    "4294967296",
    "\"\"",
    "[]",
    "{}",
    "[[[[[[[[",
    "]]]]",
    "\"hidden_size\":",
    "\"num_attention_heads\":",
    "\"num_key_value_heads\":",
    "\"head_dim\":",
    "\"vocab_size\":",
    "\"rope_scaling\":",
    "{\"type\":\"linear\",\"factor\":0}",
    "{\"rope_type\":\"llama3\"}",
    "\"model\":",
    "{\"type\":\"Unigram\"}",
    "{\"type\":\"WordPiece\"}",
    "\"merges\":",
    "\"vocab\":",
    "\"added_tokens\":",
    "\"pre_tokenizer\":",
    "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"}}",
    "\"normalizer\":",
    "\"post_processor\":",
    "\"chat_template\":",
    "\"architectures\":",
    "[\"LlamaForCausalLM\"]",
    "\"\\ud800\"",
    ",",
    ":",
];

const JINJA_WORDS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{% endif %}",
    "{% else %}",
    "{{ m['content'] }}",
    "{{ message.content }}",
    "{% set x = x ~ x %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}",
    "{{ f(1) }}",
    "range(999999999)",
    "{{ 'x' * 99999999 }}",
    "|join",
    "|list",
    "|tojson",
    "|reverse",
    "|length",
    "loop.index",
    "raise_exception('no')",
    "strftime_now('%Y')",
    ".strip()",
    ".split(' ')",
    "{% break %}",
    "{% continue %}",
    "namespace(a=1)",
    "{% set ns.a = ns.a ~ ns.a %}",
    "bos_token",
    "eos_token",
    "{% include 'chat' %}",
    "{% extends 'chat' %}",
    "{% call f(1) %}x{% endcall %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "(",
    ")",
    "[",
    "]",
    "\0",
    "\x01",
    "'",
    "\"",
];
