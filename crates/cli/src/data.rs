//! `data list` and `data get`.
use crate::out::outln;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_fetch::{self as fetch, Outcome};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// What `data get` can download.
    List,
    /// Download GPT-2 weights, Llama 3.2 / Qwen3 / Gemma 3 model directories or the book's data
    /// sets into the cache (checked, resumable).
    Get(GetArgs),
    /// Pre-tokenize a corpus into memory-mapped shards that `pretrain --data DIR` trains from.
    Prepare(PrepareArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Text files or directories of .txt files (documents are separated by <|endoftext|>).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output directory for manifest.json and shard-NNNNN.bin.
    #[arg(long)]
    out: PathBuf,
    /// `gpt2` or a tokenizer path.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Tokens per shard.
    #[arg(long, default_value_t = 50_000_000)]
    shard_tokens: usize,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct GetArgs {
    /// Asset names (see `data list`), e.g. gpt2-small, gpt2-small-openai, qwen3-0.6b, the-verdict.
    #[arg(required = true)]
    names: Vec<String>,
    /// Cache directory [default: $SCRATCHLLM_CACHE, else ~/.cache/scratchllm].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Fetch every file from MIRROR/ASSET/FILE instead of its canonical URL [env: SCRATCHLLM_MIRROR].
    #[arg(long)]
    mirror: Option<String>,
    /// Seconds to wait to connect, and for the server's next bytes, before an attempt fails.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    timeout: f64,
    /// Attempts after the first when the network fails (each resumes what was received).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Hugging Face access token, for gated models (Llama, Gemma) after accepting their license on
    /// the Hub [env: HF_TOKEN, which keeps it out of the process list]. Sent only with model files.
    #[arg(long, value_name = "TOKEN")]
    hf_token: Option<String>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::List => {
            for a in fetch::ASSETS {
                outln!("{:<24} {}", a.name, a.about)?;
            }
            Ok(())
        }
        DataCommand::Get(a) => get(a),
        DataCommand::Prepare(a) => prepare(a),
    }
}

/// Progress bars on standard error, one per file.
struct Bars {
    bar: ProgressBar,
    quiet: bool,
}

impl fetch::Progress for Bars {
    fn start(&mut self, name: &str, total: Option<u64>, done: u64) {
        if self.quiet {
            return;
        }
        self.bar = ProgressBar::new(total.unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:32} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            self.bar.set_style(style);
        }
        self.bar.set_message(name.to_string());
        self.bar.set_position(done);
    }

    fn advance(&mut self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn retry(&mut self, name: &str, problem: &str, wait: std::time::Duration) {
        self.bar.finish_and_clear();
        eprintln!("{name}: {problem}; retrying in {:.1}s", wait.as_secs_f64());
    }

    fn finish(&mut self, name: &str, outcome: &Outcome) {
        self.bar.finish_and_clear();
        if !self.quiet {
            match outcome {
                Outcome::Cached => eprintln!("{name}: cached"),
                Outcome::Downloaded {
                    bytes,
                    resumed_from: 0,
                } => eprintln!("{name}: {bytes} bytes"),
                Outcome::Downloaded {
                    bytes,
                    resumed_from,
                } => eprintln!("{name}: {bytes} bytes (resumed at {resumed_from})"),
            }
        }
    }
}

fn get(a: GetArgs) -> Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 86_400.0) {
        bail!(
            "--timeout {} must be a number of seconds in (0, 86400]",
            a.timeout
        );
    }
    let timeout = std::time::Duration::from_secs_f64(a.timeout);
    let opts = fetch::Options {
        cache_dir: a.cache_dir.unwrap_or_else(fetch::default_cache_dir),
        mirror: a.mirror.or_else(|| std::env::var("SCRATCHLLM_MIRROR").ok()),
        network: fetch::Network {
            connect_timeout: timeout,
            read_timeout: timeout,
            retries: a.retries,
            ..fetch::Network::default()
        },
        // An empty HF_TOKEN counts as unset; an empty --hf-token is an error.
        hf_token: a
            .hf_token
            .or_else(|| {
                std::env::var("HF_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
            .map(|t| fetch::HfToken::new(&t))
            .transpose()?,
    };
    let assets = a
        .names
        .iter()
        .map(|n| fetch::asset(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bars = Bars {
        bar: ProgressBar::hidden(),
        quiet: a.quiet,
    };
    for asset in assets {
        let dir = fetch::get(asset, &opts, &mut bars)?;
        outln!("{}", dir.display())?;
    }
    Ok(())
}

fn prepare(a: PrepareArgs) -> Result<()> {
    let tok = scratchllm_tokenizer::load(&a.tokenizer)?;
    let files = scratchllm_train::pretrain::corpus_files(&a.input)?;
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "tokenizing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let n = scratchllm_train::shards::prepare(&files, &tok, &a.out, a.shard_tokens, &mut |k| {
        bar.inc(k)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{n} tokens from {} files in {}",
        files.len(),
        a.out.display()
    );
    outln!("{}", a.out.display())?;
    Ok(())
}
