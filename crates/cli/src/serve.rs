//! `serve`: the OpenAI-compatible HTTP API and chat page of `scratchllm-serve`.
use anyhow::{anyhow, bail, Result};
use clap::Args;
use scratchllm_model::PromptStyle;
use scratchllm_serve::guard::ApiKey;
use scratchllm_serve::ServeOptions;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable that may hold one more API key.
const KEY_VAR: &str = "SCRATCHLLM_API_KEY";

#[derive(Args)]
pub struct ServeArgs {
    /// A model directory (any layout), an adapter directory, or a classifier.
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on. Any but a loopback address needs an API key, or
    /// --allow-unauthenticated.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's id in requests and /v1/models [default: the directory's name].
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_parser = crate::train_args::prompt_style, help = crate::train_args::MODEL_PROMPT_STYLE_HELP)]
    prompt_style: Option<PromptStyle>,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_limit: usize,
    /// max_tokens when a request gives none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Requests that may wait for the model (more: 503), at most 1048576.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    /// Sequences generated at once, all advanced by one token per batched forward pass.
    #[arg(long, default_value_t = 16)]
    max_active: usize,
    /// Prompt tokens processed per step for a request being admitted (a long prompt holds the
    /// running streams back by at most one chunk).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Memory for the active sequences' KV caches, in MiB (fractions allowed); requests whose
    /// cache would not fit wait in the queue.
    #[arg(long, default_value_t = 2048.0)]
    kv_cache_mb: f64,
    /// How the weight matrices are stored: f32, or bf16 (half the memory, faster generation).
    #[arg(long, value_enum, help = crate::model::DTYPE_HELP)]
    dtype: Option<crate::model::InferDtype>,
    /// A key every /v1 request must carry as `Authorization: Bearer KEY` (repeatable; also
    /// --api-key-file and the SCRATCHLLM_API_KEY environment variable). Other users of the machine
    /// can read command lines: prefer the file or the variable.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A file of API keys, one a line; blank lines and lines starting with # are skipped
    /// (repeatable).
    #[arg(long = "api-key-file", value_name = "FILE")]
    api_key_files: Vec<PathBuf>,
    /// Serve on a non-loopback --host without an API key (refused otherwise).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// An origin (https://app.example.com, or *) whose web pages may call /v1 (repeatable;
    /// default: no cross-origin requests).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// A Host name requests may use besides the bound address, e.g. a DNS name of this machine
    /// (repeatable; guards against DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Seconds to wait for a request's headers or body, or for the next request on an idle
    /// connection (streams being generated are never cut).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    request_timeout: u64,
    /// Connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Requests in progress per API key (more: 429); applies when keys are set.
    #[arg(long, default_value_t = 8)]
    max_concurrent_per_key: usize,
    /// Seconds that requests in progress get to finish after SIGTERM or Ctrl-C; then their
    /// streams end with `data: [DONE]`.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    shutdown_grace: u64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let style = a.prompt_style;
    if a.max_tokens_limit == 0
        || a.default_max_tokens == 0
        || a.max_active == 0
        || a.prefill_chunk == 0
        || !(a.kv_cache_mb * 1048576.0 >= 1.0 && a.kv_cache_mb.is_finite())
    {
        bail!("--max-tokens-limit, --default-max-tokens, --max-active and --prefill-chunk must be at least 1, and --kv-cache-mb a positive number of MiB");
    }
    if !a.model.exists() {
        bail!("{}: no such model directory", a.model.display());
    }
    let mut api_keys: Vec<ApiKey> = a.api_keys.into_iter().map(ApiKey::new).collect();
    if let Ok(key) = std::env::var(KEY_VAR) {
        if !key.trim().is_empty() {
            api_keys.push(ApiKey::new(key.trim()));
        }
    }
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        name: a.name,
        prompt_style: style,
        max_body_bytes: a.max_body_bytes,
        max_tokens_limit: a.max_tokens_limit,
        default_max_tokens: a.default_max_tokens.min(a.max_tokens_limit),
        max_queue: a.max_queue,
        max_active: a.max_active,
        prefill_chunk: a.prefill_chunk,
        kv_cache_bytes: (a.kv_cache_mb * 1048576.0) as usize,
        dtype: a.dtype.map(crate::model::InferDtype::model),
        api_keys,
        api_key_files: a.api_key_files,
        allow_unauthenticated: a.allow_unauthenticated,
        cors_origins: a.cors_origins,
        allowed_hosts: a.allowed_hosts,
        request_timeout: Duration::from_secs(a.request_timeout),
        max_connections: a.max_connections,
        max_concurrent_per_key: a.max_concurrent_per_key,
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        ..ServeOptions::new(a.model)
    };
    scratchllm_serve::run(opts).map_err(|e| anyhow!(e))
}
