//! Unit tests on small vocabularies built in memory (the real SmolLM2 vocabulary is exercised
//! by `tests/tokenizer.rs`).

use super::*;
use crate::format::gguf::Value;
use crate::format::gguf_write::GgufWriter;

fn gguf(meta: &[(String, Value)]) -> GgufFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let mut w = GgufWriter::default();
    for (k, v) in meta {
        w.meta(k, v.clone());
    }
    w.write(&path).unwrap();
    GgufFile::open(&path).unwrap()
}

fn tiny_pair() -> (Tokenizer, Tokenizer) {
    let v = crate::synthetic::tiny_vocabulary();
    let from_gguf = Tokenizer::from_gguf(&gguf(&v.gguf_metadata)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, &v.tokenizer_json).unwrap();
    let config = serde_json::json!({"add_bos_token": false});
    let from_json = Tokenizer::from_hf_files(&path, Some(&config)).unwrap();
    (from_gguf, from_json)
}

const CORPUS: &[&str] = &[
    "the cat sat on the mat",
    "Hello, world! 12345 and 3.14159",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand  runs   of    spaces",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "emoji 😀🎉 CJK 漢字かな accents café naïve",
    "don't they're we've I'm it'll he'd",
    "fn main() {\n    println!(\"{}\", 42);\n}\n",
    "",
];

#[test]
fn tiny_vocabulary_gguf_matches_tokenizer_json() {
    let (g, j) = tiny_pair();
    assert_eq!(g.vocab_size(), j.vocab_size());
    for text in CORPUS {
        let a = g.encode(text).unwrap();
        let b = j.encode(text).unwrap();
        assert_eq!(a, b, "{text:?}");
        assert_eq!(g.decode(&a).unwrap(), *text);
        assert_eq!(j.decode(&b).unwrap(), *text);
    }
}

#[test]
fn tiny_vocabulary_specials_and_flags() {
    let (g, j) = tiny_pair();
    for t in [&g, &j] {
        assert!(!t.add_bos());
        let ids = t.encode("<|im_start|>user<|im_end|>").unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert!(t.is_special(0) && t.is_special(1) && t.is_special(2));
        assert!(!t.is_special(3) && !t.is_special(100));
        assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(t.id_to_token(1).as_deref(), Some("<|im_start|>"));
        // Digits are split one by one (smollm pre-tokenizer).
        let digits = t.encode("2024").unwrap();
        assert_eq!(digits.len(), 4);
    }
}

#[test]
fn unknown_pre_tokenizer_is_refused_by_name() {
    let mut meta = crate::synthetic::tiny_vocabulary().gguf_metadata;
    for (k, v) in meta.iter_mut() {
        if k == "tokenizer.ggml.pre" {
            *v = Value::String("martian-7b".into());
        }
    }
    let err = Tokenizer::from_gguf(&gguf(&meta)).err().unwrap();
    assert!(matches!(err, Error::Tokenizer(_)));
    assert!(err.to_string().contains("martian-7b"), "{err}");
}

#[test]
fn known_pre_tokenizers_compile() {
    for pre in [
        "default",
        "smollm",
        "gpt-2",
        "gpt2",
        "llama3",
        "llama-bpe",
        "qwen2",
        "starcoder",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "tekken",
        "bloom",
        "viking",
    ] {
        let mut meta = crate::synthetic::tiny_vocabulary().gguf_metadata;
        for (k, v) in meta.iter_mut() {
            if k == "tokenizer.ggml.pre" {
                *v = Value::String(pre.into());
            }
        }
        let t = Tokenizer::from_gguf(&gguf(&meta)).unwrap_or_else(|e| panic!("{pre}: {e}"));
        for text in CORPUS {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), *text, "{pre}");
        }
    }
}

#[test]
fn llama3_splits_numbers_in_threes() {
    let mut meta = crate::synthetic::tiny_vocabulary().gguf_metadata;
    for (k, v) in meta.iter_mut() {
        if k == "tokenizer.ggml.pre" {
            *v = Value::String("llama-bpe".into());
        }
    }
    meta.retain(|(k, _)| k != "tokenizer.ggml.add_bos_token");
    let t = Tokenizer::from_gguf(&gguf(&meta)).unwrap();
    // No merges between digits in the tiny vocabulary, so each digit is a token either way;
    // what matters is that llama3's default add_bos applies when the key is missing.
    assert!(t.add_bos());
    assert_eq!(t.encode("1234567").unwrap().len(), 7);
}

/// A tiny SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, 256 byte tokens, single
/// characters, then merged pieces with decreasing scores.
fn spm_meta(add_space_prefix: Option<bool>) -> Vec<(String, Value)> {
    let mut pieces: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    for b in 0..=255u8 {
        pieces.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    for c in ["▁", "H", "e", "l", "o", "w", "r", "d", "a", "b", "c", "!"] {
        pieces.push((c.into(), -100.0, 1));
    }
    let merged = [
        "ll", "▁w", "or", "▁wor", "ld", "▁world", "▁H", "▁He", "ab", "abc",
    ];
    for (i, m) in merged.iter().enumerate() {
        pieces.push((m.to_string(), -1.0 - i as f32, 1));
    }
    pieces.push(("<|user|>".into(), 0.0, 4));
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(pieces.iter().map(|p| Value::String(p.0.clone())).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(pieces.iter().map(|p| Value::F32(p.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(pieces.iter().map(|p| Value::I32(p.2)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
    ];
    if let Some(p) = add_space_prefix {
        meta.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(p)));
    }
    meta
}

fn pieces(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect()
}

#[test]
fn sentencepiece_vocabulary_merges_by_score() {
    let t = Tokenizer::from_gguf(&gguf(&spm_meta(None))).unwrap();
    assert!(t.add_bos(), "llama vocabularies add BOS by default");
    assert!(t.is_special(1) && t.is_special(2) && t.is_special(0));
    let ids = t.encode("Hello world").unwrap();
    assert_eq!(pieces(&t, &ids), ["▁He", "ll", "o", "▁world"]);
    assert_eq!(t.decode(&ids).unwrap(), "Hello world");
    // "abc" beats "ab"+"c" only through the merge order ab → abc.
    let ids = t.encode("abc").unwrap();
    assert_eq!(pieces(&t, &ids), ["▁", "abc"]);
}

#[test]
fn sentencepiece_byte_fallback_and_specials() {
    let t = Tokenizer::from_gguf(&gguf(&spm_meta(None))).unwrap();
    let ids = t.encode("Hé 😀").unwrap();
    assert_eq!(
        pieces(&t, &ids),
        ["▁H", "<0xC3>", "<0xA9>", "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    );
    assert_eq!(t.decode(&ids).unwrap(), "Hé 😀");
    // Control and user-defined tokens are matched in the text; as llama.cpp does, the text
    // after one gets the space prefix again.
    let ids = t.encode("<s>Hello<|user|>world</s>").unwrap();
    assert_eq!(
        pieces(&t, &ids),
        ["<s>", "▁He", "ll", "o", "<|user|>", "▁world", "</s>"]
    );
    assert_eq!(t.decode(&ids).unwrap(), "<s> Hello<|user|> world</s>");
}

#[test]
fn sentencepiece_without_space_prefix() {
    let t = Tokenizer::from_gguf(&gguf(&spm_meta(Some(false)))).unwrap();
    let ids = t.encode("Hello world").unwrap();
    assert_eq!(pieces(&t, &ids), ["H", "e", "ll", "o", "▁world"]);
    assert_eq!(t.decode(&ids).unwrap(), "Hello world");
}

fn stream_all(t: &Tokenizer, ids: &[u32]) -> Vec<Option<String>> {
    let mut s = t.stream();
    let mut out: Vec<Option<String>> = ids.iter().map(|&i| s.push(i).unwrap()).collect();
    out.push(s.finish().unwrap());
    out
}

#[test]
fn stream_holds_back_split_emoji_byte_level() {
    let (t, _) = tiny_pair();
    let ids = t.encode("hi 😀!").unwrap();
    let out = stream_all(&t, &ids);
    let text: String = out.iter().flatten().cloned().collect();
    assert_eq!(text, "hi 😀!");
    assert_eq!(out.iter().flatten().filter(|s| s.contains('😀')).count(), 1);
    assert!(out.iter().flatten().all(|s| !s.contains('\u{fffd}')));
}

#[test]
fn stream_holds_back_split_emoji_sentencepiece() {
    let t = Tokenizer::from_gguf(&gguf(&spm_meta(None))).unwrap();
    let ids = t.encode("Hello 😀 world").unwrap();
    let out = stream_all(&t, &ids);
    let emitted: Vec<&String> = out.iter().flatten().collect();
    assert_eq!(
        emitted.iter().map(|s| s.as_str()).collect::<String>(),
        t.decode(&ids).unwrap()
    );
    assert_eq!(emitted.iter().filter(|s| s.contains('😀')).count(), 1);
    assert!(emitted.iter().all(|s| !s.contains('\u{fffd}')));
    // The leading space of the second word is kept (only the text start is stripped).
    assert!(emitted.iter().any(|s| s.as_str() == " world"));
}

#[test]
fn stream_flushes_incomplete_bytes_on_finish_and_skips_specials() {
    let (t, _) = tiny_pair();
    // The first byte of a 4-byte character alone: held, then flushed as U+FFFD.
    let f0 = t
        .token_to_id(&crate::synthetic::byte_to_char(0xF0).to_string())
        .unwrap();
    let mut s = t.stream();
    assert_eq!(s.push(f0).unwrap(), None);
    assert_eq!(s.finish().unwrap().as_deref(), Some("\u{fffd}"));
    assert_eq!(s.finish().unwrap(), None);
    let mut s = t.stream_skip_special();
    let ids = t.encode("hi<|im_end|>").unwrap();
    let text: String = ids.iter().filter_map(|&i| s.push(i).unwrap()).collect();
    assert_eq!(text, "hi");
}

#[test]
fn stream_is_windowed() {
    let (t, _) = tiny_pair();
    let text = "the quick brown fox jumps over the lazy dog 😀 ".repeat(40);
    let ids = t.encode(&text).unwrap();
    let mut s = t.stream();
    let mut out = String::new();
    for &i in &ids {
        if let Some(p) = s.push(i).unwrap() {
            out.push_str(&p);
        }
        assert!(s.window_len() < 100, "the stream keeps a bounded window");
    }
    if let Some(p) = s.finish().unwrap() {
        out.push_str(&p);
    }
    assert_eq!(out, text);
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn chat_template_renders_chatml() {
    let t = ChatTemplate::new(CHATML, None, None).unwrap();
    let out = t.render(&[ChatMessage::new("user", "Hi!")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = t.render(&[ChatMessage::new("user", "Hi!")], false).unwrap();
    assert_eq!(out, "<|im_start|>user\nHi!<|im_end|>\n");
    assert_eq!(
        t.summary(),
        format!("ChatML (jinja, {} chars)", CHATML.len())
    );
}

#[test]
fn chat_template_python_methods_bos_and_blocks() {
    let src = "{{ bos_token }}{% for m in messages %}\n{% if m.role == 'system' %}[{{ m.content.strip() | upper }}]{% else %}{{ m.role.capitalize() }}: {{ m['content'].strip() }}{{ eos_token }}{% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())).unwrap();
    let out = t
        .render(
            &[
                ChatMessage::new("system", "  be brief "),
                ChatMessage::new("user", " hello "),
            ],
            true,
        )
        .unwrap();
    // trim_blocks/lstrip_blocks as transformers renders templates.
    assert_eq!(out, "<s>[BE BRIEF]User: hello</s>");
    assert!(t.summary().starts_with("custom (jinja"));
    let date = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None)
        .unwrap()
        .render(&[], false)
        .unwrap();
    assert_eq!(date.len(), 4);
}

#[test]
fn chat_template_errors() {
    let broken = ChatTemplate::new("{% for m in messages %}{{ m.content }", None, None);
    assert!(matches!(broken, Err(Error::Template(_))));
    let raising = ChatTemplate::new(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
        None,
        None,
    )
    .unwrap();
    let err = raising
        .render(&[ChatMessage::new("assistant", "x")], true)
        .unwrap_err();
    assert!(matches!(err, Error::Template(_)));
    assert!(err.to_string().contains("roles must alternate"), "{err}");
    let bad_call = ChatTemplate::new("{{ messages | nosuchfilter }}", None, None);
    let failed = bad_call.and_then(|t| t.render(&[], false));
    assert!(matches!(failed, Err(Error::Template(_))));
}

/// A template is code from the model file: endless work, deep recursion and huge output end
/// in a clear error, quickly and with bounded memory.
#[test]
fn hostile_chat_templates_fail_cleanly() {
    let long = ChatMessage::new("user", "x".repeat(1000));
    let hostile = [
        // 10^10 iterations
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        // unbounded recursion
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        // one huge string, and huge output from a loop over a message
        "{{ 'x' * 100000000 }}",
        "{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}",
        "{% set s = namespace(t='ab') %}{% for i in range(40) %}{% set s.t = s.t ~ s.t %}{% endfor %}{{ s.t }}",
    ];
    for src in hostile {
        let t = ChatTemplate::new(src, None, None).unwrap();
        let e = t.render(std::slice::from_ref(&long), true).unwrap_err();
        assert!(matches!(e, Error::Template(_)), "{src}: {e}");
    }
    // a lazily repeated list, printed: minijinja charges no fuel for it until written (found
    // by the fuzzer: it wrote 500 MB in 20 s); the size check refuses it first
    let t = ChatTemplate::new("{{ ['x'] * 99999999 }}", None, None).unwrap();
    let e = t.render(&[], true).unwrap_err();
    assert!(e.to_string().contains("grew past"), "{e}");
    // output charged as written, within the fuel but over the 2 MB cap
    let t = ChatTemplate::new(
        "{% for i in range(99999) %}{{ 'x' * 30 }}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let e = t.render(&[], true).unwrap_err();
    assert!(e.to_string().contains("would exceed 2 MB"), "{e}");
}

#[test]
fn chat_template_from_config_value() {
    let list = serde_json::json!([
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "DEFAULT {{ messages[0].content }}"},
    ]);
    let t = ChatTemplate::from_config_value(&list, None, None).unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "x")], false).unwrap(),
        "DEFAULT x"
    );
    let first = serde_json::json!([{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]);
    let t = ChatTemplate::from_config_value(&first, None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "A");
    let s = serde_json::json!("S{{ bos_token }}");
    let t = ChatTemplate::from_config_value(&s, Some("<b>".into()), None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "S<b>");
    let bad = ChatTemplate::from_config_value(&serde_json::json!(3), None, None);
    assert!(matches!(bad, Err(Error::Template(_))));
}

#[test]
fn hf_add_bos_from_post_processor() {
    let pp = serde_json::json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]});
    assert!(post_processor_adds_bos(Some(&pp)));
    let seq = serde_json::json!({"type": "Sequence", "processors": [{"type": "ByteLevel"}, pp]});
    assert!(post_processor_adds_bos(Some(&seq)));
    assert!(!post_processor_adds_bos(Some(
        &serde_json::json!({"type": "ByteLevel"})
    )));
    assert!(!post_processor_adds_bos(None));
}
