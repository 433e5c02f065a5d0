//! `llmcad serve` end to end: the real binary on an ephemeral port, driven with raw HTTP and
//! with the official `openai` Python package. Bad requests get OpenAI's error JSON; greedy
//! answers equal `llmcad generate` and the library token for token, also with concurrent
//! clients and one that disconnects; a full queue answers 429; memory stays flat.
#![cfg(feature = "server")]

mod common;

use common::*;
use llmcad::engine::{Device, Engine, EngineOptions, GenerateRequest, Prompt};
use llmcad::quant::DType;
use llmcad::spec::pass_store::PassStore;
use llmcad::synthetic::{write_tiny, TinySpec};
use llmcad::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest any one HTTP exchange or server start may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

/// A running `llmcad serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmcad"))
            .args(["serve", "-m"])
            .arg(model)
            .args(["--device", "cpu", "-t", "1", "--port", "0"])
            .args(extra)
            .env("LLMCAD_CACHE_DIR", scratch_dir())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting llmcad serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server {
            child,
            base: String::new(),
        };
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("llmcad serve did not start");
        server.base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `body` to `path`; returns the status, the tokens/s header and the body.
    fn post(&self, path: &str, body: &str) -> (u16, Option<String>, String) {
        let response = match agent()
            .post(&self.url(path))
            .set("Content-Type", "application/json")
            .send_string(body)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("POST {path}: {e}"),
        };
        let status = response.status();
        let speed = response
            .header("x-llmcad-tokens-per-second")
            .map(str::to_owned);
        (status, speed, response.into_string().unwrap())
    }

    fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, text) = self.post(path, &body.to_string());
        (status, serde_json::from_str(&text).unwrap())
    }

    /// Starts a streaming request and returns the reader of its events.
    fn stream(&self, path: &str, body: &Value) -> SseReader {
        let response = agent()
            .post(&self.url(path))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(
            response.header("content-type"),
            Some("text/event-stream"),
            "a stream"
        );
        SseReader(BufReader::new(response.into_reader()))
    }

    fn health(&self) -> Value {
        let r = agent().get(&self.url("/health")).call().unwrap();
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    }

    /// Waits until `/health` counts `n` requests in the server (bounded by PATIENCE).
    fn wait_for_requests(&self, n: u64) {
        let start = Instant::now();
        while self.health()["requests"] != n {
            assert!(
                start.elapsed() < PATIENCE,
                "the server never held {n} requests"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(PATIENCE).build()
}

/// The `data:` payloads of a server-sent event stream.
struct SseReader(BufReader<Box<dyn Read + Send + Sync + 'static>>);

impl SseReader {
    /// The next payload; `None` at the end of the stream.
    fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.0.read_line(&mut line).unwrap() == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(data.to_owned());
            }
        }
    }

    /// Reads the stream to `[DONE]`: the text, the chunks' finish reason, the extension
    /// field of the last chunk and the usage chunk if any.
    fn finish(mut self) -> Streamed {
        let mut s = Streamed::default();
        while let Some(data) = self.next_data() {
            if data == "[DONE]" {
                s.done = true;
                assert!(self.next_data().is_none(), "events after [DONE]");
                break;
            }
            let chunk: Value = serde_json::from_str(&data).unwrap();
            assert!(chunk.get("error").is_none(), "{chunk}");
            if let Some(usage) = chunk.get("usage") {
                s.usage = Some(usage.clone());
                continue;
            }
            let choice = &chunk["choices"][0];
            let piece = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str());
            s.text.push_str(piece.unwrap_or(""));
            if let Some(r) = choice["finish_reason"].as_str() {
                s.finish_reason = r.to_owned();
                s.extension = chunk["llmcad"].clone();
            }
        }
        s
    }
}

#[derive(Default, Debug)]
struct Streamed {
    text: String,
    finish_reason: String,
    extension: Value,
    usage: Option<Value>,
    done: bool,
}

/// A tiny model with a long context (the queue test keeps a generation running).
fn tiny_model() -> PathBuf {
    static M: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let spec = TinySpec {
            context: 4096,
            ..TinySpec::default()
        };
        write_tiny(scratch_dir(), "serve", &spec, DType::F32, DType::F32)
            .unwrap()
            .gguf
    })
    .clone()
}

/// What the library generates greedily for `messages` on a fresh engine.
fn library_answer(model: &Path, messages: &[ChatMessage], max_tokens: usize) -> Vec<u32> {
    let mut o = EngineOptions::new(model);
    o.device = Device::Cpu;
    o.threads = Some(1);
    o.pass_store = PassStore::Off;
    let mut engine = Engine::load(o).unwrap();
    let mut r = GenerateRequest::new(Prompt::Chat(messages.to_vec()));
    r.options.max_tokens = max_tokens;
    r.options.ignore_eos = true;
    engine.generate(&r, &mut |_| true).unwrap().tokens
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({"model": "any", "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("token ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_answering() {
    let server = Server::start(&tiny_model(), &["--max-body", "4096", "-c", "256"]);
    let user = |c: &str| json!([{"role": "user", "content": c}]);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "malformed JSON",
            r#"{"messages": [{"role""#.into(),
            400,
            None,
        ),
        (
            "a known field of the wrong type",
            json!({"messages": user("hi"), "max_tokens": "ten"}).to_string(),
            400,
            None,
        ),
        (
            "messages of the wrong type",
            json!({"messages": "hi"}).to_string(),
            400,
            None,
        ),
        (
            "empty messages",
            json!({"messages": []}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "a prompt longer than the context",
            json!({"messages": user(&"ab ".repeat(300)), "max_tokens": 8}).to_string(),
            400,
            None,
        ),
        (
            "max_tokens beyond the context",
            json!({"messages": user("hi"), "max_tokens": 100000}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "n = 2",
            json!({"messages": user("hi"), "n": 2}).to_string(),
            400,
            Some("n"),
        ),
        (
            "a body over the limit",
            json!({"messages": user(&"a".repeat(5000))}).to_string(),
            413,
            None,
        ),
    ];
    for (what, body, status, param) in cases {
        let (got, _, text) = server.post("/v1/chat/completions", &body);
        assert_eq!(got, status, "{what}: {text}");
        let e: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        let message = e["error"]["message"].as_str();
        assert!(message.is_some_and(|m| !m.is_empty()), "{what}: {e}");
        assert!(e["error"]["type"].is_string(), "{what}: {e}");
        if let Some(p) = param {
            assert_eq!(e["error"]["param"], p, "{what}: {e}");
        }
    }
    let (status, e) = server.post_json("/v1/completions", &json!({"prompt": ["a", "b"]}));
    assert_eq!(status, 400, "{e}");
    let (status, e) = server.post_json("/v1/nothing", &json!({}));
    assert_eq!(status, 404, "{e}");
    assert!(e["error"]["message"].is_string());
    // a prompt longer than the context is the engine's verdict: the code says so
    let (_, e) = server.post_json(
        "/v1/chat/completions",
        &json!({"messages": user(&"ab ".repeat(300)), "max_tokens": 8, "stream": true}),
    );
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");

    // still answering, and the GET endpoints
    let (status, r) = server.post_json("/v1/chat/completions", &chat("hi", 4));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 4);
    let models: Value = serde_json::from_str(
        &agent()
            .get(&server.url("/v1/models"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(models["data"][0]["id"], "serve");
    assert_eq!(server.health()["status"], "ok");
}

#[test]
fn greedy_answers_equal_llmcad_generate() {
    let Some(model) = real_model() else { return };
    let server = Server::start(&model, &[]);
    let prompt = "Name three colours of the rainbow.";
    let generate = |chat: bool| -> Value {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llmcad"));
        c.args(["generate", "-m"]).arg(&model);
        c.args([
            "--device", "cpu", "-t", "1", "-n", "24", "--json", "-p", prompt,
        ]);
        if chat {
            c.arg("--chat");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let want = generate(true);
    let body = json!({"messages": [{"role": "user", "content": prompt}],
                      "max_tokens": 24, "temperature": 0});
    let (status, speed, text) = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    assert!(
        speed.is_some_and(|s| s.parse::<f64>().is_ok()),
        "tokens/s header"
    );
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ids(&r["llmcad"]["token_ids"]), ids(&want["tokens"]));
    assert_eq!(r["choices"][0]["message"]["content"], want["text"]);
    let reason = if want["stop"] == "eos" {
        "stop"
    } else {
        "length"
    };
    assert_eq!(r["choices"][0]["finish_reason"], reason);
    assert_eq!(
        r["usage"]["prompt_tokens"],
        want["prompt_tokens"].as_array().unwrap().len()
    );

    // the same request streamed, with usage
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    streamed_body["stream_options"] = json!({"include_usage": true});
    let s = server
        .stream("/v1/chat/completions", &streamed_body)
        .finish();
    assert!(s.done);
    assert_eq!(s.text, want["text"]);
    assert_eq!(s.finish_reason, reason);
    assert_eq!(ids(&s.extension["token_ids"]), ids(&want["tokens"]));
    assert_eq!(
        s.usage.unwrap()["completion_tokens"],
        r["usage"]["completion_tokens"]
    );

    // a completion of raw text
    let want = generate(false);
    let (status, r) = server.post_json(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(ids(&r["llmcad"]["token_ids"]), ids(&want["tokens"]));
    assert_eq!(r["choices"][0]["text"], want["text"]);
}

#[test]
fn stop_strings_cut_the_answer_across_tokens() {
    let model = tiny_model();
    let server = Server::start(&model, &[]);
    let (_, full) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "ab ba", "max_tokens": 40, "ignore_eos": true}),
    );
    let text = full["choices"][0]["text"].as_str().unwrap().to_owned();
    // a stop string of three characters from the middle of the answer: tiny tokens are
    // mostly single bytes, so it spans tokens
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(text.chars().count() / 2)
        .unwrap();
    let stop: String = text[cut..].chars().take(3).collect();
    let before = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"prompt": "ab ba", "max_tokens": 40, "ignore_eos": true,
                          "stop": [stop.clone()], "stream": stream});
        let (got, reason) = if stream {
            let s = server.stream("/v1/completions", &body).finish();
            (s.text, s.finish_reason)
        } else {
            let (_, r) = server.post_json("/v1/completions", &body);
            let c = &r["choices"][0];
            (
                c["text"].as_str().unwrap().to_owned(),
                c["finish_reason"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(got, before, "stop {stop:?} in {text:?}");
        assert_eq!(reason, "stop");
    }
}

#[test]
fn concurrent_streams_get_exact_tokens_while_one_disconnects() {
    let model = tiny_model();
    let server = Server::start(&model, &[]);
    let prompts: Vec<String> = (0..8).map(|i| format!("ab {i} ba")).collect();
    std::thread::scope(|scope| {
        let leaver = scope.spawn(|| {
            let mut s = server.stream(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "leaving"}],
                        "max_tokens": 3000, "ignore_eos": true, "stream": true}),
            );
            for _ in 0..3 {
                assert!(s.next_data().is_some());
            }
            // dropped here: the connection closes midway
        });
        let clients: Vec<_> = prompts
            .iter()
            .map(|p| {
                let server = &server;
                scope.spawn(move || {
                    let mut body = chat(p, 24);
                    body["stream"] = json!(true);
                    server.stream("/v1/chat/completions", &body).finish()
                })
            })
            .collect();
        leaver.join().unwrap();
        for (p, c) in prompts.iter().zip(clients) {
            let s = c.join().unwrap();
            assert!(s.done);
            let want = library_answer(&model, &[ChatMessage::new("user", p)], 24);
            assert_eq!(ids(&s.extension["token_ids"]), want, "prompt {p:?}");
        }
    });
    // the disconnected generation was cancelled: nothing is left running
    server.wait_for_requests(0);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&tiny_model(), &["--queue", "1"]);
    let long = json!({"prompt": "ab", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    // one generating, one waiting: the queue is full. The first is kept from finishing by
    // not reading it (the engine waits for its reader).
    let mut running = server.stream("/v1/completions", &long);
    assert!(running.next_data().is_some());
    let waiting = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| server.stream("/v1/completions", &long));
        server.wait_for_requests(2);
        let r = agent()
            .post(&server.url("/v1/completions"))
            .send_string(&json!({"prompt": "ab", "max_tokens": 4}).to_string());
        let Err(ureq::Error::Status(429, r)) = r else {
            panic!("expected 429, got {r:?}")
        };
        assert!(r.header("retry-after").is_some());
        let e: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
        assert!(e["error"]["message"].is_string());
        drop(running); // disconnect: the waiting one starts
        waiting.join().unwrap()
    });
    drop(waiting);
    server.wait_for_requests(0);
    let (status, r) =
        server.post_json("/v1/completions", &json!({"prompt": "ab", "max_tokens": 4}));
    assert_eq!(status, 200, "{r}");
}

#[test]
fn the_conversation_cache_is_reused_when_a_request_extends_it() {
    let model = tiny_model();
    let server = Server::start(&model, &[]);
    let u1 = ChatMessage::new("user", "ab ba ab");
    let first = server
        .post_json("/v1/chat/completions", &chat(&u1.content, 12))
        .1;
    let a1 = ChatMessage::new(
        "assistant",
        first["choices"][0]["message"]["content"].as_str().unwrap(),
    );
    let u2 = ChatMessage::new("user", "ba");
    let turns = [u1.clone(), a1, u2];
    let messages: Vec<Value> = turns
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let (_, second) = server.post_json(
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // all of the first prompt but perhaps its last token: re-tokenized, the template's
    // newline before the answer may merge with the answer's first character
    assert!(
        cached + 1 >= first_prompt,
        "{cached} of {first_prompt} reused"
    );
    assert_eq!(
        ids(&second["llmcad"]["token_ids"]),
        library_answer(&model, &turns, 12)
    );

    // another conversation: the cache keeps only the template's common start
    let other = ChatMessage::new("user", "ba ba");
    let (_, third) = server.post_json("/v1/chat/completions", &chat(&other.content, 12));
    let cached = third["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached < first_prompt / 2, "{third}");
    assert_eq!(
        ids(&third["llmcad"]["token_ids"]),
        library_answer(&model, &[other], 12)
    );
}

#[test]
fn speculation_statistics_come_in_the_extension_field() {
    let (target, draft) = tiny_pair(DType::F32);
    let draft = draft.to_str().unwrap();
    let server = Server::start(&target, &["--draft", draft, "--draft-threads", "1"]);
    let (status, r) = server.post_json("/v1/chat/completions", &chat("ab ba", 16));
    assert_eq!(status, 200, "{r}");
    let spec = &r["llmcad"]["speculative"];
    assert!(
        spec["target_passes"].as_u64().is_some_and(|p| p >= 1),
        "{r}"
    );
    assert!(spec["accepted_tokens"].is_u64(), "{r}");
    // speculation is exact: the target's own greedy answer
    let want = library_answer(&target, &[ChatMessage::new("user", "ab ba")], 16);
    assert_eq!(ids(&r["llmcad"]["token_ids"]), want);
}

#[test]
fn memory_stays_flat_over_200_requests() {
    let server = Server::start(&tiny_model(), &[]);
    let mut rss = Vec::new();
    for i in 0..200 {
        let mut body = chat(&format!("ab {i}"), 8);
        body["stream"] = json!(i % 2 == 0);
        let (status, _, _) = server.post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200);
        if i == 49 || i == 199 {
            rss.push(server.rss_kib());
        }
    }
    // after a warm-up of 50, 150 more requests may not grow the server by more than 4 MiB
    // (a leak of one buffer per request would)
    assert!(
        rss[1] < rss[0] + 4096,
        "RSS {} KiB -> {} KiB",
        rss[0],
        rss[1]
    );
}

#[test]
fn the_openai_python_client_works() {
    let server = Server::start(&tiny_model(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("{}/v1", server.base))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the openai client failed (tests/run.sh installs it: pip install openai):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
