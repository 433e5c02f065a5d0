//! The `llmcad` binary end to end: JSON output, clear errors (never a panic) for bad input.

mod common;

use common::*;
use llmcad::quant::DType;
use llmcad::synthetic::{write_tiny, TinySpec};
use std::path::Path;
use std::process::{Command, Output};

fn llmcad(args: &[&str]) -> Output {
    llmcad_with_env(args, None)
}

/// Runs the binary with one extra environment variable (e.g. an injected GPU fault).
fn llmcad_with_env(args: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmcad"));
    c.args(args);
    // learned pass times and requantized drafters go to a scratch cache, not the user's
    c.env(
        "LLMCAD_CACHE_DIR",
        std::env::temp_dir().join(format!("llmcad-cli-cache-{}", std::process::id())),
    );
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().expect("run llmcad")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must fail with a message containing every needle, and no panic.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = llmcad(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    // 1: a refused input, 2: a usage error (clap); a panic would exit with 101
    assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} should mention {n:?}");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn json_output_has_ids_text_and_stats() {
    let m = tiny_f32();
    let o = llmcad(&[
        "generate",
        "-m",
        path(&m.gguf),
        "-p",
        "the cat",
        "-n",
        "7",
        "--ignore-eos",
        "--json",
        "-t",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v["prompt_tokens"].as_array().unwrap().is_empty());
    assert_eq!(v["tokens"].as_array().unwrap().len(), 7);
    assert!(v["text"].is_string());
    for k in ["prompt_ms", "decode_ms", "tokens_per_s", "device"] {
        assert!(!v["stats"][k].is_null(), "stats.{k} missing: {v}");
    }
}

#[test]
fn speculative_json_adds_its_stats_and_matches_plain_decoding() {
    let (t, d) = tiny_pair(DType::F32);
    let base = [
        "generate",
        "-m",
        path(&t),
        "-p",
        "in the",
        "-n",
        "12",
        "--ignore-eos",
        "--json",
        "-t",
        "1",
    ];
    let plain = llmcad(&base);
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    // drafting while the target verifies (off by default on the CPU) is lossless too
    let mut args = base.to_vec();
    args.extend(["--draft", path(&d), "--tree-nodes", "8", "--overlap", "on"]);
    let spec = llmcad(&args);
    assert!(spec.status.success(), "{}", stderr(&spec));
    let s: serde_json::Value = serde_json::from_slice(&spec.stdout).unwrap();
    assert_eq!(p["tokens"], s["tokens"], "--overlap on");
    let mut args = base.to_vec();
    args.extend(["--draft", path(&d), "--tree-nodes", "8"]);
    let spec = llmcad(&args);
    assert!(spec.status.success(), "{}", stderr(&spec));
    let s: serde_json::Value = serde_json::from_slice(&spec.stdout).unwrap();
    assert_eq!(p["tokens"], s["tokens"]);
    for k in [
        "target_passes",
        "draft_tokens",
        "accepted_tokens",
        "mean_accepted_per_pass",
        "mean_tree_nodes",
        "threshold",
        "draft_ms",
        "verify_ms",
        "overhead_ms",
    ] {
        assert!(!s["stats"][k].is_null(), "stats.{k} missing: {s}");
    }
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let m = tiny_f32();
    let long = "the cat sat on the mat ".repeat(200);
    fails_with(
        &["generate", "-m", path(&m.gguf), "-p", &long, "-n", "4"],
        &["context", "prompt"],
    );
    // fits alone, but not with -n on top: the message says what to lower
    fails_with(
        &[
            "generate",
            "-m",
            path(&m.gguf),
            "-p",
            "the cat",
            "-n",
            "600",
        ],
        &["-n"],
    );
}

#[test]
fn bad_models_and_options_give_clear_errors() {
    let dir = scratch_dir();
    let trunc = dir.join("cli-trunc.gguf");
    let bytes = std::fs::read(&tiny_f32().gguf).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["generate", "-m", path(&trunc), "-p", "x"],
        &["cli-trunc.gguf"],
    );
    fails_with(
        &["info", "-m", "/nonexistent/model.gguf"],
        &["/nonexistent/model.gguf"],
    );
    let m = tiny_f32();
    fails_with(
        &["generate", "-m", path(&m.gguf), "-p", "x", "--spec", "tree"],
        &["--draft"],
    );
    let other = TinySpec {
        extra_vocab: 8,
        n_layers: 1,
        ..TinySpec::default()
    };
    let o = write_tiny(dir, "cli-bigvocab", &other, DType::F32, DType::F32).unwrap();
    fails_with(
        &[
            "generate",
            "-m",
            path(&m.gguf),
            "-p",
            "x",
            "--draft",
            path(&o.gguf),
        ],
        &["vocabularies differ"],
    );
    for (flag, value, says) in [
        ("--fallback", "sometimes", "fixed:X"),
        ("--draft-activations", "q4", "expected q16, q8 or f32"),
    ] {
        fails_with(
            &["generate", "-m", path(&m.gguf), "-p", "x", flag, value],
            &[says],
        );
    }
}

#[test]
fn info_describes_the_model() {
    let m = tiny_f32();
    let o = llmcad(&["info", "-m", path(&m.hf_dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["llama", "3 layers", "Hugging Face", "ChatML"] {
        assert!(out.contains(needle), "{out} should mention {needle}");
    }
}

#[test]
fn chat_answer_from_the_real_model() {
    let Some(model) = real_model() else { return };
    let o = llmcad(&[
        "generate",
        "-m",
        path(&model),
        "--chat",
        "-p",
        "What is the capital of France?",
        "-n",
        "32",
        "--activations",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "The capital of France is Paris."
    );
}

/// The GPU target (Lavapipe in CI) under a weight budget streams and reports it, with the same
/// tokens as when every weight is resident; an injected GPU fault under `auto` falls back to
/// the CPU and still answers.
#[test]
fn gpu_target_streams_under_a_budget_and_survives_faults() {
    let m = tiny_f32();
    let run = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut args = vec![
            "generate",
            "-m",
            path(&m.gguf),
            "-p",
            "the cat",
            "-n",
            "6",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = llmcad_with_env(&args, env);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, stderr(&o))
    };
    let (resident, _) = run(&["--device", "gpu", "--memory-budget", "100%"], None);
    assert!(resident["stats"]["streaming"].is_null());
    let (streamed, _) = run(&["--device", "gpu", "--memory-budget", "70%"], None);
    assert_eq!(streamed["tokens"], resident["tokens"]);
    assert!(
        streamed["stats"]["streaming"]["passes"].as_u64().unwrap() > 0,
        "{streamed}"
    );
    let (cpu, _) = run(&["--device", "cpu"], None);
    for fault in ["adapter", "device", "pipeline", "alloc"] {
        let (v, err) = run(&["--device", "auto"], Some(("LLMCAD_GPU_FAULT", fault)));
        assert_eq!(v["tokens"], cpu["tokens"], "{fault}");
        assert!(
            err.contains("running the target on the CPU"),
            "{fault}: {err}"
        );
        let args = [
            "generate",
            "-m",
            path(&m.gguf),
            "-p",
            "x",
            "--device",
            "gpu",
        ];
        let o = llmcad_with_env(&args, Some(("LLMCAD_GPU_FAULT", fault)));
        assert_eq!(o.status.code(), Some(1), "{fault}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("injected fault"),
            "{fault}: {}",
            stderr(&o)
        );
    }
}

/// Runs the binary with `stdin`/`stdout` set up by `setup`, failing the test if it runs for
/// more than a minute (a hang) instead of hanging with it.
fn llmcad_bounded(args: &[&str], setup: impl FnOnce(&mut Command)) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmcad"));
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    setup(&mut c);
    let mut child = c.spawn().expect("run llmcad");
    for _ in 0..600 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("{args:?} still runs after a minute");
}

#[test]
fn absurd_thread_counts_are_clamped_with_a_notice() {
    let m = tiny_f32();
    let o = llmcad(&[
        "generate",
        "-m",
        path(&m.gguf),
        "-p",
        "the cat",
        "-n",
        "2",
        "--device",
        "cpu",
        "-t",
        "100000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("100000 threads"), "{}", stderr(&o));
}

/// Prompt files are read only as far as the context could use: an endless one fails at once.
#[test]
fn prompt_inputs_are_read_up_to_what_the_context_holds() {
    let m = tiny_f32();
    fails_with(
        &[
            "generate",
            "-m",
            path(&m.gguf),
            "-f",
            "/dev/zero",
            "-n",
            "2",
        ],
        &["/dev/zero", "more than", "bytes", "context"],
    );
    // standard input as "-"
    let o = llmcad_bounded(
        &[
            "generate",
            "-m",
            path(&m.gguf),
            "-f",
            "-",
            "-n",
            "2",
            "--json",
        ],
        |c| {
            c.stdin(std::fs::File::open(path(&m.gguf)).unwrap());
        },
    );
    // a GGUF is no UTF-8 text: read in full (it is short) and refused as such
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("standard input"), "{}", stderr(&o));
    let prompt = scratch_dir().join("cli-prompt.txt");
    std::fs::write(&prompt, "the cat").unwrap();
    let o = llmcad_bounded(
        &[
            "generate",
            "-m",
            path(&m.gguf),
            "-f",
            "-",
            "-n",
            "2",
            "--json",
        ],
        |c| {
            c.stdin(std::fs::File::open(&prompt).unwrap());
        },
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A FIFO or a device as the model is refused by its type, before it is opened (opening a
/// FIFO would wait for a writer forever).
#[test]
fn non_regular_model_files_are_refused_without_hanging() {
    let fifo = scratch_dir().join("cli-model.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for model in [path(&fifo), "/dev/zero"] {
        let o = llmcad_bounded(&["info", "-m", model], |_| {});
        assert_eq!(o.status.code(), Some(1), "{model}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not a regular file"),
            "{model}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_token_count_that_would_wrap_around_is_refused() {
    let m = tiny_f32();
    for n in ["18446744073709551615", "18446744073709551000"] {
        fails_with(
            &["generate", "-m", path(&m.gguf), "-p", "the cat", "-n", n],
            &["context overflow", n, "-n"],
        );
    }
}

/// A full disk or a reader that went away ends the command with an error (or quietly for a
/// closed pipe), never with a panic.
#[test]
fn stdout_write_errors_are_errors_not_panics() {
    let m = tiny_f32();
    let gen = [
        "generate",
        "-m",
        path(&m.gguf),
        "-p",
        "the cat",
        "-n",
        "3",
        "--device",
        "cpu",
    ];
    let info = ["info", "-m", path(&m.gguf)];
    for args in [&info[..], &gen[..]] {
        let o = llmcad_bounded(args, |c| {
            c.stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
        });
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("writing to stdout"),
            "{args:?}: {}",
            stderr(&o)
        );
        // a pipe closed by its reader before the first write
        let mut c = Command::new(env!("CARGO_BIN_EXE_llmcad"));
        c.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn out_of_range_parameters_are_refused_with_their_range() {
    let m = tiny_f32();
    let (t, d) = tiny_pair(DType::F32);
    let base = ["generate", "-m", path(&m.gguf), "-p", "the cat", "-n", "2"];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    fails_with(&with(&["--temp", "NaN"]), &["temperature", "from 0"]);
    fails_with(&with(&["--temp=-1"]), &["temperature", "from 0"]);
    fails_with(&with(&["--top-p", "1.5"]), &["top_p", "from 0 to 1"]);
    fails_with(&with(&["--min-p=-0.5"]), &["min_p", "from 0 to 1"]);
    fails_with(&with(&["--repeat-penalty", "0"]), &["repeat_penalty"]);
    fails_with(&with(&["--io-bandwidth", "1B/s"]), &["1MB/s to 1TB/s"]);
    fails_with(
        &[
            "generate",
            "-m",
            path(&t),
            "--draft",
            path(&d),
            "-p",
            "x",
            "--branch-threshold",
            "NaN",
        ],
        &["branch_threshold", "from 0 to 1"],
    );
}

/// A chat template that does not compile leaves `info` and raw prompts working; only `--chat`
/// fails, saying why.
#[test]
fn a_broken_chat_template_blocks_only_chat() {
    let mut bytes = std::fs::read(&tiny_f32().gguf).unwrap();
    let tag = b"endfor";
    let at = bytes.windows(tag.len()).position(|w| w == tag).unwrap();
    bytes[at..at + tag.len()].copy_from_slice(b"endfxr");
    let p = scratch_dir().join("cli-broken-template.gguf");
    std::fs::write(&p, &bytes).unwrap();
    let o = llmcad(&["info", "-m", path(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("does not compile"));
    let o = llmcad(&["generate", "-m", path(&p), "-p", "the cat", "-n", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    fails_with(
        &["generate", "-m", path(&p), "-p", "the cat", "--chat"],
        &["--chat", "chat template", "does not compile"],
    );
}

#[test]
fn file_errors_give_the_os_message_once() {
    let o = llmcad(&["info", "-m", "/nonexistent/model.gguf"]);
    assert_eq!(
        stderr(&o).matches("No such file").count(),
        1,
        "{}",
        stderr(&o)
    );
}

/// A device lost mid-generation: one short error, exit 1, and with --json the tokens made
/// before it are still printed.
#[test]
fn a_lost_gpu_gives_one_short_error_and_keeps_the_output() {
    let m = tiny_f32();
    let args = [
        "generate",
        "-m",
        path(&m.gguf),
        "-p",
        "the cat",
        "-n",
        "8",
        "--ignore-eos",
        "--json",
        "--device",
        "gpu",
    ];
    let o = llmcad_with_env(&args, Some(("LLMCAD_GPU_FAULT", "lost:3")));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // (Lavapipe's loader adds lines of its own about XDG_RUNTIME_DIR)
    let ours: Vec<&str> = err.lines().filter(|l| !l.contains("XDG_RUNTIME")).collect();
    assert_eq!(ours.len(), 1, "{err}");
    assert!(
        ours[0].starts_with("error: GPU: ") && ours[0].len() < 300,
        "{err}"
    );
    assert!(!err.contains("from now on"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stop"], "error", "{v}");
    assert!(!v["tokens"].as_array().unwrap().is_empty(), "{v}");
}

/// A drafter whose vocabulary has the target's size but other token strings is refused (its
/// drafts would mean other text), naming a token that differs.
#[test]
fn a_drafter_with_other_token_strings_is_refused() {
    let spec = TinySpec::default();
    let mut vocab = llmcad::synthetic::tiny_vocabulary();
    let (_, tokens) = vocab
        .gguf_metadata
        .iter_mut()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .unwrap();
    let llmcad::format::gguf::Value::Array(list) = tokens else {
        panic!("tokens are an array")
    };
    let n = list.len();
    list.swap(n - 1, n - 2);
    let p = scratch_dir().join("cli-swapped-vocab.gguf");
    llmcad::export::write_gguf(
        &p,
        &spec.config(),
        "swapped",
        &spec.tensors(),
        DType::F32,
        &vocab,
    )
    .unwrap();
    fails_with(
        &[
            "generate",
            "-m",
            path(&tiny_f32().gguf),
            "-p",
            "x",
            "--draft",
            path(&p),
        ],
        &["cannot draft", "in the target", "in the drafter"],
    );
}
