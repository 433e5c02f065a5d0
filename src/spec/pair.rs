//! Checks that a drafter can speak for a target: same vocabulary, same special tokens.

use crate::error::{Error, Result};
use crate::model::Model;

/// Refuses a drafter whose vocabulary or BOS/EOS differ from the target's; returns warnings
/// for pairings that work but make little sense.
pub fn check_pair(target: &Model, drafter: &Model) -> Result<Vec<String>> {
    let mismatch = |what: String| {
        Err(Error::InvalidArgument(format!(
            "the drafter {} cannot draft for {}: {what}",
            drafter.name, target.name
        )))
    };
    let (tv, dv) = (
        target.tokenizer.vocab_size(),
        drafter.tokenizer.vocab_size(),
    );
    if tv != dv || target.config.vocab != drafter.config.vocab {
        return mismatch(format!(
            "vocabularies differ ({tv} tokens / {} logits vs {dv} / {})",
            target.config.vocab, drafter.config.vocab
        ));
    }
    // every id, the specials included, must map to the same token text: a drafter whose
    // tokens mean something else would be accepted less, never more
    for id in 0..tv as u32 {
        let (a, b) = (
            target.tokenizer.id_to_token(id),
            drafter.tokenizer.id_to_token(id),
        );
        if a != b {
            return mismatch(format!(
                "token {id} is {a:?} in the target, {b:?} in the drafter"
            ));
        }
    }
    let (ts, ds) = (&target.config.special, &drafter.config.special);
    if ts.bos != ds.bos || ts.eos != ds.eos {
        return mismatch(format!(
            "special tokens differ (BOS {:?}/{:?}, EOS {:?}/{:?})",
            ts.bos, ds.bos, ts.eos, ds.eos
        ));
    }
    let mut warnings = Vec::new();
    let (tp, dp) = (
        target.weights.parameter_count(),
        drafter.weights.parameter_count(),
    );
    if dp >= tp {
        warnings.push(format!(
            "the drafter ({dp} parameters) is not smaller than the target ({tp}): speculation \
             will likely be slower than the target alone"
        ));
    }
    Ok(warnings)
}
