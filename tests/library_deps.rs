//! The library that apps link carries the engine alone: built without default features, its
//! dependency tree has no server stack (tokio, axum, hyper: the `server` feature brings them,
//! for `llmcad serve`) and none of the command line's crates (the `cli` feature's).

use std::process::Command;

/// The package names in the library's normal dependency tree.
fn library_dependencies(features: &[&str]) -> Vec<String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--offline", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(features)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

const SERVER_STACK: [&str; 3] = ["tokio", "axum", "hyper"];
const CLI_STACK: [&str; 5] = ["clap", "env_logger", "indicatif", "plotters", "anyhow"];

#[test]
fn the_library_without_default_features_has_no_server_or_cli_stack() {
    let deps = library_dependencies(&["--no-default-features"]);
    assert!(deps.iter().any(|d| d == "futures"), "{deps:?}");
    for name in SERVER_STACK.iter().chain(&CLI_STACK) {
        assert!(!deps.iter().any(|d| d == name), "{name} in {deps:?}");
    }
    // and the check sees them when the features are on
    for (feature, stack) in [("server", &SERVER_STACK[..]), ("cli", &CLI_STACK[..])] {
        let deps = library_dependencies(&["--no-default-features", "--features", feature]);
        for name in stack {
            assert!(
                deps.iter().any(|d| d == name),
                "{name} missing from {deps:?} with {feature}"
            );
        }
    }
}
