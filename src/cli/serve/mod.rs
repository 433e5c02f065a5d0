//! `llmcad serve`: the OpenAI chat and completions API over HTTP (axum on tokio), on the
//! library's token stream. One engine answers the requests in arrival order; a bounded queue
//! turns away the excess with 429, and a client that goes away cancels its generation.

mod generation;
mod openai;
mod stop;

use super::EngineArgs;
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use generation::{Finish, Generation, Piece};
use llmcad::stream::EngineThread;
use openai::{ApiError, ChatRequest, Checked, CompletionRequest};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 takes a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait while one generates; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
}

struct Server {
    engine: EngineThread,
    /// One place per request being answered: the running one and those waiting.
    places: Arc<Semaphore>,
    capacity: usize,
    /// The name `/v1/models` lists and responses carry (the model file's stem).
    model: String,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let model = a
        .engine
        .model_path()
        .file_stem()
        .map_or_else(|| "llmcad".into(), |s| s.to_string_lossy().into_owned());
    let engine = a.engine.load()?;
    eprintln!("{model} on {}", engine.device_name());
    let capacity = a.queue + 1;
    let server = Arc::new(Server {
        engine: engine.spawn()?,
        places: Arc::new(Semaphore::new(capacity)),
        capacity,
        model,
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                ..ApiError::invalid("no such endpoint", None)
            }
        })
        .layer(DefaultBodyLimit::max(a.max_body))
        .with_state(server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
        stdout.flush()?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn health(State(s): State<Arc<Server>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": s.model,
        "requests": s.capacity - s.places.available_permits(),
        "capacity": s.capacity,
    }))
}

async fn models(State(s): State<Arc<Server>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.model,
        "object": "model",
        "created": openai::now(),
        "owned_by": "llmcad",
        "context_length": s.engine.context_size(),
    }]}))
}

async fn chat(
    State(s): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = openai::parse(&body_bytes(body)?)?;
    let checked = request.check(s.engine.context_size())?;
    answer(&s, Endpoint::Chat, checked).await
}

async fn completions(
    State(s): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = openai::parse(&body_bytes(body)?)?;
    let checked = request.check(s.engine.context_size())?;
    answer(&s, Endpoint::Completion, checked).await
}

/// The body, or the error a body over the limit (413) or unreadable gets.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::invalid(e.body_text(), None)
    })
}

/// Queues the request for the engine and answers it whole or as a stream.
async fn answer(s: &Server, endpoint: Endpoint, checked: Checked) -> Result<Response, ApiError> {
    let place = s
        .places
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::queue_full())?;
    let events = s.engine.generate(checked.request);
    let mut generation = Generation::start(events, checked.stops, place).await?;
    let reply = Reply {
        endpoint,
        id: openai::response_id(endpoint.id_prefix()),
        model: s.model.clone(),
        created: openai::now(),
    };
    if checked.stream {
        return Ok(stream(reply, generation, checked.include_usage));
    }
    let mut text = String::new();
    loop {
        match generation.next().await {
            Some(Ok(Piece::Text(t))) => text.push_str(&t),
            Some(Ok(Piece::End(finish))) => {
                let mut response = Json(reply.whole(&text, &finish)).into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("{:.2}", finish.tokens_per_s())) {
                    response
                        .headers_mut()
                        .insert("x-llmcad-tokens-per-second", v);
                }
                return Ok(response);
            }
            Some(Err(e)) => return Err(e),
            None => return Err(ApiError::from(llmcad::Error::Cancelled)),
        }
    }
}

/// Streams the generation as server-sent events: chunks, then `data: [DONE]`. A client that
/// goes away drops the generation, which cancels it.
fn stream(reply: Reply, mut generation: Generation, include_usage: bool) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let send = |data: String| tx.send(Event::default().data(data));
        if reply.endpoint == Endpoint::Chat
            && send(
                reply
                    .chunk(json!({"role": "assistant", "content": ""}), None)
                    .to_string(),
            )
            .await
            .is_err()
        {
            return;
        }
        loop {
            // waiting for the next token, notice a client that left
            let piece = tokio::select! {
                piece = generation.next() => piece,
                _ = tx.closed() => return,
            };
            let data = match piece {
                Some(Ok(Piece::Text(t))) => reply.chunk(reply.endpoint.delta(&t), None),
                Some(Ok(Piece::End(finish))) => {
                    let mut last = reply.chunk(reply.endpoint.delta(""), Some(finish.reason));
                    last["llmcad"] = finish.extension();
                    if send(last.to_string()).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let mut usage = reply.chunk(Value::Null, None);
                        usage["choices"] = json!([]);
                        usage["usage"] = finish.usage();
                        if send(usage.to_string()).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                Some(Err(e)) => e.body(),
                None => break,
            };
            if send(data.to_string()).await.is_err() {
                return;
            }
        }
        let _ = send("[DONE]".into()).await;
    });
    let events =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>)));
    Sse::new(events).into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        }
    }

    /// A stream chunk's new text in the endpoint's shape.
    fn delta(self, text: &str) -> Value {
        match self {
            Endpoint::Chat if text.is_empty() => json!({}),
            Endpoint::Chat => json!({"content": text}),
            Endpoint::Completion => json!(text),
        }
    }
}

/// What every response and chunk of one request carries.
struct Reply {
    endpoint: Endpoint,
    id: String,
    model: String,
    created: u64,
}

impl Reply {
    /// One stream chunk with `delta` (chat) or `text` (completions).
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "finish_reason": finish_reason}),
            ),
            Endpoint::Completion => (
                "text_completion",
                json!({"index": 0, "text": delta, "logprobs": null, "finish_reason": finish_reason}),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The whole response of a request that did not stream.
    fn whole(&self, text: &str, finish: &Finish) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                       "logprobs": null, "finish_reason": finish.reason}),
            ),
            Endpoint::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null,
                       "finish_reason": finish.reason}),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": finish.usage(),
            "llmcad": finish.extension(),
        })
    }
}
