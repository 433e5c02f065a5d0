//! llmcad's dequantization against an independent implementation: the `gguf` Python package
//! (llama.cpp's gguf-py, `pip install gguf`), run by tests/gguf_dequant.py.
//!
//! - Fresh random raw blocks of every type gguf-py reads (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
//!   Q3_K, Q4_K, Q5_K, Q6_K): every byte random, the f16 scales small finite random values.
//!   The seed changes every run and is printed; `LLMCAD_DEQUANT_SEED=n` repeats a run.
//! - Rows of one tensor of every quantized type in the real Qwen2.5-Coder pair (Q4_K, Q6_K,
//!   Q5_0, Q8_0; models/fetch-qwen-pair.sh), read by gguf-py's reader and by llmcad's.
//! - Q8_K, which gguf-py does not dequantize, by hand.
//!
//! Values must have the same bits, with one exception: a zero may differ in sign. llmcad
//! evaluates every type as `(d·sc)·q + (m + dm·mq)` (blocks.rs) where ggml/gguf-py write
//! `d·q` or `d·q − m`; when the product is −0 (a negative scale times q = 0) and the offset is
//! a zero, llmcad's added +0 makes the result +0. −0 and +0 are equal as numbers, and every
//! product and sum that uses them gives the same value.

use llmcad::format::gguf::GgufFile;
use llmcad::quant::{dequantize_row, DType};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gguf_dequant.py");

/// Runs the script with `args` into a fresh temp dir; returns the dir and its manifest.
fn run_script(args: &[&str]) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): this test needs python3 with the gguf package \
                 (pip install gguf)"
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(2) => panic!(
            "python3 lacks the gguf package: pip install gguf (numpy comes with it)\n{stderr}"
        ),
        _ => panic!("{SCRIPT} {args:?} failed ({}):\n{stderr}", out.status),
    }
    let manifest = std::fs::read(dir.path().join("manifest.json")).expect("manifest.json");
    let manifest = serde_json::from_slice(&manifest).expect("manifest.json is JSON");
    (dir, manifest)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Compares llmcad's dequantization of `raw` (rows of `row_len`) with `want`; returns the
/// number of zeros that differ only in sign. Panics on any other difference, showing the
/// first few with their blocks.
fn compare(what: &str, dtype: DType, row_len: usize, raw: &[u8], want: &[f32]) -> usize {
    let rb = dtype.row_bytes(row_len);
    assert!(
        row_len > 0 && want.len().is_multiple_of(row_len),
        "{what}: bad shape"
    );
    let rows = want.len() / row_len;
    assert_eq!(raw.len(), rows * rb, "{what}: raw bytes for {rows} rows");
    let mut got = vec![f32::NAN; want.len()];
    for (r, o) in got.chunks_exact_mut(row_len).enumerate() {
        dequantize_row(dtype, &raw[r * rb..(r + 1) * rb], o);
    }
    let (mut zeros, mut bad) = (0usize, Vec::new());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.to_bits() == w.to_bits() {
            continue;
        }
        if *g == 0.0 && *w == 0.0 {
            zeros += 1;
        } else {
            bad.push(i);
        }
    }
    if !bad.is_empty() {
        let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
        let mut msg = format!(
            "{what}: {} of {} values differ from gguf-py's",
            bad.len(),
            want.len()
        );
        for &i in bad.iter().take(8) {
            let (r, c) = (i / row_len, i % row_len);
            let off = r * rb + c / bl * bb;
            msg += &format!(
                "\n  value {i} (row {r}, block {}, element {}): llmcad {:e} ({:#010x}), gguf {:e} \
                 ({:#010x}); block {:02x?}",
                c / bl,
                c % bl,
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits(),
                &raw[off..off + bb]
            );
        }
        panic!("{msg}");
    }
    zeros
}

fn case_str<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("case lacks {key}: {case}"))
}

/// Checks every case of a manifest; `raw_of` may replace the script's raw bytes with llmcad's
/// own reading of them (checked equal). Returns the types seen.
fn check_cases(
    dir: &Path,
    manifest: &Value,
    mut raw_of: impl FnMut(&Value, DType, usize, usize) -> Option<Vec<u8>>,
) -> Vec<DType> {
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "no cases");
    let mut seen = Vec::new();
    for case in cases {
        let name = case_str(case, "name");
        let dtype: DType = case_str(case, "type").parse().unwrap();
        let row_len = case["row_len"].as_u64().expect("row_len") as usize;
        let raw = std::fs::read(dir.join(case_str(case, "raw"))).unwrap();
        let want = f32s(&std::fs::read(dir.join(case_str(case, "values"))).unwrap());
        let rows = want.len() / row_len;
        if let Some(ours) = raw_of(case, dtype, row_len, rows) {
            assert!(
                ours == raw,
                "{name}: llmcad's GGUF reader and gguf-py's give different bytes"
            );
        }
        let zeros = compare(name, dtype, row_len, &raw, &want);
        if zeros > 0 {
            eprintln!("{name}: {zeros} zeros differ only in sign (see the module comment)");
        }
        if !seen.contains(&dtype) {
            seen.push(dtype);
        }
    }
    seen
}

#[test]
fn random_blocks_match_gguf_py() {
    let seed: u64 = match std::env::var("LLMCAD_DEQUANT_SEED") {
        Ok(s) => s.parse().expect("LLMCAD_DEQUANT_SEED is a number"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        }
    };
    eprintln!("random blocks from seed {seed} (LLMCAD_DEQUANT_SEED={seed} repeats this run)");
    let (dir, manifest) = run_script(&["random", &seed.to_string()]);
    let seen = check_cases(dir.path(), &manifest, |_, _, _, _| None);
    use DType::*;
    for d in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        assert!(seen.contains(&d), "no random {d} case (seed {seed})");
    }
}

#[test]
fn real_qwen_tensors_match_gguf_py() {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cache");
    let files: Vec<PathBuf> = [
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ]
    .iter()
    .map(|f| cache.join(f))
    .collect();
    if let Some(missing) = files.iter().find(|p| !p.exists()) {
        if std::env::var("LLMCAD_SKIP_REAL_MODEL").as_deref() == Ok("1") {
            eprintln!(
                "NOTICE: skipping a real-model test: {} is missing (LLMCAD_SKIP_REAL_MODEL=1)",
                missing.display()
            );
            return;
        }
        panic!(
            "{} is missing: run `bash models/fetch-qwen-pair.sh` (or set \
             LLMCAD_SKIP_REAL_MODEL=1 to skip locally)",
            missing.display()
        );
    }
    let mut args = vec!["file"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let (dir, manifest) = run_script(&args);
    let opened: Vec<GgufFile> = files.iter().map(|p| GgufFile::open(p).unwrap()).collect();
    let seen = check_cases(dir.path(), &manifest, |case, dtype, row_len, rows| {
        let file = Path::new(case_str(case, "file"));
        let g = &opened[files.iter().position(|p| p == file).expect("file")];
        let name = case_str(case, "tensor");
        let t = g.tensors.iter().find(|t| t.name == name).expect("tensor");
        assert_eq!(t.dtype, dtype, "{name}: type");
        assert_eq!(*t.shape.last().unwrap(), row_len, "{name}: row length");
        let first = case["first_row"].as_u64().expect("first_row") as usize;
        let rb = dtype.row_bytes(row_len);
        Some(t.data[first * rb..(first + rows) * rb].to_vec())
    });
    use DType::*;
    for d in [Q4_K, Q6_K, Q5_0, Q8_0] {
        assert!(seen.contains(&d), "the Qwen pair has no {d} tensor?");
    }
}

/// Q8_K by hand: f32 `d`, 256 × i8 `q`, 16 × i16 sums (ignored); value = d·q.
#[test]
fn q8_k_by_hand() {
    let ds = [0.5f32, -0.013, 3.0e-40, -7.25e3, 0.0];
    let mut raw = Vec::new();
    for (b, d) in ds.iter().enumerate() {
        raw.extend(d.to_le_bytes());
        raw.extend((0..256).map(|i| ((i * 37 + b * 11) % 256) as u8));
        raw.extend((0..32).map(|i| (i * 91 + b) as u8)); // bsums: garbage, unused
    }
    assert_eq!(raw.len(), ds.len() * DType::Q8_K.block_bytes());
    let mut out = vec![f32::NAN; ds.len() * 256];
    dequantize_row(DType::Q8_K, &raw, &mut out);
    for (b, d) in ds.iter().enumerate() {
        for i in 0..256 {
            let q = ((i * 37 + b * 11) % 256) as u8 as i8;
            let (got, want) = (out[b * 256 + i], d * q as f32);
            // equal as numbers (so bit for bit unless zero: a zero may differ in sign, see the
            // module comment)
            assert!(
                got == want,
                "block {b} element {i}: {got:e} vs {d:e}·{q} = {want:e}"
            );
        }
    }
}
