//! A `tokenizers` tokenizer built from the vocabulary embedded in a GGUF file, following
//! llama.cpp (`llama-vocab.cpp`):
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE over `tokens` and `merges`, with the
//!   pre-tokenizer regexes of `tokenizer.ggml.pre` applied one after the other (each match and
//!   each gap between matches becomes a piece), then GPT-2's byte → character map.
//! * `tokenizer.ggml.model = "llama"`: a SentencePiece vocabulary with `scores`. llama.cpp
//!   merges the adjacent pair whose concatenation has the highest score; that is BPE whose
//!   merges are ranked by the score of the merged piece, which is what is built here, with
//!   byte fallback to `<0xXX>` tokens, spaces as `▁` and a `▁` prefix (`add_space_prefix`).
//!
//! Control tokens (and the unknown token) become special added tokens, user-defined tokens
//! plain added tokens, so both are matched when they appear in the text.

use super::tok_err;
use crate::error::{Error, Result};
use crate::format::gguf::{GgufFile, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, NormalizerWrapper, SplitDelimiterBehavior};

/// GGUF token types (`llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

pub(super) struct Built {
    pub tokenizer: tokenizers::Tokenizer,
    pub add_bos: bool,
}

pub(super) fn build(g: &GgufFile) -> Result<Built> {
    let model = g
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| Error::Tokenizer("the GGUF has no tokenizer.ggml.model".into()))?;
    let tokens = g
        .string_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Tokenizer("the GGUF has no tokenizer.ggml.tokens".into()))?;
    let n = tokens.len();
    // llama.cpp renames empty tokens so that every id keeps a distinct text.
    let tokens: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.to_string()
            }
        })
        .collect();
    let types = match int_array(g, "tokenizer.ggml.token_type")? {
        Some(t) if t.len() == n => t,
        Some(t) => {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                t.len()
            )))
        }
        None => vec![TYPE_NORMAL; n],
    };
    let mut vocab = Vocab::default();
    let mut duplicates = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        if vocab.contains_key(t) {
            duplicates += 1;
        } else {
            vocab.insert(t.clone(), i as u32);
        }
    }
    if duplicates > 0 {
        log::warn!("GGUF vocabulary: {duplicates} duplicate token texts (the first id is used)");
    }
    let add_bos_key = g.get_bool("tokenizer.ggml.add_bos_token")?;
    let (mut tokenizer, default_add_bos) = match model {
        "gpt2" => byte_level_bpe(g, vocab)?,
        "llama" => (sentencepiece_bpe(g, vocab, &tokens, &types)?, true),
        other => {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model {other:?} is not supported (llmcad reads \"gpt2\" and \"llama\" vocabularies)"
            )))
        }
    };
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab_id(&tokenizer, t) != Some(i as u32) {
            continue; // a duplicate text: unreachable by text either way
        }
        match ty {
            TYPE_CONTROL | TYPE_UNKNOWN => special.push(AddedToken::from(t.clone(), true)),
            TYPE_USER_DEFINED => user.push(AddedToken::from(t.clone(), false).normalized(false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(special).map_err(tok_err)?;
    tokenizer.add_tokens(user).map_err(tok_err)?;
    Ok(Built {
        tokenizer,
        add_bos: add_bos_key.unwrap_or(default_add_bos),
    })
}

fn vocab_id(t: &tokenizers::Tokenizer, s: &str) -> Option<u32> {
    use tokenizers::Model;
    t.get_model().token_to_id(s)
}

/// An integer array (token types) whatever its GGUF element type.
fn int_array(g: &GgufFile, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(items) = g.get_array(key)? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|v| match *v {
            Value::I8(x) => Ok(x as i64),
            Value::I16(x) => Ok(x as i64),
            Value::I32(x) => Ok(x as i64),
            Value::I64(x) => Ok(x),
            ref other => other
                .as_u64()
                .map(|x| x as i64)
                .ok_or_else(|| Error::Tokenizer(format!("{key} should hold integers"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn float_array(g: &GgufFile, key: &str) -> Result<Option<Vec<f32>>> {
    let Some(items) = g.get_array(key)? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| Error::Tokenizer(format!("{key} should hold numbers")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE ("gpt2")

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_LLM: &[&str] = &[
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝ\x{1F5F}-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌ\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &[
    r"[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
];
const DEEPSEEK_V3: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"];
/// llama.cpp's `default` pre-tokenizer (also used when `tokenizer.ggml.pre` is missing).
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a `tokenizer.ggml.pre` value means.
pub(super) struct PreKind {
    pub regexes: &'static [&'static str],
    /// A whole pre-token found in the vocabulary is emitted as is (llama3, tekken).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the GGUF does not say.
    pub add_bos: bool,
}

/// The pre-tokenizer types llama.cpp knows (the common ones); unknown ones are refused.
pub(super) fn pre_tokenizer_kind(pre: &str) -> Result<PreKind> {
    let k = |regexes, ignore_merges, add_bos| {
        Ok(PreKind {
            regexes,
            ignore_merges,
            add_bos,
        })
    };
    match pre {
        "" => {
            log::warn!(
                "the GGUF has no tokenizer.ggml.pre: using llama.cpp's \"default\" pre-tokenizer \
                 (tokenization may differ from the model's own)"
            );
            k(DEFAULT, false, false)
        }
        "default" => k(DEFAULT, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => k(&[LLAMA3], true, true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => k(&[LLAMA3], false, false),
        "deepseek-llm" => k(DEEPSEEK_LLM, false, false),
        "deepseek-coder" => k(DEEPSEEK_CODER, false, false),
        "deepseek-v3" => k(DEEPSEEK_V3, false, false),
        "falcon" => k(FALCON, false, false),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            k(&[r"\p{N}", GPT2], false, false)
        }
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe" | "gigachat"
        | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" => {
            k(&[GPT2], false, false)
        }
        "qwen2" | "stablelm2" | "megrez" | "deepseek-r1-qwen" => k(&[QWEN2], false, false),
        "poro-chat" | "bloom" | "gpt3-finnish" => k(&[PORO], false, false),
        "viking" => k(&[PORO, r"\p{N}"], false, false),
        "tekken" => k(&[TEKKEN], true, true),
        other => Err(Error::Tokenizer(format!(
            "unknown pre-tokenizer tokenizer.ggml.pre = {other:?}: llmcad knows smollm, gpt-2, \
             llama3/llama-bpe, qwen2, starcoder, deepseek-llm, deepseek-coder, deepseek-v3, \
             falcon, default and a few more; convert the model with a known pre-tokenizer or use \
             its Hugging Face directory (tokenizer.json)"
        ))),
    }
}

/// The tokenizer and llama.cpp's default `add_bos` for its pre-tokenizer type.
fn byte_level_bpe(g: &GgufFile, vocab: Vocab) -> Result<(tokenizers::Tokenizer, bool)> {
    let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("");
    let kind = pre_tokenizer_kind(pre)?;
    let raw = g
        .string_array("tokenizer.ggml.merges")?
        .ok_or_else(|| Error::Tokenizer("the GGUF has no tokenizer.ggml.merges".into()))?;
    let mut merges = Vec::with_capacity(raw.len());
    let mut dropped = 0usize;
    for m in raw {
        // As llama.cpp: split at the first space after the first byte.
        let split = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        let Some(p) = split else {
            dropped += 1;
            continue;
        };
        let (a, b) = (&m[..p], &m[p + 1..]);
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            merges.push((a.to_string(), b.to_string()));
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        log::warn!("GGUF vocabulary: {dropped} merges ignored (malformed or out of vocabulary)");
    }
    // no word cache: see `Tokenizer::wrap`
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .cache_capacity(0)
        .ignore_merges(kind.ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in kind.regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer {pre:?}: regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, true, false).into());
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_pre_tokenizer(Some(PreSequence::new(steps)));
    t.with_decoder(Some(ByteLevel::new(false, true, false)));
    Ok((t, kind.add_bos))
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style ("llama")

fn sentencepiece_bpe(
    g: &GgufFile,
    vocab: Vocab,
    tokens: &[String],
    types: &[i64],
) -> Result<tokenizers::Tokenizer> {
    let scores = match float_array(g, "tokenizer.ggml.scores")? {
        Some(s) if s.len() == tokens.len() => s,
        Some(s) => {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                s.len(),
                tokens.len()
            )))
        }
        None => vec![0.0; tokens.len()],
    };
    let add_space_prefix = g
        .get_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    // Merges: every split of a normal piece into two pieces of the vocabulary, ranked by the
    // merged piece's score (highest first), then by its id, then by split position.
    let mergeable =
        |id: u32| !matches!(types[id as usize], TYPE_CONTROL | TYPE_UNKNOWN | TYPE_BYTE);
    let mut candidates: Vec<(f32, u32, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if types[id] != TYPE_NORMAL || vocab.get(t) != Some(&(id as u32)) {
            continue;
        }
        for (p, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(p);
            let ok = |s: &str| vocab.get(s).is_some_and(|&i| mergeable(i));
            if ok(a) && ok(b) {
                candidates.push((scores[id], id as u32, p));
            }
        }
    }
    candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<(String, String)> = candidates
        .iter()
        .map(|&(_, id, p)| {
            let (a, b) = tokens[id as usize].split_at(p);
            (a.to_string(), b.to_string())
        })
        .collect();
    let has_bytes = (0..=255u8).all(|b| vocab.contains_key(&format!("<0x{b:02X}>")));
    let unk_id = g.get_u64("tokenizer.ggml.unknown_token_id")?.unwrap_or(0) as usize;
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .cache_capacity(0)
        .byte_fallback(has_bytes)
        .fuse_unk(true);
    if let Some(unk) = tokens.get(unk_id) {
        builder = builder.unk_token(unk.clone());
    }
    let model = builder.build().map_err(tok_err)?;

    let mut t = tokenizers::Tokenizer::new(model);
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new("▁".into()).into());
    }
    norm.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
    t.with_normalizer(Some(NormalizerSequence::new(norm)))
        .map_err(tok_err)?;
    let mut dec: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tok_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    t.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(t)
}
