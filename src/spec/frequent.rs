//! The drafter's output head restricted to the most frequent tokens, after FR-Spec (Zhao et
//! al., 2025). A drafter pays for its whole vocabulary at every step: for Qwen2.5's 151,936
//! tokens the 0.5B drafter's head is about a third of the weights a step reads. Drafting over
//! the most frequent tokens only costs a fraction of that, and stays exact: the target verifies
//! every drafted token, so a token the drafter cannot propose is only a shorter accepted path
//! (the target emits it itself).
//!
//! Which tokens are frequent comes from a *frequency table*. Byte-level BPE vocabularies
//! number tokens in merge order, most frequent merges first, which ranks them by the
//! tokenizer's own training text but puts pieces that chat and code use all the time late. So a
//! table takes that ranking in turn with counts from real text (code, and prose in several
//! languages), made by `examples/frequent_tokens.rs` over what `models/build-frequent-table.sh`
//! assembles. Tables ship inside the library (`frequent/*.bin`) and apply to every model whose
//! vocabulary has the table's fingerprint, whatever its size or quantization (Qwen2.5's 0.5B to
//! 72B share one). Without a table, merge order alone (the lowest ids) stands in, only when
//! asked for.

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

/// Which tokens the drafter may propose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftVocab {
    /// A shipped table's recommended size where one matches the drafter's vocabulary; else the
    /// whole vocabulary.
    #[default]
    Auto,
    /// Every token.
    Whole,
    /// The `n` most frequent tokens (by a shipped table, else the lowest ids).
    Top(usize),
}

impl std::str::FromStr for DraftVocab {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DraftVocab::Auto),
            "all" | "0" => Ok(DraftVocab::Whole),
            n => n
                .parse()
                .map(DraftVocab::Top)
                .map_err(|_| format!("{s:?}: expected auto, all or a number of tokens")),
        }
    }
}

/// Token ids ranked by frequency, for the vocabulary with fingerprint `vocab_fingerprint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrequencyTable {
    pub vocab_fingerprint: u64,
    /// How many of the top tokens `DraftVocab::Auto` keeps (chosen by measurement).
    pub recommended: u32,
    /// Most frequent first.
    pub ranked: Vec<u32>,
}

const MAGIC: &[u8; 8] = b"LLMCADFT";

/// The tables built into the library.
const SHIPPED: &[&[u8]] = &[
    include_bytes!("frequent/qwen2.bin"),
    include_bytes!("frequent/smollm2.bin"),
];

impl FrequencyTable {
    /// Layout (little-endian): magic `LLMCADFT`, fingerprint u64, recommended u32, count u32,
    /// then `count` token ids (u32), most frequent first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(self.vocab_fingerprint.to_le_bytes());
        out.extend(self.recommended.to_le_bytes());
        out.extend((self.ranked.len() as u32).to_le_bytes());
        for id in &self.ranked {
            out.extend(id.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Format(format!("frequency table: {why}"));
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("no LLMCADFT magic"))?;
        if rest.len() < 16 {
            return Err(bad("truncated header"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let vocab_fingerprint = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let recommended = u32_at(8);
        let count = u32_at(12) as usize;
        let ids = &rest[16..];
        if ids.len() != count * 4 {
            return Err(bad(&format!(
                "{count} ids declared, {} bytes hold them",
                ids.len()
            )));
        }
        let ranked: Vec<u32> = ids
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let mut seen = ranked.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != ranked.len() || recommended as usize > ranked.len() {
            return Err(bad("repeated ids, or more recommended than ranked"));
        }
        Ok(FrequencyTable {
            vocab_fingerprint,
            recommended,
            ranked,
        })
    }

    /// The shipped table for `tokenizer`'s vocabulary, if there is one.
    pub fn shipped_for(tokenizer: &Tokenizer) -> Option<Self> {
        let fingerprint = vocab_fingerprint(tokenizer);
        SHIPPED
            .iter()
            .map(|b| Self::from_bytes(b).expect("shipped tables parse (tested)"))
            .find(|t| t.vocab_fingerprint == fingerprint)
    }
}

/// FNV-1a over every token's text in id order: equal for models that share a vocabulary.
pub fn vocab_fingerprint(tokenizer: &Tokenizer) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    for id in 0..tokenizer.vocab_size() as u32 {
        for b in tokenizer.id_to_token(id).unwrap_or_default().bytes() {
            eat(b);
        }
        eat(0xff); // never inside UTF-8 text: separates tokens
    }
    h
}

/// The token ids the drafter may propose under `choice` (sorted, the special and stop tokens
/// always among them), or `None` for the whole vocabulary.
pub fn draft_tokens(
    cfg: &ModelConfig,
    table: Option<&FrequencyTable>,
    choice: DraftVocab,
) -> Option<Vec<u32>> {
    let n = match (choice, table) {
        (DraftVocab::Whole, _) | (DraftVocab::Auto, None) => return None,
        (DraftVocab::Auto, Some(t)) => t.recommended as usize,
        (DraftVocab::Top(n), _) => n,
    };
    if n >= cfg.vocab {
        return None;
    }
    // past a table's end, the rest in id order
    let ranked = table.map_or(&[][..], |t| &t.ranked[..]);
    let in_table: std::collections::HashSet<u32> = ranked.iter().copied().collect();
    let rest = (0..cfg.vocab as u32).filter(|id| !in_table.contains(id));
    let top: Vec<u32> = ranked.iter().copied().chain(rest).take(n).collect();
    let s = &cfg.special;
    let mut ids: Vec<u32> = top
        .into_iter()
        .chain(s.bos)
        .chain(s.eos)
        .chain(s.stop.iter().copied())
        .filter(|&id| (id as usize) < cfg.vocab)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpecialTokens;

    fn config() -> ModelConfig {
        let mut cfg = crate::synthetic::TinySpec::default().config();
        cfg.vocab = 100;
        cfg.special = SpecialTokens {
            bos: Some(98),
            eos: Some(99),
            stop: vec![99, 5],
            add_bos: false,
        };
        cfg
    }

    #[test]
    fn without_a_table_the_lowest_ids_and_the_special_tokens() {
        let cfg = config();
        let top = draft_tokens(&cfg, None, DraftVocab::Top(4));
        assert_eq!(top, Some(vec![0, 1, 2, 3, 5, 98, 99]));
        assert_eq!(draft_tokens(&cfg, None, DraftVocab::Top(100)), None);
        assert_eq!(draft_tokens(&cfg, None, DraftVocab::Auto), None);
    }

    #[test]
    fn with_a_table_its_top_tokens_and_the_special_tokens() {
        let cfg = config();
        let table = FrequencyTable {
            vocab_fingerprint: 7,
            recommended: 2,
            ranked: vec![40, 12, 77, 3],
        };
        let auto = draft_tokens(&cfg, Some(&table), DraftVocab::Auto);
        assert_eq!(auto, Some(vec![5, 12, 40, 98, 99]));
        let top3 = draft_tokens(&cfg, Some(&table), DraftVocab::Top(3));
        assert_eq!(top3, Some(vec![5, 12, 40, 77, 98, 99]));
        let past_its_end = draft_tokens(&cfg, Some(&table), DraftVocab::Top(6));
        assert_eq!(past_its_end, Some(vec![0, 1, 3, 5, 12, 40, 77, 98, 99]));
        assert_eq!(draft_tokens(&cfg, Some(&table), DraftVocab::Whole), None);
    }

    #[test]
    fn tables_round_trip_and_bad_bytes_are_errors() {
        let table = FrequencyTable {
            vocab_fingerprint: 0x1234_5678_9abc_def0,
            recommended: 1,
            ranked: vec![9, 2, 5],
        };
        let bytes = table.to_bytes();
        assert_eq!(FrequencyTable::from_bytes(&bytes).unwrap(), table);
        for bad in [&bytes[..bytes.len() - 1], &bytes[1..], &bytes[..20]] {
            assert!(FrequencyTable::from_bytes(bad).is_err());
        }
        let mut repeated = table.clone();
        repeated.ranked = vec![9, 9];
        assert!(FrequencyTable::from_bytes(&repeated.to_bytes()).is_err());
    }

    #[test]
    fn shipped_tables_parse() {
        for bytes in SHIPPED {
            let t = FrequencyTable::from_bytes(bytes).unwrap();
            assert!(t.recommended > 0 && t.ranked.len() >= t.recommended as usize);
        }
    }

    #[test]
    fn parsing_choices() {
        assert_eq!("auto".parse(), Ok(DraftVocab::Auto));
        assert_eq!("all".parse(), Ok(DraftVocab::Whole));
        assert_eq!("0".parse(), Ok(DraftVocab::Whole));
        assert_eq!("32768".parse(), Ok(DraftVocab::Top(32768)));
        assert!("many".parse::<DraftVocab>().is_err());
    }
}
