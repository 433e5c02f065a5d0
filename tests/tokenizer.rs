//! Tokenizer checks against the real SmolLM2-135M-Instruct vocabulary: the tokenizer built
//! from the GGUF's embedded vocabulary must give exactly the ids of the reference
//! `tokenizer.json`, reproduce the reference prompts, and decode faithfully.

mod common;

use llmcad::format::gguf::GgufFile;
use llmcad::format::gguf_write::GgufWriter;
use llmcad::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use llmcad::Error;
use std::sync::OnceLock;

/// (from the GGUF, from tokenizer.json, the GGUF's chat template), or None when the real model
/// is missing and LLMCAD_SKIP_REAL_MODEL=1.
fn smollm2() -> Option<&'static (Tokenizer, Tokenizer, ChatTemplate)> {
    static T: OnceLock<Option<(Tokenizer, Tokenizer, ChatTemplate)>> = OnceLock::new();
    T.get_or_init(|| {
        let path = common::real_model()?;
        let g = GgufFile::open(&path).unwrap();
        let from_gguf = Tokenizer::from_gguf(&g).unwrap();
        let text = |k: &str| {
            g.get_u64(k)
                .unwrap()
                .and_then(|id| from_gguf.id_to_token(id as u32))
        };
        let template = ChatTemplate::new(
            g.get_str("tokenizer.chat_template").unwrap().unwrap(),
            text("tokenizer.ggml.bos_token_id"),
            text("tokenizer.ggml.eos_token_id"),
        )
        .unwrap();
        let dir = common::shared().join("models/smollm2-135m-instruct");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let from_json =
            Tokenizer::from_hf_files(&dir.join("tokenizer.json"), Some(&config)).unwrap();
        Some((from_gguf, from_json, template))
    })
    .as_ref()
}

const CORPUS: &[&str] = &[
    "Hello world",
    "The capital of France is Paris.",
    "What is 17 times 23? 17 * 23 = 391; 1234567890123 and 3.14159265358979 or 1,000,000.",
    "Phone: +1 (555) 010-9999, year 2024, v1.2.3, 0x1F600, 1e-9",
    "emoji: 😀😃🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 and ❤️",
    "CJK: 漢字とひらがなとカタカナ、中文：你好，世界！한국어 텍스트",
    "accents: café naïve résumé Zürich Ångström façade São Paulo ñandú",
    "Cyrillic Привет мир, Greek Καλημέρα, Arabic مرحبا, Hindi नमस्ते",
    "def f(x):\n    if x > 0:\n        return x * 2\n    return -x\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "    leading spaces and trailing spaces    ",
    "tabs\t\tand\u{a0}nbsp and\r\nCRLF\n\n\n\nmany newlines \n \n",
    "runs of          spaces   and \t mixed \n\t whitespace",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|endoftext|>tokens<|im_start|>",
    "<repo_name>llmcad<file_sep>src/main.rs<gh_stars>100",
    "don't won't can't I'm you're they've we'll she'd it's DON'T I'M",
    "'s 't 're 've 'm 'll 'd",
    "\"quoted\" 'single' `backtick` (paren) [bracket] {brace} <angle>",
    "punctuation!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ||| ~~~",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "a",
    " ",
    "\n",
    "",
    "ÿ\u{0}\u{1}\u{7f} control chars \u{200b}zero width\u{feff}",
];

/// Pseudo-random texts mixing the fragments that stress a BPE pre-tokenizer.
fn random_texts(n: usize) -> Vec<String> {
    const FRAGMENTS: &[&str] = &[
        "the",
        " the",
        "The",
        " quick",
        "brown",
        " fox",
        "s",
        "'s",
        "'ll",
        "n't",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "0",
        "7",
        "42",
        "123",
        "2024",
        "3.14",
        "-",
        "_",
        ".",
        ",",
        "!",
        "?",
        ":",
        ";",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "`",
        "/",
        "\\",
        "<",
        ">",
        "=",
        "==",
        "=>",
        "->",
        "+",
        "*",
        "#",
        "@",
        "$",
        "%",
        "&",
        "|",
        "~",
        "é",
        "ü",
        "ñ",
        "ç",
        "ø",
        "ß",
        "日本",
        "語",
        "中文",
        "한",
        "😀",
        "🎉",
        "👍🏽",
        "∑",
        "π",
        "→",
        "—",
        "…",
        "\u{a0}",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "fn",
        "def",
        "return",
        "    ",
        "Hello",
        "World",
        "SmolLM",
        "token",
        "izer",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = 1 + next() % 24;
            (0..len)
                .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
                .collect()
        })
        .collect()
}

#[test]
fn gguf_vocabulary_matches_reference_tokenizer_json() {
    let Some((gguf, json, _)) = smollm2() else {
        return;
    };
    assert_eq!(gguf.vocab_size(), 49152);
    assert_eq!(gguf.vocab_size(), json.vocab_size());
    assert!(!gguf.add_bos() && !json.add_bos());
    let texts: Vec<String> = CORPUS
        .iter()
        .map(|s| s.to_string())
        .chain(random_texts(300))
        .collect();
    for text in &texts {
        let a = gguf.encode(text).unwrap();
        let b = json.encode(text).unwrap();
        assert_eq!(a, b, "ids differ for {text:?}");
        assert_eq!(&gguf.decode(&a).unwrap(), text, "round trip of {text:?}");
    }
    // The long corpus as one text too.
    let all = texts.concat();
    assert_eq!(gguf.encode(&all).unwrap(), json.encode(&all).unwrap());
}

#[test]
fn special_tokens_are_single_ids() {
    let Some((t, _, _)) = smollm2() else {
        return;
    };
    let ids = t
        .encode("<|im_start|>user\nHi<|im_end|>\n<|endoftext|>")
        .unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2) && ids.contains(&0));
    for id in 0..17 {
        assert!(t.is_special(id), "{id}");
    }
    assert!(!t.is_special(17) && !t.is_special(504));
    // Digits one by one, as the smollm pre-tokenizer does.
    assert_eq!(t.encode("12345").unwrap().len(), 5);
}

#[test]
fn reference_prompts_are_reproduced() {
    let Some((t, _, template)) = smollm2() else {
        return;
    };
    assert!(template.summary().starts_with("ChatML (jinja, "));
    let refs = common::references(common::SMOLLM2_REFERENCES);
    assert!(refs.iter().any(|r| r.kind == "chat"));
    for r in &refs {
        if r.kind == "chat" {
            let text = template
                .render(&[ChatMessage::new("user", r.prompt.clone())], true)
                .unwrap();
            assert_eq!(
                text, r.prompt_text,
                "rendered chat prompt for {:?}",
                r.prompt
            );
        } else {
            assert_eq!(r.prompt_text, r.prompt);
        }
        let ids = t.encode(&r.prompt_text).unwrap();
        assert_eq!(ids, r.prompt_ids, "prompt ids for {:?}", r.prompt);
        assert_eq!(t.decode(&ids).unwrap(), r.prompt_text);
    }
}

#[test]
fn reference_outputs_decode_and_stream() {
    let Some((t, _, _)) = smollm2() else {
        return;
    };
    let text =
        std::fs::read_to_string(common::shared().join("reference/smollm2_greedy.jsonl")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids: Vec<u32> = v["output_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let expected = v["output_text"].as_str().unwrap();
        let mut s = t.stream_skip_special();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(p) = s.push(id).unwrap() {
                streamed.push_str(&p);
            }
        }
        if let Some(p) = s.finish().unwrap() {
            streamed.push_str(&p);
        }
        assert_eq!(streamed.trim_end(), expected.trim_end());
        let plain: Vec<u32> = ids.iter().copied().filter(|&i| !t.is_special(i)).collect();
        assert_eq!(t.decode(&plain).unwrap().trim_end(), expected.trim_end());
    }
}

#[test]
fn stream_emits_split_emoji_once() {
    let Some((t, _, _)) = smollm2() else {
        return;
    };
    for text in ["Party 🎉 time 👍🏽!", "漢字 and 😀😀", "naïve café"] {
        let ids = t.encode(text).unwrap();
        let mut s = t.stream();
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.extend(s.push(id).unwrap());
        }
        pieces.extend(s.finish().unwrap());
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    }
    // 😀 is several byte tokens in this vocabulary: its text comes out exactly once.
    let ids = t.encode("😀").unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let mut s = t.stream();
    let out: Vec<Option<String>> = ids.iter().map(|&i| s.push(i).unwrap()).collect();
    assert!(out[..ids.len() - 1].iter().all(|o| o.is_none()), "{out:?}");
    assert_eq!(out.last().unwrap().as_deref(), Some("😀"));
    assert_eq!(s.finish().unwrap(), None);
}

/// The tiny synthetic vocabulary gives identical ids through its GGUF and its tokenizer.json
/// (no real model needed).
#[test]
fn tiny_vocabulary_gguf_and_json_agree() {
    let v = llmcad::synthetic::tiny_vocabulary();
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::default();
    for (k, val) in &v.gguf_metadata {
        w.meta(k, val.clone());
    }
    let gguf_path = dir.path().join("tiny.gguf");
    w.write(&gguf_path).unwrap();
    let json_path = dir.path().join("tokenizer.json");
    std::fs::write(&json_path, &v.tokenizer_json).unwrap();
    let g = Tokenizer::from_gguf(&GgufFile::open(&gguf_path).unwrap()).unwrap();
    let j = Tokenizer::from_hf_files(&json_path, None).unwrap();
    assert_eq!(g.vocab_size(), j.vocab_size());
    assert_eq!(g.add_bos(), j.add_bos());
    for text in CORPUS
        .iter()
        .map(|s| s.to_string())
        .chain(random_texts(100))
    {
        let a = g.encode(&text).unwrap();
        assert_eq!(a, j.encode(&text).unwrap(), "{text:?}");
        assert_eq!(g.decode(&a).unwrap(), text);
    }
    let chat = ChatTemplate::new(v.chat_template.as_deref().unwrap(), v.bos, v.eos).unwrap();
    let prompt = chat
        .render(&[ChatMessage::new("user", "the end")], true)
        .unwrap();
    let ids = g.encode(&prompt).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(g.decode(&ids).unwrap(), prompt);
}

#[test]
fn broken_template_is_a_template_error() {
    let e = ChatTemplate::new("{% if %}", None, None).err().unwrap();
    assert!(matches!(e, Error::Template(_)), "{e}");
    let e = ChatTemplate::new("{{ raise_exception('nope') }}", None, None)
        .unwrap()
        .render(&[], true)
        .unwrap_err();
    assert!(matches!(e, Error::Template(_)), "{e}");
}

/// The drafter's GGUF in the shared folder (always present) embeds the same vocabulary: it
/// must agree with the reference tokenizer.json even where the fetched target is missing, and
/// the HF tokenizer_config's chat template must render the reference prompts.
#[test]
fn shared_drafter_gguf_and_hf_chat_template() {
    let shared = common::shared();
    let g = GgufFile::open(&shared.join("models/smollm2-135m-draft/smollm2-135m-draft.q8_0.gguf"))
        .unwrap();
    let from_gguf = Tokenizer::from_gguf(&g).unwrap();
    let dir = shared.join("models/smollm2-135m-instruct");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let from_json = Tokenizer::from_hf_files(&dir.join("tokenizer.json"), Some(&config)).unwrap();
    for text in CORPUS
        .iter()
        .map(|s| s.to_string())
        .chain(random_texts(100))
    {
        let ids = from_gguf.encode(&text).unwrap();
        assert_eq!(ids, from_json.encode(&text).unwrap(), "{text:?}");
        assert_eq!(from_json.decode(&ids).unwrap(), text);
    }
    let template = ChatTemplate::from_config_value(
        &config["chat_template"],
        config["bos_token"].as_str().map(str::to_string),
        config["eos_token"].as_str().map(str::to_string),
    )
    .unwrap();
    for r in common::references(common::SMOLLM2_REFERENCES)
        .iter()
        .filter(|r| r.kind == "chat")
    {
        let text = template
            .render(&[ChatMessage::new("user", r.prompt.clone())], true)
            .unwrap();
        assert_eq!(text, r.prompt_text);
        assert_eq!(from_json.encode(&text).unwrap(), r.prompt_ids);
    }
}
