//! `scratchllm serve`: an OpenAI-compatible HTTP API over one model, and a chat page.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as
//! server-sent events ending in `data: [DONE]`), `GET /v1/models`, `GET /health` (503 while the
//! model loads), `POST /v1/classify` (classifier models), and `GET /` (the chat page, built into the
//! binary). The socket is bound first and the model loads behind it; requests go through a bounded
//! queue to the model thread ([`engine`]). Limits: body size (413), `max_tokens`, prompt length
//! (`context_length_exceeded`), queue length (503). Access control (API keys, the Host header,
//! CORS, per-key concurrency, body read time) is [`guard`]; connections, header timeouts and
//! graceful shutdown are [`listen`].
pub mod api;
pub mod engine;
pub mod guard;
pub mod listen;
pub mod metrics;
#[cfg(test)]
mod sampling_tests;

use api::{parse_body, ApiError, Fields};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, Event, Finish, Job, Kind};
use scratchllm_model::classifier::ClassifierSpec;
use scratchllm_model::generate::TokenLogprob;
use scratchllm_model::{modeldir, GenerateOptions, Gpt, PromptStyle};
use scratchllm_tokenizer::SpecialMode;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    /// The model's id in requests and `/v1/models` (default: the directory's name).
    pub name: Option<String>,
    /// How chat messages become a prompt (default: the style the model was tuned with, else its
    /// tokenizer's chat template, else Alpaca).
    pub prompt_style: Option<PromptStyle>,
    pub max_body_bytes: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Requests waiting for the model beyond those being served; more get 503.
    pub max_queue: usize,
    /// Sequences generated at once: each step advances every one of them by a token in one
    /// batched forward pass.
    pub max_active: usize,
    /// Prompt tokens processed per step for a request being admitted, so that a long prompt holds
    /// the running streams back by at most one chunk.
    pub prefill_chunk: usize,
    /// The memory the active sequences' KV caches may take, in bytes; requests whose cache would
    /// not fit wait in the queue.
    pub kv_cache_bytes: usize,
    /// How the weight matrices are held (bf16: half the memory; q8_0/q4_0: quantized linear
    /// layers); `None`: as the file stores them.
    pub dtype: Option<scratchllm_model::InferenceDtype>,
    /// Keys a `/v1` request must carry as `Authorization: Bearer KEY` (with those of
    /// `api_key_files`); none: no key is asked for.
    pub api_keys: Vec<guard::ApiKey>,
    /// Files of keys, one a line (blank lines and `#` comments skipped).
    pub api_key_files: Vec<PathBuf>,
    /// Serve on a non-loopback address without keys (refused otherwise).
    pub allow_unauthenticated: bool,
    /// Origins (`https://app.example.com`, or `*`) whose browser pages may call `/v1`; none: CORS
    /// is off.
    pub cors_origins: Vec<String>,
    /// Host names requests may carry besides the bound address (against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// The longest wait for a request's headers or body, and for the next request on an idle
    /// connection.
    pub request_timeout: Duration,
    /// Connections open at once; more wait until one closes.
    pub max_connections: usize,
    /// Requests in progress per API key; more get 429.
    pub max_concurrent_per_key: usize,
    /// After SIGTERM or Ctrl-C, how long requests in progress may finish before their streams are
    /// ended.
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    pub fn new(model: PathBuf) -> Self {
        ServeOptions {
            model,
            host: "127.0.0.1".into(),
            port: 8080,
            name: None,
            prompt_style: None,
            max_body_bytes: 1 << 20,
            max_tokens_limit: 4096,
            default_max_tokens: 256,
            max_queue: 32,
            dtype: None,
            max_active: 16,
            prefill_chunk: 256,
            kv_cache_bytes: 2048 << 20,
            api_keys: Vec::new(),
            api_key_files: Vec::new(),
            allow_unauthenticated: false,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            request_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_concurrent_per_key: 8,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

struct AppState {
    engine: OnceLock<Engine>,
    opts: ServeOptions,
    ids: AtomicU64,
    metrics: Arc<metrics::Metrics>,
    /// Set when shutting down ends the requests still running.
    cut: watch::Receiver<bool>,
}

impl AppState {
    fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| {
            ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "model_loading",
                "the model is still loading; try again in a moment",
            )
        })
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:x}{:04x}",
            now(),
            self.ids.fetch_add(1, Ordering::Relaxed) & 0xffff
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest queue [`ServeOptions::max_queue`] may ask for: the queue is a channel whose capacity
/// is fixed when it is made, and tokio refuses (with a panic) more than about 2^61 slots.
pub const MAX_QUEUE: usize = 1 << 20;

impl ServeOptions {
    /// Refuses settings the server cannot run with, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_QUEUE).contains(&self.max_queue) {
            return Err(format!(
                "the queue length {} must be in 1..={MAX_QUEUE}",
                self.max_queue
            ));
        }
        if self.max_active == 0
            || self.max_tokens_limit == 0
            || self.default_max_tokens == 0
            || self.prefill_chunk == 0
            || self.kv_cache_bytes == 0
        {
            return Err(format!(
                "max_active ({}), max_tokens_limit ({}), default_max_tokens ({}), prefill_chunk ({}) and kv_cache_bytes ({}) must be at least 1",
                self.max_active, self.max_tokens_limit, self.default_max_tokens, self.prefill_chunk, self.kv_cache_bytes
            ));
        }
        guard::validate(self, &guard::load_keys(self)?)
    }
}

/// Binds, loads the model behind the socket, and serves until SIGTERM or Ctrl-C (then shuts down
/// gracefully, see [`listen`]).
pub fn run(opts: ServeOptions) -> Result<(), String> {
    opts.validate()?;
    let keys = guard::load_keys(&opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let served = runtime.block_on(serve(opts, keys));
    // Connections a client never closed are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn serve(opts: ServeOptions, keys: Vec<guard::ApiKey>) -> Result<(), String> {
    let host = opts.host.trim_start_matches('[').trim_end_matches(']');
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind((host, opts.port))
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!(
        "listening on http://{local} (loading {})",
        opts.model.display()
    );
    let (cut_tx, cut) = watch::channel(false);
    let state = Arc::new(AppState {
        engine: OnceLock::new(),
        opts: opts.clone(),
        ids: AtomicU64::new(0),
        metrics: Default::default(),
        cut,
    });
    let loader = state.clone();
    // A model that fails to load ends the server with its error (the caller decides the exit).
    let (failed, load_failure) = tokio::sync::oneshot::channel::<String>();
    std::thread::Builder::new()
        .name("model".into())
        .spawn(move || {
            if let Err(e) = load_and_work(loader) {
                let _ = failed.send(e);
            }
        })
        .map_err(|e| format!("starting the model thread: {e}"))?;
    let app = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/classify", post(classify))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(opts.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard::Guard::new(&opts, keys)),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            log_request,
        ))
        .with_state(state);
    let limits = listen::Limits {
        max_connections: opts.max_connections,
        request_timeout: opts.request_timeout,
        shutdown_grace: opts.shutdown_grace,
    };
    tokio::select! {
        () = listen::serve(listener, app, limits, &cut_tx) => Ok(()),
        Ok(e) = load_failure => Err(e),
    }
}

/// Loads the model, publishes it, and becomes the model thread; returns the reason when the
/// model cannot be loaded.
fn load_and_work(state: Arc<AppState>) -> Result<(), String> {
    let started = Instant::now();
    let opts = &state.opts;
    let path = opts.model.display();
    let mut files = modeldir::load_stored(&opts.model, &candle_core::Device::Cpu)
        .map_err(|e| format!("loading {path}: {e}"))?;
    // bf16 matrices when asked, or by default when the file stores them so.
    files
        .prepare_inference(opts.dtype)
        .map_err(|e| format!("preparing the weights of {path}: {e}"))?;
    let model = Gpt::new(&files.config, &files.weights)
        .map_err(|e| format!("building the model from {path}: {e}"))?;
    let kind = match (files.config.num_classes, files.classifier.clone()) {
        (Some(n), spec) => Kind::Classifier(spec.unwrap_or_else(|| ClassifierSpec {
            labels: (0..n).map(|c| c.to_string()).collect(),
            token_position: scratchllm_model::TokenPosition::Last,
            average_embeddings: false,
            max_length: files.config.context_length,
            pad_id: files.tokenizer.end_of_text().map(|r| r.id).unwrap_or(0),
        })),
        (None, _) => Kind::Lm {
            style: PromptStyle::for_model(
                opts.prompt_style.or(files.prompt_style),
                &files.tokenizer,
            ),
        },
    };
    let name = opts.name.clone().unwrap_or_else(|| {
        let p = std::fs::canonicalize(&opts.model).unwrap_or_else(|_| opts.model.clone());
        p.file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let tokenizer = Arc::new(files.tokenizer);
    let (tx, rx) = mpsc::channel(opts.max_queue.max(1));
    let engine = Engine {
        name: name.clone(),
        eos: tokenizer.end_of_text().map(|r| r.id),
        config: files.config,
        tokenizer: tokenizer.clone(),
        kind: kind.clone(),
        jobs: tx,
    };
    let _ = state.engine.set(engine);
    eprintln!(
        "model {name:?} ready in {:.2} s ({})",
        started.elapsed().as_secs_f64(),
        match &kind {
            Kind::Lm { style } => format!("language model, {} prompts", style.name()),
            Kind::Classifier(s) => format!("classifier: {}", s.labels.join(", ")),
        }
    );
    let limits = engine::Limits {
        max_active: opts.max_active,
        prefill_chunk: opts.prefill_chunk,
        kv_cache_bytes: opts.kv_cache_bytes,
    };
    engine::work(model, tokenizer, kind, rx, limits, state.metrics.clone());
    Ok(())
}

async fn log_request(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let started = Instant::now();
    let response = next.run(req).await;
    s.metrics.request(&path, response.status().as_u16());
    eprintln!(
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    let queued = s
        .engine
        .get()
        .map_or(0, |e| e.jobs.max_capacity() - e.jobs.capacity());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(queued),
    )
        .into_response()
}

/// `GET /`: the classification page for a classifier model, the chat page for a language model
/// (and while the model loads).
async fn page(State(s): State<Arc<AppState>>) -> Html<&'static str> {
    match s.engine.get().map(|e| &e.kind) {
        Some(Kind::Classifier(_)) => Html(include_str!("classify.html")),
        _ => Html(include_str!("page.html")),
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s.engine.get() {
        Some(e) => Json(json!({"status": "ok", "model": e.name})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let e = s.engine()?;
    Ok(Json(json!({"object": "list", "data": [{
        "id": e.name, "object": "model", "created": now(), "owned_by": "scratchllm",
        "context_length": e.config.context_length,
        "kind": match e.kind { Kind::Lm { .. } => "language-model", Kind::Classifier(_) => "classifier" },
    }]})))
}

/// The body of a POST as a JSON object, with the body-size limit's 413 as an OpenAI error.
fn body_object(
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rej| {
        let status = rej.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_body"
        };
        ApiError::status(status, "invalid_request_error", code, rej.body_text())
    })?;
    parse_body(&bytes)
}

/// Checks `model` and `n`, the fields every generation request shares.
fn check_common(f: &Fields, e: &Engine) -> Result<(), ApiError> {
    if let Some(m) = f.string("model")? {
        if m != e.name {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                ..ApiError::bad(
                    "model",
                    format!(
                        "the model {m:?} does not exist; this server has {:?}",
                        e.name
                    ),
                )
            }
            .with_code("model_not_found"));
        }
    }
    f.integer("n", 1, MAX_CHOICES as u64)?;
    Ok(())
}

/// The most choices (`n`) a request may ask for: they share the prompt's pass.
pub const MAX_CHOICES: usize = 8;

/// The most alternatives a request may ask for with each token's log-probability (chat's
/// `top_logprobs`, completions' `logprobs`): OpenAI's limit for chat, vLLM's default for both.
pub const MAX_LOGPROBS: usize = 20;

/// A generation request, checked.
struct GenRequest {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    stops: Vec<String>,
    stream: bool,
    ignore_eos: bool,
    min_tokens: usize,
    presence_penalty: f32,
    frequency_penalty: f32,
    /// Choices (`n`).
    n: usize,
    /// Log-probabilities with this many alternatives per token.
    logprobs: Option<usize>,
}

fn gen_request(
    f: &Fields,
    e: &Engine,
    s: &ServeOptions,
    (param, prompt): (&str, Vec<u32>),
    extra_stops: &[&str],
) -> Result<GenRequest, ApiError> {
    let ctx = e.config.context_length;
    if prompt.is_empty() {
        return Err(ApiError::bad(
            param,
            format!("{param} gives an empty prompt"),
        ));
    }
    if prompt.len() >= ctx {
        return Err(ApiError::bad(
            param,
            format!(
                "this model's maximum context length is {ctx} tokens, but the prompt has {} tokens (at least one must be left to generate)",
                prompt.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let limit = s.max_tokens_limit as u64;
    let max_tokens = match f.integer("max_completion_tokens", 1, limit)? {
        Some(n) => n,
        None => f
            .integer("max_tokens", 1, limit)?
            .unwrap_or(s.default_max_tokens as u64),
    } as usize;
    let opts = sampling(f, max_tokens.min(ctx - prompt.len()), e.eos)?;
    let mut stops = f.stops()?;
    stops.extend(extra_stops.iter().map(|s| s.to_string()));
    // vLLM's extensions, which benchmark clients send.
    let min_tokens = f.integer("min_tokens", 0, limit)?.unwrap_or(0) as usize;
    Ok(GenRequest {
        prompt,
        opts,
        stops,
        stream: f.bool("stream")?,
        ignore_eos: f.bool("ignore_eos")?,
        min_tokens,
        n: f.integer("n", 1, MAX_CHOICES as u64)?.unwrap_or(1) as usize,
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        logprobs: None,
    })
}

/// Chat's `logprobs` (true or false) and `top_logprobs` (alternatives, which need `logprobs`).
fn chat_logprobs_asked(f: &Fields) -> Result<Option<usize>, ApiError> {
    let top = f.integer("top_logprobs", 0, MAX_LOGPROBS as u64)?;
    match (f.bool("logprobs")?, top) {
        (true, top) => Ok(Some(top.unwrap_or(0) as usize)),
        (false, Some(_)) => Err(ApiError::bad(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        (false, None) => Ok(None),
    }
}

/// A token as OpenAI shows it: its text (bytes that are not UTF-8 on their own as U+FFFD) and its
/// bytes.
fn token_text(e: &Engine, id: u32) -> (String, Vec<u8>) {
    let bytes = e.tokenizer.token_bytes(id).unwrap_or_default().to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// A log-probability for JSON: OpenAI writes -9999.0 for a token with none.
fn logprob_value(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

/// Chat's `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(e: &Engine, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let (token, bytes) = token_text(e, id);
        json!({"token": token, "logprob": logprob_value(lp), "bytes": bytes})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut v = entry(t.id, t.logprob);
            v["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            v
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs`: tokens, their log-probabilities, a map of the alternatives (with the
/// chosen token, as OpenAI includes it) and each token's character offset in the text, counted
/// from `offset`, which is moved past them.
fn completion_logprobs(e: &Engine, lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::new();
    let mut offsets = Vec::new();
    let mut top = Vec::new();
    for t in lps {
        let token = token_text(e, t.id).0;
        offsets.push(*offset);
        *offset += token.chars().count();
        let mut alternatives = serde_json::Map::new();
        for &(id, lp) in t.top.iter().chain([(t.id, t.logprob)].iter()) {
            alternatives.insert(token_text(e, id).0, json!(logprob_value(lp)));
        }
        top.push(Value::Object(alternatives));
        tokens.push(token);
    }
    json!({"tokens": tokens, "token_logprobs": lps.iter().map(|t| logprob_value(t.logprob)).collect::<Vec<_>>(),
           "top_logprobs": top, "text_offset": offsets})
}

/// A request's sampling settings (`temperature`, `top_p`, `top_k`, `seed`) as the engine's
/// generation options; `max_new_tokens` is already bounded by the limit and the context.
fn sampling(
    f: &Fields,
    max_new_tokens: usize,
    stop_id: Option<u32>,
) -> Result<GenerateOptions, ApiError> {
    let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32;
    let top_p = f.number("top_p", 0.0, 1.0)?.map(|p| p as f32);
    if top_p == Some(0.0) {
        return Err(ApiError::bad("top_p", "top_p must be greater than 0"));
    }
    let top_k = f.integer("top_k", 1, u32::MAX as u64)?.map(|k| k as usize);
    // OpenAI's seeds may be negative: any 64-bit integer picks a stream.
    let seed = match f.0.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|x| x as u64))
                .ok_or_else(|| {
                    ApiError::bad("seed", format!("seed is {n}; it must be an integer"))
                })?,
        ),
        Some(_) => return Err(ApiError::bad("seed", "seed must be an integer")),
    };
    // A temperature below f32's smallest positive value rounds to 0: greedy, as 0 asks.
    let greedy = temperature == 0.0;
    Ok(GenerateOptions {
        max_new_tokens,
        temperature: (!greedy).then_some(temperature),
        top_k: if greedy { None } else { top_k },
        top_p: if greedy {
            None
        } else {
            top_p.filter(|&p| p < 1.0)
        },
        seed: seed.unwrap_or_else(|| now() ^ u64::from(std::process::id()) << 32),
        stop_id,
        use_cache: true,
    })
}

fn busy() -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "queue_full",
        "the server's queue is full; try again shortly",
    )
}

/// Queues a generation; its events arrive on the returned receiver.
fn submit(e: &Engine, r: &GenRequest) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
    let (mut txs, rxs): (Vec<_>, Vec<_>) = (0..r.n).map(|_| mpsc::unbounded_channel()).unzip();
    let tx = txs.remove(0);
    e.jobs
        .try_send(Job::Generate(engine::Request {
            prompt: r.prompt.clone(),
            opts: r.opts.clone(),
            stops: r.stops.clone(),
            ignore_eos: r.ignore_eos,
            min_tokens: r.min_tokens,
            presence_penalty: r.presence_penalty,
            frequency_penalty: r.frequency_penalty,
            logprobs: r.logprobs,
            events: tx,
            more: txs,
            arrived: Instant::now(),
        }))
        .map_err(|_| busy())?;
    Ok(rxs)
}

/// A whole choice: its text, why it ended, its tokens and their log-probabilities (if asked).
struct Choice {
    text: String,
    finish: Finish,
    tokens: usize,
    logprobs: Vec<TokenLogprob>,
}

/// Waits for every choice.
async fn collect_all(
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    cut: watch::Receiver<bool>,
) -> Result<Vec<Choice>, ApiError> {
    let mut all = Vec::with_capacity(rxs.len());
    for rx in rxs {
        all.push(collect(rx, cut.clone()).await?);
    }
    Ok(all)
}

/// The events of every choice on one channel, with the choice's index.
fn merged(rxs: Vec<mpsc::UnboundedReceiver<Event>>) -> mpsc::UnboundedReceiver<(usize, Event)> {
    let (tx, out) = mpsc::unbounded_channel();
    for (i, mut rx) in rxs.into_iter().enumerate() {
        let tx = tx.clone();
        // When the client goes, `out` is dropped, the send fails and `rx` with it: the model
        // thread drops the choice at its next turn.
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((i, ev)).is_err() {
                    break;
                }
            }
        });
    }
    out
}

/// Waits for a whole generation; a shutdown past its grace period ends the wait with 503.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Event>,
    cut: watch::Receiver<bool>,
) -> Result<Choice, ApiError> {
    let whole = async {
        let mut text = String::new();
        let mut all = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text { text: t, logprobs } => {
                    text += &t;
                    all.extend(logprobs);
                }
                Event::Done {
                    finish,
                    completion_tokens,
                    logprobs,
                } => {
                    all.extend(logprobs);
                    return Ok(Choice {
                        text,
                        finish,
                        tokens: completion_tokens,
                        logprobs: all,
                    });
                }
                Event::Error(m) => return Err(server_error(m)),
            }
        }
        Err(server_error("the model thread stopped".into()))
    };
    tokio::select! {
        done = whole => done,
        () = listen::cut_off(cut) => Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "the server is shutting down; try again shortly",
        )),
    }
}

fn server_error(message: String) -> ApiError {
    ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "generation_failed",
        message,
    )
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// The last chunk of a stream asked with `stream_options.include_usage`, from the completion
/// tokens.
type UsageChunk = Box<dyn Fn(usize) -> Value + Send>;

/// `stream_options.include_usage`.
fn include_usage(body: &serde_json::Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::bad(
                "stream_options.include_usage",
                "stream_options.include_usage must be true or false",
            )),
        },
        Some(_) => Err(ApiError::bad(
            "stream_options",
            "stream_options must be an object",
        )),
    }
}

/// Server-sent events from a generation: `chunk(choice, text, finish, logprobs)` makes each JSON
/// chunk; the stream
/// ends with `data: [DONE]`, also when a shutdown past its grace period cuts it short. When the
/// client goes away, or the stream is cut, the relay ends and the model thread drops the
/// generation at its next turn.
fn sse(
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    cut: watch::Receiver<bool>,
    first: Option<Value>,
    mut chunk: impl FnMut(usize, &str, Option<Finish>, &[TokenLogprob]) -> Value + Send + 'static,
    usage: Option<UsageChunk>,
) -> Response {
    let mut open = rxs.len();
    let mut rx = merged(rxs);
    let mut completion_tokens = 0;
    let (tx, out) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(SseEvent::default().data(v))).await.is_ok() }
        };
        if let Some(first) = first {
            if !send(first.to_string()).await {
                return;
            }
        }
        let mut cut_off = std::pin::pin!(listen::cut_off(cut));
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = &mut cut_off => break,
            };
            let Some(ev) = ev else { break };
            let (data, last) = match ev {
                (i, Event::Text { text, logprobs }) => {
                    (chunk(i, &text, None, &logprobs).to_string(), false)
                }
                (
                    i,
                    Event::Done {
                        finish,
                        completion_tokens: n,
                        logprobs,
                    },
                ) => {
                    completion_tokens += n;
                    open -= 1;
                    let end = chunk(i, "", Some(finish), &logprobs).to_string();
                    if open > 0 {
                        (end, false)
                    } else {
                        if !send(end).await {
                            return;
                        }
                        // `stream_options.include_usage`: one more chunk, with no choices.
                        match &usage {
                            Some(usage) => (usage(completion_tokens).to_string(), true),
                            None => break,
                        }
                    }
                }
                (_, Event::Error(m)) => (server_error(m).body().to_string(), true),
            };
            if !send(data).await {
                return;
            }
            if last {
                break;
            }
        }
        let _ = send("[DONE]".into()).await;
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let e = s.engine()?;
    let body = body_object(body)?;
    let f = Fields(&body);
    check_common(&f, e)?;
    if let Kind::Classifier(_) = e.kind {
        return Err(ApiError::request(
            "this model is a classifier: use POST /v1/classify",
        ));
    }
    let prompt = match body.get("prompt") {
        Some(Value::String(p)) => e
            .tokenizer
            .encode(p, SpecialMode::Allow)
            .map_err(|err| ApiError::bad("prompt", err.to_string()))?,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => e
            .tokenizer
            .encode(a[0].as_str().unwrap_or_default(), SpecialMode::Allow)
            .map_err(|err| ApiError::bad("prompt", err.to_string()))?,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let vocab = e.config.vocab_size as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(id) if id < vocab => Ok(id as u32),
                    _ => Err(ApiError::bad(
                        "prompt",
                        format!("token id {v} is outside the vocabulary of {vocab}"),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            return Err(ApiError::bad(
                "prompt",
                "one prompt per request, please (n = 1)",
            ))
        }
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "prompt must be a string (or a list of token ids)",
            ))
        }
    };
    let mut r = gen_request(&f, e, &s.opts, ("prompt", prompt), &[])?;
    r.logprobs = f
        .integer("logprobs", 0, MAX_LOGPROBS as u64)?
        .map(|k| k as usize);
    let with_usage = include_usage(&body)?;
    let rxs = submit(e, &r)?;
    let (id, created, model) = (s.id("cmpl"), now(), e.name.clone());
    if r.stream {
        let (uid, umodel, prompt) = (id.clone(), model.clone(), r.prompt.len());
        let usage_chunk: Option<UsageChunk> = with_usage.then(|| {
            Box::new(move |n| {
                json!({"id": uid, "object": "text_completion", "created": created, "model": umodel,
                       "choices": [], "usage": usage(prompt, n)})
            }) as UsageChunk
        });
        let (asked, state) = (r.logprobs.is_some(), Arc::clone(&s));
        let mut offsets = vec![0; r.n];
        return Ok(sse(
            rxs,
            s.cut.clone(),
            None,
            move |i, text, finish, lps| {
                let logprobs = match state.engine.get() {
                    Some(e) if asked && !lps.is_empty() => {
                        completion_logprobs(e, lps, &mut offsets[i])
                    }
                    _ => Value::Null,
                };
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish.map(Finish::as_str)}]})
            },
            usage_chunk,
        ));
    }
    let all = collect_all(rxs, s.cut.clone()).await?;
    let choices: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match r.logprobs {
                Some(_) => completion_logprobs(e, &c.logprobs, &mut 0),
                None => Value::Null,
            };
            json!({"text": c.text, "index": i, "logprobs": logprobs, "finish_reason": c.finish.as_str()})
        })
        .collect();
    let n = all.iter().map(|c| c.tokens).sum();
    Ok(Json(
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": usage(r.prompt.len(), n)}),
    )
    .into_response())
}

async fn chat(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let e = s.engine()?;
    let body = body_object(body)?;
    let f = Fields(&body);
    check_common(&f, e)?;
    let Kind::Lm { style } = e.kind else {
        return Err(ApiError::request(
            "this model is a classifier: use POST /v1/classify",
        ));
    };
    let messages = f.messages()?;
    let prompt = style
        .encode_chat(&e.tokenizer, &messages)
        .map_err(|err| ApiError::bad("messages", err.to_string()))?;
    let mut r = gen_request(&f, e, &s.opts, ("messages", prompt), style.turn_markers())?;
    r.logprobs = chat_logprobs_asked(&f)?;
    let with_usage = include_usage(&body)?;
    let rxs = submit(e, &r)?;
    let (id, created, model) = (s.id("chatcmpl"), now(), e.name.clone());
    if r.stream {
        let (uid, umodel, prompt) = (id.clone(), model.clone(), r.prompt.len());
        let usage_chunk: Option<UsageChunk> = with_usage.then(|| {
            Box::new(move |n| {
                json!({"id": uid, "object": "chat.completion.chunk", "created": created, "model": umodel,
                       "choices": [], "usage": usage(prompt, n)})
            }) as UsageChunk
        });
        let roles: Vec<Value> = (0..r.n)
            .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}))
            .collect();
        let first = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": roles});
        let (asked, state) = (r.logprobs.is_some(), Arc::clone(&s));
        return Ok(sse(
            rxs,
            s.cut.clone(),
            Some(first),
            move |i, text, finish, lps| {
                let delta = if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                let logprobs = match state.engine.get() {
                    Some(e) if asked && !lps.is_empty() => chat_logprobs(e, lps),
                    _ => Value::Null,
                };
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish.map(Finish::as_str)}]})
            },
            usage_chunk,
        ));
    }
    let all = collect_all(rxs, s.cut.clone()).await?;
    let choices: Vec<Value> = all
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match r.logprobs {
                Some(_) => chat_logprobs(e, &c.logprobs),
                None => Value::Null,
            };
            json!({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": logprobs, "finish_reason": c.finish.as_str()})
        })
        .collect();
    let n = all.iter().map(|c| c.tokens).sum();
    Ok(Json(
        json!({"id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": usage(r.prompt.len(), n)}),
    )
    .into_response())
}

async fn classify(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let e = s.engine()?;
    let body = body_object(body)?;
    let f = Fields(&body);
    check_common(&f, e)?;
    let Kind::Classifier(spec) = &e.kind else {
        return Err(ApiError::request(
            "this model is a language model, not a classifier: use /v1/completions or /v1/chat/completions",
        ));
    };
    let texts: Vec<String> = match body.get("input") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 64 => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad(
                        &format!("input[{i}]"),
                        format!("input[{i}] must be a string"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad(
                "input",
                "input must be a string or a list of 1 to 64 strings",
            ))
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad(
            &format!("input[{i}]"),
            format!("input[{i}] is empty"),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    e.jobs
        .try_send(Job::Classify { texts, reply: tx })
        .map_err(|_| busy())?;
    let preds = rx
        .await
        .map_err(|_| server_error("the model thread stopped".into()))?
        .map_err(|m| ApiError::bad("input", m))?;
    let data: Vec<Value> = preds
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let probs: serde_json::Map<String, Value> = spec
                .labels
                .iter()
                .zip(&p.probs)
                .map(|(l, &v)| (l.clone(), json!(v)))
                .collect();
            json!({"index": i, "label": p.label, "probability": p.probs.get(p.class), "probabilities": probs, "truncated": p.truncated})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "model": e.name, "data": data}),
    ))
}
