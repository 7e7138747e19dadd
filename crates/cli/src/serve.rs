//! `serve`: the OpenAI-compatible HTTP API and chat page of `scratchllm-serve`.
use anyhow::{anyhow, bail, Result};
use clap::Args;
use scratchllm_model::PromptStyle;
use scratchllm_serve::ServeOptions;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// A model directory (any layout), an adapter directory, or a classifier.
    #[arg(long)]
    model: PathBuf,
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
    /// Generations served at once, interleaved token by token.
    #[arg(long, default_value_t = 4)]
    max_active: usize,
    /// How the weight matrices are stored: f32, or bf16 (half the memory, faster generation).
    #[arg(long, value_enum, help = crate::model::DTYPE_HELP)]
    dtype: Option<crate::model::InferDtype>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let style = a.prompt_style;
    if a.max_tokens_limit == 0 || a.default_max_tokens == 0 || a.max_active == 0 {
        bail!("--max-tokens-limit, --default-max-tokens and --max-active must be at least 1");
    }
    if !a.model.exists() {
        bail!("{}: no such model directory", a.model.display());
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
        dtype: a.dtype.map(crate::model::InferDtype::model),
        ..ServeOptions::new(a.model)
    };
    scratchllm_serve::run(opts).map_err(|e| anyhow!(e))
}
