//! llmcad: fast LLM inference for memory-poor devices. A compact drafter on the CPU proposes
//! token trees, the large target verifies them on the GPU, and the target's weights stream
//! under a memory budget. See README.md, and ARCHITECTURE.md for the big picture.

pub mod backend;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod export;
pub mod ffi;
pub mod format;
pub mod generate;
pub mod gpu;
pub mod memory;
pub mod model;
pub mod progress;
pub mod quant;
pub mod sampling;
pub mod spec;
pub mod stream;
pub mod synthetic;
pub mod tokenizer;

pub use engine::{
    CancelHandle, Device, Engine, EngineOptions, GenerateRequest, Output, Prompt, TokenEvent,
};
pub use error::{Error, Result};
pub use memory::MemoryBudget;
