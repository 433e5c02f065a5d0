//! Collaborative decoding: a drafter proposes token trees, the target verifies them in one
//! batched pass, a self-adjusting fallback decides when to verify. Output is lossless: greedy
//! decoding gives the target's own tokens, sampling keeps the target's distribution.

pub mod cost;
mod decode;
pub mod drafter;
pub mod fallback;
pub mod frequent;
mod pair;
pub mod pass_store;
pub mod tree;
pub mod verify;

pub use decode::{generate_speculative, Overlap, SpecGeneration, SpecMode, SpecOptions, SpecStats};
pub use fallback::FallbackPolicy;
pub use pair::check_pair;
pub use tree::TokenTree;
