//! The bar drawn while models load, only on an interactive stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llmcad::progress::{LoadProgress, LoadStatus};
use std::io::IsTerminal;

/// A load bar and the callback that moves it; clear the bar when loading ends.
pub fn load_bar() -> (ProgressBar, LoadProgress) {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} tensors {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix("loading");
        bar
    } else {
        ProgressBar::hidden()
    };
    let moved = bar.clone();
    let hook = LoadProgress::new(move |s: LoadStatus| {
        moved.set_length(s.tensors as u64);
        moved.set_position(s.tensors_done as u64);
        if let Some(q) = s.quantizing_to {
            moved.set_message(format!("quantizing to {q}"));
        }
    });
    (bar, hook)
}
