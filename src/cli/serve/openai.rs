//! The OpenAI API's shapes: the requests `serve` accepts (checked and turned into engine
//! requests), the error object, and the JSON of responses and stream chunks.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use llmcad::engine::{GenerateRequest, Prompt};
use llmcad::generate::GenerateOptions;
use llmcad::tokenizer::ChatMessage;
use llmcad::Error;
use serde::Deserialize;
use serde_json::{json, Value};

/// Tokens generated when a request names no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 512;

/// An error as OpenAI reports it: a status and `{"error": {message, type, param, code}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
            code: None,
        }
    }

    pub fn queue_full() -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server is busy: too many requests are waiting; retry later".into(),
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// The error object alone, as a stream's error event carries it.
    pub fn body(&self) -> Value {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "requests",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match e {
            Error::ContextOverflow { .. } => {
                (StatusCode::BAD_REQUEST, Some("context_length_exceeded"))
            }
            Error::InvalidArgument(_) | Error::Template(_) | Error::Tokenizer(_) => {
                (StatusCode::BAD_REQUEST, None)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        ApiError {
            status,
            message: e.to_string(),
            param: None,
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a request body, naming what is wrong with it (malformed JSON, a field of the wrong
/// type).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub params: Params,
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub params: Params,
}

#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string or a list of parts, of which only text is understood.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// A string or a list of strings (`stop`, a completion's `prompt`).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The parameters both endpoints take. Unknown fields are ignored, as OpenAI's clients send
/// many; known ones of the wrong type are errors.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Params {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<usize>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// llama.cpp's extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A checked request, ready for the engine.
pub struct Checked {
    pub request: GenerateRequest,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl Params {
    /// Checks the parameters against the engine's context and builds the engine request.
    pub fn check(self, prompt: Prompt, context: usize) -> Result<Checked, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported", Some("n")));
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS.min(context / 2));
        if max_tokens == 0 || max_tokens >= context {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    format!(
                        "max_tokens must be between 1 and {} (the context holds {context} tokens, the prompt included)",
                        context - 1
                    ),
                    Some("max_tokens"),
                )
            });
        }
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature must be between 0 and 2",
                Some("temperature"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p must be above 0 and at most 1",
                Some("top_p"),
            ));
        }
        let stops = self.stop.map(OneOrMany::into_vec).unwrap_or_default();
        if stops.len() > 4 {
            return Err(ApiError::invalid(
                "at most 4 stop strings are allowed",
                Some("stop"),
            ));
        }
        let mut options = GenerateOptions {
            max_tokens,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            ..GenerateOptions::default()
        };
        options.sampling.temperature = temperature;
        options.sampling.top_p = top_p;
        if let Some(seed) = self.seed {
            options.sampling.seed = seed;
        }
        Ok(Checked {
            request: GenerateRequest {
                prompt,
                options,
                reset: false,
            },
            stops,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

impl ChatRequest {
    /// The whole conversation: the engine keeps what the previous request shares with it.
    pub fn check(self, context: usize) -> Result<Checked, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages must hold at least one message",
                Some("messages"),
            ));
        }
        let mut turns = Vec::with_capacity(self.messages.len());
        for m in self.messages {
            let text = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("content parts of type {kind:?} are not supported"),
                                    Some("messages"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            turns.push(ChatMessage::new(m.role, text));
        }
        self.params.check(Prompt::Conversation(turns), context)
    }
}

impl CompletionRequest {
    /// A completion starts a new conversation.
    pub fn check(self, context: usize) -> Result<Checked, ApiError> {
        let mut prompts = self.prompt.into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::invalid(
                "prompt must be one string",
                Some("prompt"),
            ));
        }
        let mut checked = self
            .params
            .check(Prompt::Text(prompts.remove(0)), context)?;
        checked.request.reset = true;
        Ok(checked)
    }
}

/// Seconds since the epoch, for `created`.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response id: unique within the process, and across restarts in practice.
pub fn response_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", now())
}
