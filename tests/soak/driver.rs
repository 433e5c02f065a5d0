//! One engine driven through either API, a thread that cancels on request, and the checks
//! every streamed generation must pass.

use llmcad::engine::{CancelHandle, Engine, EngineOptions, GenerateRequest, Prompt};
use llmcad::ffi::*;
use llmcad::model::Model;
use llmcad::tokenizer::ChatMessage;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// What the caller of a generation asks the cancel thread to stop.
#[derive(Clone)]
pub enum Target {
    C(usize),
    Rust(CancelHandle),
}

impl Target {
    fn cancel(&self) {
        match self {
            Target::C(e) => {
                let st = unsafe { llmcad_cancel(*e as *const LlmcadEngine) };
                assert_eq!(st, LlmcadStatus::Ok, "llmcad_cancel");
            }
            Target::Rust(h) => h.cancel(),
        }
    }
}

/// A thread that cancels generations for others, as an app's UI thread would; `ack` says when
/// the cancel has been issued.
pub struct Canceller {
    jobs: Sender<(Target, SyncSender<()>)>,
}

impl Canceller {
    pub fn start() -> Canceller {
        let (jobs, rx) = channel::<(Target, SyncSender<()>)>();
        std::thread::spawn(move || {
            for (target, ack) in rx {
                target.cancel();
                let _ = ack.send(());
            }
        });
        Canceller { jobs }
    }

    /// Asks for a cancel; wait on the receiver to know it was issued.
    pub fn request(&self, target: Target) -> Receiver<()> {
        let (ack, done) = sync_channel(1);
        self.jobs
            .send((target, ack))
            .expect("the cancel thread is gone");
        done
    }
}

/// When, within one generation, the cancel thread is asked to cancel it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cancel {
    Never,
    /// When token N (from 1, below max_tokens) is streamed; the generation waits until the
    /// cancel is issued, so it must stop right there.
    AtToken(usize),
    /// When token N is streamed, without waiting: the cancel races with the rest of the
    /// generation (and its end).
    RaceFrom(usize),
}

/// What one generation streamed and how it ended.
#[derive(Debug)]
pub struct Streamed {
    pub ids: Vec<u32>,
    pub text: Vec<u8>,
    /// Pieces without a token (text held back until the end): at most one, and last.
    pub text_only_pieces: usize,
    pub piece_after_text_only: bool,
    pub stop: LlmcadStopReason,
    pub generated_tokens: usize,
    /// Chat turns dropped to fit the context (known through the Rust API only).
    pub dropped_turns: Option<usize>,
}

struct Collector<'a> {
    s: Streamed,
    cancel: Cancel,
    target: Target,
    canceller: &'a Canceller,
    pending: Option<Receiver<()>>,
}

impl Collector<'_> {
    fn piece(&mut self, id: Option<u32>, text: &[u8]) -> bool {
        if self.s.text_only_pieces > 0 {
            self.s.piece_after_text_only = true;
        }
        match id {
            Some(id) => self.s.ids.push(id),
            None => self.s.text_only_pieces += 1,
        }
        self.s.text.extend_from_slice(text);
        let n = self.s.ids.len();
        match self.cancel {
            Cancel::AtToken(k) if n == k && id.is_some() => {
                let _ = self.canceller.request(self.target.clone()).recv();
            }
            Cancel::RaceFrom(k) if n == k && id.is_some() && self.pending.is_none() => {
                self.pending = Some(self.canceller.request(self.target.clone()));
            }
            _ => {}
        }
        true
    }
}

unsafe extern "C" fn on_piece(
    user: *mut c_void,
    id: u32,
    piece: *const c_char,
    len: usize,
) -> c_int {
    let c = &mut *(user as *mut Collector);
    let bytes = std::slice::from_raw_parts(piece.cast::<u8>(), len);
    assert_eq!(*piece.add(len), 0, "a piece is NUL-terminated");
    let id = (id != LLMCAD_NO_TOKEN).then_some(id);
    c_int::from(!c.piece(id, bytes))
}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(llmcad_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// An engine behind the C ABI or the Rust API.
pub enum Driver {
    C(*mut LlmcadEngine),
    Rust(Box<Engine>),
}

impl Driver {
    pub fn c(opts: &LlmcadOptions) -> Driver {
        let e = unsafe { llmcad_engine_new(opts) };
        assert!(!e.is_null(), "llmcad_engine_new: {}", last_error());
        Driver::C(e)
    }

    pub fn rust(opts: EngineOptions) -> Driver {
        Driver::Rust(Box::new(Engine::load(opts).expect("Engine::load")))
    }

    fn target(&self) -> Target {
        match self {
            Driver::C(e) => Target::C(*e as usize),
            Driver::Rust(e) => Target::Rust(e.cancel_handle()),
        }
    }

    /// One chat turn (or a raw prompt with `chat` false), `reset` first when asked; the stream
    /// and its end, or the error message.
    pub fn generate(
        &mut self,
        prompt: &str,
        chat: bool,
        params: &LlmcadGenerateParams,
        cancel: Cancel,
        canceller: &Canceller,
    ) -> Result<Streamed, String> {
        let mut c = Collector {
            s: Streamed {
                ids: Vec::new(),
                text: Vec::new(),
                text_only_pieces: 0,
                piece_after_text_only: false,
                stop: LlmcadStopReason::MaxTokens,
                generated_tokens: 0,
                dropped_turns: None,
            },
            cancel,
            target: self.target(),
            canceller,
            pending: None,
        };
        let result = match self {
            Driver::C(e) => {
                let p = CString::new(prompt).unwrap();
                let mut stats = LlmcadStats::default();
                let st = unsafe {
                    llmcad_generate(
                        *e,
                        p.as_ptr(),
                        c_int::from(chat),
                        params,
                        Some(on_piece),
                        (&mut c as *mut Collector).cast(),
                        &mut stats,
                    )
                };
                if st == LlmcadStatus::Ok {
                    c.s.generated_tokens = stats.generated_tokens as usize;
                    c.s.stop = stop_reason(stats.stop);
                    Ok(())
                } else {
                    Err(format!("{st:?}: {}", last_error()))
                }
            }
            Driver::Rust(e) => {
                let mut r = GenerateRequest::new(if chat {
                    Prompt::Chat(vec![ChatMessage::new("user", prompt)])
                } else {
                    Prompt::Text(prompt.into())
                });
                r.reset = params.reset != 0;
                r.options.max_tokens = params.max_tokens as usize;
                r.options.ignore_eos = params.ignore_eos != 0;
                r.options.sampling.temperature = params.temperature;
                r.options.sampling.seed = params.seed;
                match e.generate(&r, &mut |ev| c.piece(ev.id, ev.text.as_bytes())) {
                    Ok(out) => {
                        c.s.generated_tokens = out.tokens.len();
                        c.s.dropped_turns = Some(out.dropped_turns);
                        c.s.stop = match out.stop {
                            llmcad::generate::StopReason::EndOfSequence => LlmcadStopReason::Eos,
                            llmcad::generate::StopReason::MaxTokens => LlmcadStopReason::MaxTokens,
                            llmcad::generate::StopReason::Cancelled => LlmcadStopReason::Cancelled,
                            llmcad::generate::StopReason::ContextFull => {
                                LlmcadStopReason::ContextFull
                            }
                        };
                        assert_eq!(out.tokens, c.s.ids, "Output.tokens against the stream");
                        assert_eq!(
                            out.text.as_bytes(),
                            c.s.text,
                            "Output.text against the stream"
                        );
                        Ok(())
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
        };
        // a racing cancel must have landed before the next generation starts, or it could
        // (rightly) stop that one
        if let Some(done) = c.pending.take() {
            done.recv().expect("the cancel thread is gone");
        }
        result.map(|()| c.s)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Driver::C(e) = self {
            unsafe { llmcad_engine_free(*e) };
        }
    }
}

fn stop_reason(v: i32) -> LlmcadStopReason {
    match v {
        0 => LlmcadStopReason::Eos,
        1 => LlmcadStopReason::MaxTokens,
        2 => LlmcadStopReason::Cancelled,
        3 => LlmcadStopReason::ContextFull,
        other => panic!("stats.stop {other} is no stop reason"),
    }
}

/// The stream-integrity checks: the pieces are exactly the text of the streamed tokens (none
/// lost, none repeated), the counts agree, and the stop reason fits how it ended.
pub fn check(s: &Streamed, model: &Model, max_tokens: usize, cancel: Cancel) {
    let (tok, stops) = (&model.tokenizer, &model.config.special.stop);
    assert_eq!(
        s.generated_tokens,
        s.ids.len(),
        "stats against the stream: {s:?}"
    );
    assert!(s.ids.len() <= max_tokens, "{s:?}");
    assert!(s.text_only_pieces <= 1 && !s.piece_after_text_only, "{s:?}");
    let visible: Vec<u32> = s
        .ids
        .iter()
        .copied()
        .filter(|&i| !tok.is_special(i))
        .collect();
    let want = tok.decode(&visible).expect("decode");
    assert_eq!(
        String::from_utf8_lossy(&s.text),
        want,
        "the streamed pieces are not the text of the streamed tokens: {s:?}"
    );
    match s.stop {
        LlmcadStopReason::MaxTokens => assert_eq!(s.ids.len(), max_tokens, "{s:?}"),
        LlmcadStopReason::Eos => {
            assert!(
                stops.contains(s.ids.last().expect("EOS without tokens")),
                "{s:?}"
            )
        }
        LlmcadStopReason::ContextFull => assert!(s.ids.len() < max_tokens, "{s:?}"),
        LlmcadStopReason::Cancelled => match cancel {
            Cancel::AtToken(k) => assert_eq!(s.ids.len(), k, "{s:?}"),
            Cancel::RaceFrom(k) => assert!(s.ids.len() >= k, "{s:?}"),
            Cancel::Never => panic!("cancelled without a cancel: {s:?}"),
        },
    }
    if let Cancel::AtToken(k) = cancel {
        if s.ids.len() >= k {
            assert_eq!(s.stop, LlmcadStopReason::Cancelled, "{s:?}");
        }
    }
}
