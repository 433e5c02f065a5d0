//! Builds a frequency table (`llmcad::spec::frequent`) for a model's vocabulary: tokenizes each
//! source, counts its tokens, gives every source the same total weight (so a large code corpus
//! does not drown the prose), and writes the top tokens, most frequent first.
//!
//! ```text
//! cargo run --release --example frequent_tokens -- MODEL.gguf OUT.bin --top 65536 \
//!     --recommended 32768 SOURCE...
//! ```
//!
//! A source is plain text, or, when its name ends in `.tsv`, weighted pieces: lines
//! `count<TAB>text` (a word list with its counts). `models/build-frequent-table.sh` assembles the
//! sources for the shipped table.

use anyhow::{ensure, Context};
use clap::Parser;
use llmcad::model::{LoadOptions, Model};
use llmcad::spec::frequent::{vocab_fingerprint, FrequencyTable};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// Any model file with the vocabulary (only its tokenizer is used).
    model: PathBuf,
    out: PathBuf,
    /// Tokens the table ranks.
    #[arg(long, default_value_t = 65536)]
    top: usize,
    /// How many of them the drafter keeps by default.
    #[arg(long)]
    recommended: usize,
    #[arg(required = true)]
    sources: Vec<PathBuf>,
}

/// Text pieces of one source with their weights.
fn pieces(path: &PathBuf) -> anyhow::Result<Vec<(f64, String)>> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    // a source cut at a byte count may end inside a character
    let text = String::from_utf8_lossy(&bytes);
    if path.extension().is_some_and(|e| e == "tsv") {
        return text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, piece) = l.split_once('\t').context("a line without a tab")?;
                Ok((n.parse::<f64>().context("a count")?, piece.to_string()))
            })
            .collect();
    }
    // pieces of about 16 KiB cut at line ends: the tokenizer's cost grows with piece length
    let mut out = Vec::new();
    let mut piece = String::new();
    for line in text.split_inclusive('\n') {
        piece.push_str(line);
        if piece.len() >= 16 << 10 {
            out.push((1.0, std::mem::take(&mut piece)));
        }
    }
    if !piece.is_empty() {
        out.push((1.0, piece));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.recommended <= args.top, "--recommended exceeds --top");
    let model = Model::load(&args.model, &LoadOptions::default())?;
    let tok = &model.tokenizer;
    let vocab = model.config.vocab;
    let mut total = vec![0f64; vocab];
    for path in &args.sources {
        let pieces = pieces(path)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = pieces.len().div_ceil(threads).max(1);
        let counts = std::thread::scope(|s| -> llmcad::Result<Vec<f64>> {
            let jobs: Vec<_> = pieces
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || -> llmcad::Result<Vec<f64>> {
                        let mut c = vec![0f64; vocab];
                        for (w, text) in chunk {
                            for id in tok.encode(text)? {
                                if let Some(slot) = c.get_mut(id as usize) {
                                    *slot += w;
                                }
                            }
                        }
                        Ok(c)
                    })
                })
                .collect();
            let mut sum = vec![0f64; vocab];
            for job in jobs {
                for (s, c) in sum.iter_mut().zip(job.join().expect("no panic")?) {
                    *s += c;
                }
            }
            Ok(sum)
        })?;
        let weight: f64 = counts.iter().sum();
        ensure!(weight > 0.0, "{}: no tokens", path.display());
        for (t, c) in total.iter_mut().zip(&counts) {
            *t += c / weight;
        }
        let distinct = counts.iter().filter(|&&c| c > 0.0).count();
        eprintln!("{}: {distinct} distinct tokens", path.display());
    }
    let mut counted: Vec<u32> = (0..vocab as u32)
        .filter(|&id| total[id as usize] > 0.0)
        .collect();
    counted.sort_by(|&a, &b| {
        total[b as usize]
            .total_cmp(&total[a as usize])
            .then(a.cmp(&b))
    });
    eprintln!("{} tokens seen in all", counted.len());
    // A byte-level BPE numbers its tokens in merge order, most frequent pairs first: a ranking
    // by the tokenizer's own training text, closer to what the model writes than any corpus
    // here, but late for pieces that chat and code use all the time (Qwen2's Markdown fence
    // ``` is token 73,594). So the table takes the two rankings in turn.
    let mut ranked = Vec::with_capacity(args.top);
    let mut taken = vec![false; vocab];
    let merged = (0..vocab as u32).map(Some);
    for (by_count, by_merge) in counted
        .iter()
        .copied()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(merged)
    {
        for id in [by_count, by_merge].into_iter().flatten() {
            if !taken[id as usize] && !tok.is_special(id) && ranked.len() < args.top {
                taken[id as usize] = true;
                ranked.push(id);
            }
        }
    }
    let table = FrequencyTable {
        vocab_fingerprint: vocab_fingerprint(tok),
        recommended: args.recommended.min(ranked.len()) as u32,
        ranked,
    };
    std::fs::write(&args.out, table.to_bytes())?;
    Ok(())
}
