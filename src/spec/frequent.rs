//! The drafter's output head restricted to the most frequent tokens, after FR-Spec (Zhao et
//! al., 2025). A drafter pays for its whole vocabulary at every step: for Qwen2.5's 151,936
//! tokens the 0.5B drafter's head is about a third of its weights. Drafting over the most
//! frequent tokens only costs a fraction of that, and stays exact: the target verifies every
//! drafted token, so a token the drafter cannot propose is only a shorter accepted path (the
//! target emits it itself).
//!
//! Which tokens are frequent: byte-level BPE vocabularies (Qwen2, Llama 3, GPT-2) number their
//! tokens in merge order, and merges were learned most frequent first, so the lowest ids stand
//! for the most frequent pieces of the tokenizer's training text. The special and stop tokens
//! are always kept. Opt-in: with the real pair, this proxy drops too many of the tokens code
//! needs (accepted tokens per pass fell from 3.3–4.1 to 1.4–1.5 on code prompts with 32,768
//! tokens; BENCHMARKS.md), so a table counted from real text is what makes it pay.

use crate::model::ModelConfig;

/// The `n` most frequent token ids of `cfg`'s vocabulary plus its special tokens, sorted; `None`
/// when that is the whole vocabulary.
pub fn frequent_tokens(cfg: &ModelConfig, n: usize) -> Option<Vec<u32>> {
    if n >= cfg.vocab {
        return None;
    }
    let s = &cfg.special;
    let mut ids: Vec<u32> = (0..n as u32)
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

    #[test]
    fn the_lowest_ids_and_the_special_tokens() {
        let mut cfg = crate::synthetic::TinySpec::default().config();
        cfg.vocab = 100;
        cfg.special = SpecialTokens {
            bos: Some(98),
            eos: Some(99),
            stop: vec![99, 5],
            add_bos: false,
        };
        assert_eq!(frequent_tokens(&cfg, 4), Some(vec![0, 1, 2, 3, 5, 98, 99]));
        assert_eq!(frequent_tokens(&cfg, 100), None);
    }
}
