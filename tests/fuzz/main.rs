//! In-process fuzzing of everything that reads untrusted bytes, on stable Rust: each target
//! runs seeded mutants of its corpus (the committed files under tests/fuzz/corpus/<target>/,
//! tiny synthetic models made at start, and every saved regression under
//! tests/fuzz/regressions/<target>/, which always run first, unmutated) under `catch_unwind`,
//! a per-input time limit and a per-input allocation cap.
//!
//! cargo test --release --test fuzz -- [TARGET…] [--seconds S] [--execs N] [--seed X]
//! cargo test --release --test fuzz -- --replay FILE
//!
//! Without --seconds, each target runs for $LLMCAD_FUZZ_SECONDS (tests/run.sh: 30), else 3 s.
//! A panic, a hang or an over-allocation saves the input under
//! target/tmp/fuzz-crashes/<target>/ and fails the run.

mod guard;
mod mutate;
mod targets;

use mutate::Mutator;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: guard::CountingAlloc = guard::CountingAlloc;

/// An input running longer than this is a hang (real ones take milliseconds).
const TIME_LIMIT: Duration = Duration::from_secs(10);

struct Args {
    filters: Vec<String>,
    seconds: Option<f64>,
    execs: Option<u64>,
    seed: u64,
    replay: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        filters: Vec::new(),
        seconds: std::env::var("LLMCAD_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok()),
        execs: None,
        seed: 1,
        replay: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()),
            "--execs" => a.execs = it.next().and_then(|s| s.parse().ok()),
            "--seed" => a.seed = it.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            "--replay" => a.replay = it.next().map(PathBuf::from),
            // libtest's flags (cargo test passes them to every test binary)
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_string()),
        }
    }
    a
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).expect("reading the corpus"))
        .collect()
}

fn main() {
    let args = parse_args();
    let all = targets::all();
    guard::start_watchdog(all.iter().map(|t| t.name).collect(), TIME_LIMIT);
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");

    if let Some(file) = &args.replay {
        // a crash file lies in a directory named after its target
        let name = file
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (i, t) = all
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: not in a directory named after a target",
                    file.display()
                )
            });
        let input = std::fs::read(file).expect("reading the input");
        match guard::run_input(i, &input, (t.cap)(input.len()), |b| (t.run)(b)) {
            Ok(()) => println!("{}: no failure", file.display()),
            Err(p) => panic!("{}: panicked: {p}", file.display()),
        }
        return;
    }

    let seconds = args.seconds.unwrap_or(3.0);
    let mut failed = false;
    for (i, t) in all.iter().enumerate() {
        if !args.filters.is_empty() && !args.filters.iter().any(|f| t.name.contains(f.as_str())) {
            continue;
        }
        let regressions = files_in(&here.join("regressions").join(t.name));
        let mut corpus = files_in(&here.join("corpus").join(t.corpus));
        corpus.extend((t.seeds)());
        let (mut execs, mut panics) = (0u64, 0u64);
        let run = |input: &[u8], execs: &mut u64| {
            *execs += 1;
            let result = guard::run_input(i, input, (t.cap)(input.len()), |b| (t.run)(b));
            if let Err(p) = &result {
                eprintln!("fuzz {}: panic: {p} (input saved)", t.name);
            }
            result.is_err() as u64
        };
        for input in regressions.iter().chain(&corpus) {
            panics += run(input, &mut execs);
        }
        let mut m = Mutator::new(args.seed ^ (i as u64) << 32);
        let start = Instant::now();
        let deadline = Duration::from_secs_f64(seconds);
        while start.elapsed() < deadline && args.execs.is_none_or(|n| execs < n) {
            let base = &corpus[m.below(corpus.len())];
            let input = m.mutate(base, &corpus, t.shape);
            panics += run(&input, &mut execs);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fuzz {:<14} {execs:>9} executions in {secs:>6.1} s ({:>7.0}/s), {} corpus inputs, \
             {} regressions, {panics} panics",
            t.name,
            execs as f64 / secs.max(1e-9),
            corpus.len(),
            regressions.len()
        );
        failed |= panics > 0;
    }
    if failed {
        eprintln!("fuzz: failures (inputs under target/tmp/fuzz-crashes/)");
        std::process::exit(1);
    }
}
