//! The async face of the engine: [`Engine::spawn`] moves an engine to a thread of its own, and
//! each generation comes back as a [`futures::Stream`] of [`StreamEvent`]s. The engine stays
//! synchronous inside; requests run one after the other in the order they were made, and
//! dropping a stream cancels its generation (or skips it while it waits).
//!
//! ```no_run
//! use futures::StreamExt;
//! use llmcad::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
//! use llmcad::stream::StreamEvent;
//!
//! let engine = Engine::load(EngineOptions::new("SmolLM2-135M-Instruct.Q4_1.gguf"))?.spawn()?;
//! let mut tokens = engine.generate(GenerateRequest::new(Prompt::Text("Once upon a time".into())));
//! # futures::executor::block_on(async {
//! while let Some(event) = tokens.next().await {
//!     match event? {
//!         StreamEvent::Token { text, .. } => print!("{text}"),
//!         StreamEvent::Done(out) => println!("\nstop: {}", out.stop.as_str()),
//!     }
//! }
//! # Ok::<(), llmcad::Error>(())
//! # })?;
//! # Ok::<(), llmcad::Error>(())
//! ```
//!
//! No async runtime is needed: the stream is woken from the engine's thread, so any executor
//! (or `futures::executor::block_on`) drives it.

use crate::engine::{CancelHandle, Engine, GenerateRequest, Output};
use crate::error::{Error, Result};
use futures::channel::mpsc::{channel, Receiver, Sender};
use futures::executor::block_on;
use futures::{SinkExt, Stream};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

/// Events a stream may fall behind its generation before the engine waits for its reader:
/// enough that a reader never slows the engine down, few enough that a reader that stopped
/// reading (but did not drop the stream) holds at most this many.
const BUFFER: usize = 32;

/// One item of a [`TokenStream`].
#[derive(Clone, Debug)]
pub enum StreamEvent {
    /// A generated token and the text it completes (see [`crate::TokenEvent`]).
    Token { id: Option<u32>, text: String },
    /// The generation ended; always the last event of a stream that did not fail.
    Done(Box<Output>),
}

/// A generation waiting for the engine's thread.
struct Job {
    id: u64,
    request: GenerateRequest,
    events: Sender<Result<StreamEvent>>,
}

/// The generation the engine's thread is running, if any, so that a dropped stream cancels
/// only its own generation.
type Running = Arc<Mutex<Option<u64>>>;

/// An [`Engine`] on its own thread (see the module docs). Dropping it lets the queued
/// generations finish, then the thread ends.
pub struct EngineThread {
    jobs: mpsc::Sender<Job>,
    next_id: AtomicU64,
    running: Running,
    cancel: CancelHandle,
    context_size: usize,
    model_name: String,
}

impl Engine {
    /// Moves the engine to a thread of its own, where it answers
    /// [`EngineThread::generate`] in order. Fails when the OS refuses the thread (a process
    /// limit).
    pub fn spawn(self) -> Result<EngineThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let running = Running::default();
        let thread = EngineThread {
            jobs,
            next_id: AtomicU64::new(0),
            running: running.clone(),
            cancel: self.cancel_handle(),
            context_size: self.context_size(),
            model_name: self.model().name.clone(),
        };
        let mut engine = self;
        let worker = move || {
            for mut job in queue {
                if job.events.is_closed() {
                    continue; // its stream was dropped while it waited
                }
                *lock(&running) = Some(job.id);
                // a send waits while the reader is BUFFER events behind, and fails once the
                // stream is dropped, which stops the generation
                let mut send = |event| block_on(job.events.send(event)).is_ok();
                let out = engine.generate(&job.request, &mut |ev| {
                    send(Ok(StreamEvent::Token {
                        id: ev.id,
                        text: ev.text.to_owned(),
                    }))
                });
                *lock(&running) = None;
                send(out.map(|o| StreamEvent::Done(Box::new(o))));
            }
        };
        std::thread::Builder::new()
            .name("llmcad-engine".into())
            .spawn(worker)
            .map_err(|e| {
                Error::InvalidArgument(format!("the system refused the engine's thread ({e})"))
            })?;
        Ok(thread)
    }
}

fn lock(running: &Running) -> std::sync::MutexGuard<'_, Option<u64>> {
    running.lock().unwrap_or_else(|e| e.into_inner())
}

impl EngineThread {
    /// Queues `request` behind the earlier ones and returns its events as they come.
    pub fn generate(&self, request: GenerateRequest) -> TokenStream {
        let (events, receiver) = channel(BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // a send fails only when the thread is gone; the stream then ends with an error
        let _ = self.jobs.send(Job {
            id,
            request,
            events,
        });
        TokenStream {
            id,
            events: receiver,
            done: false,
            running: self.running.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// Most tokens a conversation may hold (see [`Engine::context_size`]).
    pub fn context_size(&self) -> usize {
        self.context_size
    }

    /// The target model's name.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }
}

/// The events of one generation: tokens as they are chosen, then [`StreamEvent::Done`] (or one
/// error). Dropping it cancels the generation within one forward pass.
pub struct TokenStream {
    id: u64,
    events: Receiver<Result<StreamEvent>>,
    done: bool,
    running: Running,
    cancel: CancelHandle,
}

impl TokenStream {
    /// Stops the generation as dropping the stream does (a generation still waiting is not
    /// affected), but keeps the stream: it still ends with `Done`, whose stop is then
    /// [`crate::generate::StopReason::Cancelled`] and whose statistics cover what ran.
    pub fn cancel(&self) {
        // under the lock, so that a generation that starts meanwhile is not the one cancelled
        let running = lock(&self.running);
        if !self.done && *running == Some(self.id) {
            self.cancel.cancel();
        }
    }
}

impl Stream for TokenStream {
    type Item = Result<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match Pin::new(&mut self.events).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            // the thread ended without an answer: it panicked
            Poll::Ready(None) => Some(Err(Error::Cancelled)),
            Poll::Ready(Some(item)) => Some(item),
        };
        self.done = !matches!(item, Some(Ok(StreamEvent::Token { .. })));
        Poll::Ready(item)
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineOptions, Prompt};
    use crate::generate::StopReason;
    use crate::quant::DType;
    use crate::spec::pass_store::PassStore;
    use crate::synthetic::{write_tiny, TinySpec};
    use futures::StreamExt;

    fn engine(dir: &std::path::Path) -> Engine {
        let spec = TinySpec {
            context: 2048,
            ..TinySpec::default()
        };
        let m = write_tiny(dir, "tiny", &spec, DType::F32, DType::F32).unwrap();
        let mut o = EngineOptions::new(&m.gguf);
        o.device = crate::engine::Device::Cpu;
        o.threads = Some(1);
        o.pass_store = PassStore::Off;
        Engine::load(o).unwrap()
    }

    fn request(text: &str, max_tokens: usize) -> GenerateRequest {
        let mut r = GenerateRequest::new(Prompt::Text(text.into()));
        r.options.max_tokens = max_tokens;
        r.options.ignore_eos = true;
        r.reset = true;
        r
    }

    /// Collects a stream: the streamed token ids and the final output.
    fn collect(stream: TokenStream) -> (Vec<u32>, String, Output) {
        let events: Vec<_> = block_on(stream.collect());
        let (mut ids, mut text, mut done) = (Vec::new(), String::new(), None);
        for e in events {
            match e.unwrap() {
                StreamEvent::Token { id, text: t } => {
                    assert!(done.is_none(), "a token after Done");
                    ids.extend(id);
                    text.push_str(&t);
                }
                StreamEvent::Done(out) => done = Some(*out),
            }
        }
        (ids, text, done.expect("a Done event"))
    }

    #[test]
    fn streams_the_tokens_the_callback_api_gives() {
        let dir = tempfile::tempdir().unwrap();
        let mut direct = engine(dir.path());
        let want = direct
            .generate(&request("ab ba", 12), &mut |_| true)
            .unwrap();
        let engine = direct.spawn().unwrap();
        let (ids, text, out) = collect(engine.generate(request("ab ba", 12)));
        assert_eq!(ids, want.tokens);
        assert_eq!(out.tokens, want.tokens);
        assert_eq!(text, want.text);
        assert_eq!(out.stop, StopReason::MaxTokens);
    }

    #[test]
    fn requests_run_in_order_and_errors_end_a_stream() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).spawn().unwrap();
        // made before any is polled: they queue
        let first = engine.generate(request("ab", 5));
        let bad = engine.generate(request("ab", engine.context_size() + 1));
        let second = engine.generate(request("ab", 5));
        assert_eq!(collect(first).0, collect(second).0);
        let events: Vec<_> = block_on(bad.collect());
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], Err(Error::ContextOverflow { .. })));
    }

    #[test]
    fn dropping_a_stream_cancels_it_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).spawn().unwrap();
        let long = || {
            let mut r = request("ab", 1500);
            r.reset = false;
            r
        };
        let mut first = engine.generate(long());
        let waiting = engine.generate(long());
        let mut after = request("ab", 3);
        after.reset = false;
        let after = engine.generate(after);
        let event = block_on(first.next()).unwrap().unwrap();
        assert!(matches!(event, StreamEvent::Token { .. }));
        drop(first);
        drop(waiting);
        // `after` continues the conversation: had `first` not stopped within its buffer, or
        // had `waiting` run, the conversation would hold their 1500 tokens each
        let (ids, _, out) = collect(after);
        assert_eq!(out.stop, StopReason::MaxTokens);
        assert_eq!(ids.len(), 3);
        let prompt = out.prompt.len();
        assert!(
            out.context_tokens < 2 * prompt + 2 * BUFFER + 8,
            "{} tokens in the conversation",
            out.context_tokens
        );
    }
}
