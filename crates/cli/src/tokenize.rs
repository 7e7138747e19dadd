//! `tokenize`, `detokenize` and `tokenizer train|info|export|render-chat`.
use crate::out::{outln, WriteError};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_tokenizer::{self as tk, io::read_text, SimpleTokenizer, SpecialMode, Tokenizer};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TokenizerChoice {
    /// `gpt2` (bundled), or a tokenizer file or directory: tokenizer.json (any BPE pipeline: Llama 3,
    /// Qwen3, Gemma 3, GPT-2...), scratchllm-tokenizer.json, encoder.json + vocab.bpe, vocab.json +
    /// merges.txt, or a .tiktoken file. tokenizer_config.json, generation_config.json and
    /// chat_template.jinja beside it give the special roles and the chat template.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Add a special token after the vocabulary (repeatable); it gets the next free id.
    #[arg(long = "add-special", value_name = "TOKEN")]
    add_special: Vec<String>,
}

impl TokenizerChoice {
    fn load(&self) -> Result<Tokenizer> {
        let mut tok = tk::load(&self.tokenizer)
            .with_context(|| format!("loading tokenizer {:?}", self.tokenizer))?;
        for w in tok.warnings() {
            eprintln!("warning: {}: {w}", self.tokenizer);
        }
        for s in &self.add_special {
            tok.add_special(s)?;
        }
        Ok(tok)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Ids separated by spaces.
    Ids,
    /// A JSON list of ids.
    Json,
    /// A JSON list of the tokens' text (invalid UTF-8 shown as U+FFFD).
    Tokens,
    /// Only the number of tokens.
    Count,
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    choice: TokenizerChoice,
    /// Encode `<|endoftext|>` (and other special tokens) as their ids.
    #[arg(long, conflicts_with = "special_as_text")]
    allow_special: bool,
    /// Encode special-token text as ordinary text instead of refusing it.
    #[arg(long)]
    special_as_text: bool,
    /// Add the special tokens the tokenizer puts around a text (its post-processor: Gemma's
    /// `<bos>`, Llama 3.1's `<|begin_of_text|>`), as `add_special_tokens=True` does. Not to be
    /// confused with `--add-special TOKEN`, which extends the vocabulary.
    #[arg(long)]
    add_special_tokens: bool,
    /// Use the book's simple word tokenizer with a vocabulary built from this text file instead.
    #[arg(long, value_name = "VOCAB_TEXT", conflicts_with = "tokenizer")]
    words: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ids")]
    format: OutputFormat,
    /// Input file, or `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
}

fn read_input(input: &str) -> Result<String> {
    if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "standard input is not valid UTF-8 at byte {}",
                e.utf8_error().valid_up_to()
            )
        })
    } else {
        Ok(read_text(Path::new(input))?)
    }
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = read_input(&a.input)?;
    if let Some(vocab) = &a.words {
        let simple = SimpleTokenizer::from_text(&read_text(vocab)?);
        let ids = simple.encode(&text);
        let tokens = |ids: &[u32]| {
            ids.iter()
                .map(|&i| simple.decode(&[i]).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        return print_ids(&ids, a.format, tokens);
    }
    let tok = a.choice.load()?;
    let mode = if a.allow_special {
        SpecialMode::Allow
    } else if a.special_as_text {
        SpecialMode::AsText
    } else {
        SpecialMode::Forbid
    };
    let mut ids = tok
        .encode(&text, mode)
        .with_context(|| format!("encoding {}", display_input(&a.input)))?;
    if a.add_special_tokens {
        ids = tok.with_special_tokens(ids);
    }
    let tokens = |ids: &[u32]| {
        ids.iter()
            .map(|&i| tok.decode(&[i]).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    print_ids(&ids, a.format, tokens)
}

fn display_input(input: &str) -> String {
    if input == "-" {
        "standard input".into()
    } else {
        input.into()
    }
}

fn print_ids(
    ids: &[u32],
    format: OutputFormat,
    tokens: impl Fn(&[u32]) -> Vec<String>,
) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        OutputFormat::Ids => {
            let mut line = String::with_capacity(ids.len() * 6);
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                line.push_str(&id.to_string());
            }
            writeln!(out, "{line}").map_err(WriteError::from)?;
        }
        OutputFormat::Json => {
            writeln!(out, "{}", serde_json::to_string(ids)?).map_err(WriteError::from)?
        }
        OutputFormat::Tokens => {
            writeln!(out, "{}", serde_json::to_string(&tokens(ids))?).map_err(WriteError::from)?
        }
        OutputFormat::Count => writeln!(out, "{}", ids.len()).map_err(WriteError::from)?,
    }
    out.flush().map_err(WriteError::from)?;
    Ok(())
}

#[derive(Args)]
pub struct DetokenizeArgs {
    #[command(flatten)]
    choice: TokenizerChoice,
    /// Leave special tokens out of the text (`skip_special_tokens`).
    #[arg(long)]
    skip_special_tokens: bool,
    /// Input file of ids, or `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
}

/// Parses ids separated by whitespace or commas, with or without JSON brackets.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    let body = text.trim().trim_start_matches('[').trim_end_matches(']');
    body.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>()
                .with_context(|| format!("item {} ({s:?}) is not a token id", i + 1))
        })
        .collect()
}

pub fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = a.choice.load()?;
    let ids = parse_ids(&read_input(&a.input)?)
        .with_context(|| format!("reading ids from {}", display_input(&a.input)))?;
    // The exact bytes, not a lossy string: a token sequence may end inside a character. A
    // tokenizer.json pipeline decodes through its decoder chain, as the tokenizers library does.
    let bytes = if tok.pipeline().is_some() || a.skip_special_tokens {
        tok.decode_with(&ids, a.skip_special_tokens)?.into_bytes()
    } else {
        tok.decode_bytes(&ids)?
    };
    Ok(crate::out::bytes(&bytes)?)
}

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE vocabulary on text files (GPT-2 pre-tokenization).
    Train(TrainArgs),
    /// Show a tokenizer's size, merge rule and special tokens.
    Info(InfoArgs),
    /// Write a tokenizer in every format we write (ours, tokenizer.json, vocab.json + merges.txt).
    Export(ExportArgs),
    /// Render a chat with the tokenizer's chat template, exactly as transformers'
    /// apply_chat_template(..., tokenize=False) renders it, and print it.
    RenderChat(RenderChatArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// Training text files (UTF-8), read in a streaming fashion.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Final vocabulary size, including the 256 byte tokens and the special tokens.
    #[arg(long)]
    vocab_size: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Special tokens, given the last ids (default: <|endoftext|>).
    #[arg(long = "special", value_name = "TOKEN")]
    specials: Vec<String>,
    /// Never merge a pair seen fewer times than this.
    #[arg(long, default_value_t = 0)]
    min_frequency: u64,
    /// The split pattern words are cut with: GPT-2's or Llama 3's (digits in threes, a word keeps
    /// the character before it, line breaks apart). A llama3 vocabulary is saved as tokenizer.json
    /// and our format, not as vocab.json + merges.txt, which cannot say how to split.
    #[arg(long, value_enum, default_value = "gpt2")]
    pre_tokenizer: PreTokenizerArg,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PreTokenizerArg {
    Gpt2,
    Llama3,
}

fn bar(len: u64, template: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

pub fn tokenizer(c: TokenizerCommand) -> Result<()> {
    match c {
        TokenizerCommand::Train(a) => train(a),
        TokenizerCommand::Info(a) => info(a),
        TokenizerCommand::Export(a) => export(a),
        TokenizerCommand::RenderChat(a) => render_chat(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let specials = if a.specials.is_empty() {
        vec![tk::ENDOFTEXT.to_string()]
    } else {
        a.specials.clone()
    };
    let started = std::time::Instant::now();
    let split = match a.pre_tokenizer {
        PreTokenizerArg::Gpt2 => tk::SplitPreset::Gpt2,
        PreTokenizerArg::Llama3 => tk::SplitPreset::Llama3,
    };
    let mut counts = tk::WordCounts::with_split(&specials, split);
    let total: u64 = a
        .input
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let reading = bar(
        total,
        "counting words {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        a.quiet,
    );
    for path in &a.input {
        counts.add_file(path, &mut |n| reading.inc(n))?;
    }
    reading.finish_and_clear();
    let opts = tk::TrainOptions {
        vocab_size: a.vocab_size,
        specials,
        min_frequency: a.min_frequency,
    };
    let merging = bar(0, "merging {bar:40} {pos}/{len} eta {eta}", a.quiet);
    let tok = tk::train(&counts, &opts, &mut |done, target| {
        merging.set_length(target as u64);
        merging.set_position(done as u64);
    })?;
    merging.finish_and_clear();
    let files = tk::formats::save_dir(&tok, &a.out)?;
    eprintln!(
        "trained {} tokens ({} merges, {} distinct words) from {} in {:.2}s",
        tok.vocab_size(),
        tok.merge_count(),
        counts.len(),
        human_bytes(total),
        started.elapsed().as_secs_f64()
    );
    if tok.vocab_size() < a.vocab_size {
        eprintln!(
            "note: the corpus ran out of pairs seen at least {} times, so the vocabulary is smaller than {}",
            a.min_frequency, a.vocab_size
        );
    }
    for f in files {
        outln!("{}", f.display())?;
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{n} bytes")
    }
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    choice: TokenizerChoice,
}

fn info(a: InfoArgs) -> Result<()> {
    let tok = a.choice.load()?;
    let meta = tok.meta();
    let role = |r: &Option<tk::Role>| {
        r.as_ref()
            .map_or("none".to_string(), |r| format!("{:?} = {}", r.text, r.id))
    };
    outln!("tokenizer:       {}", a.choice.tokenizer)?;
    outln!("family:          {}", tok.family())?;
    outln!("vocabulary:      {} ids", tok.vocab_size())?;
    match tok.pipeline() {
        Some(p) => {
            let kind = if p.model.is_byte_level() {
                "byte-level"
            } else {
                "character-level"
            };
            outln!("pipeline:        tokenizer.json, {kind} BPE")?;
            outln!("mergeable pairs: {}", tok.merge_count())?;
        }
        None => {
            outln!("merge rule:      {:?}", tok.rule())?;
            outln!("mergeable pairs: {}", tok.merge_count())?;
        }
    }
    outln!("bos:             {}", role(&meta.bos))?;
    outln!("eos:             {}", role(&meta.eos))?;
    if meta.pad.is_some() {
        outln!("pad:             {}", role(&meta.pad))?;
    }
    for r in &meta.end_of_turn {
        outln!("end of turn:     {:?} = {}", r.text, r.id)?;
    }
    outln!("stop ids:        {:?}", tok.stop_ids())?;
    if meta.templates.is_empty() {
        outln!("chat template:   none")?;
    }
    for t in &meta.templates {
        outln!(
            "chat template:   {} ({}, {} bytes)",
            t.name,
            t.origin.display(),
            t.source.len()
        )?;
    }
    let mut specials = tok.specials().to_vec();
    specials.sort_by_key(|s| s.1);
    outln!("special tokens:  {}", specials.len())?;
    for (text, id) in specials.iter().take(20) {
        outln!("special:         {text:?} = {id}")?;
    }
    if specials.len() > 20 {
        outln!("special:         ... and {} more", specials.len() - 20)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    choice: TokenizerChoice,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

fn export(a: ExportArgs) -> Result<()> {
    let tok = a.choice.load()?;
    if tok.vocab_size() == 0 {
        bail!("empty tokenizer");
    }
    for f in tk::formats::save_dir(&tok, &a.out)? {
        outln!("{}", f.display())?;
    }
    Ok(())
}

#[derive(Args)]
pub struct RenderChatArgs {
    #[command(flatten)]
    choice: TokenizerChoice,
    /// A JSON file with the messages: a list of {"role": ..., "content": ...} objects.
    #[arg(long)]
    messages: PathBuf,
    /// Leave out the prompt for the assistant's turn (add_generation_prompt=False).
    #[arg(long)]
    no_generation_prompt: bool,
    /// A template variable NAME=VALUE (repeatable); VALUE is read as JSON when it parses, else as
    /// a string: --var enable_thinking=false, --var 'tools=[...]'.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Use the chat template of this name (for files with several: default, tool_use, ...).
    #[arg(long)]
    template: Option<String>,
}

fn render_chat(a: RenderChatArgs) -> Result<()> {
    let tok = a.choice.load()?;
    let messages = read_text(&a.messages)?;
    let mut vars = Vec::new();
    for v in &a.vars {
        let Some((name, value)) = v.split_once('=') else {
            bail!("--var {v:?} is not NAME=VALUE");
        };
        vars.push((name.to_string(), value.to_string()));
    }
    let opts = tk::ChatOptions {
        add_generation_prompt: !a.no_generation_prompt,
        vars,
        template: a.template,
    };
    let prompt = tok
        .render_chat(&messages, &opts)
        .with_context(|| format!("rendering {}", a.messages.display()))?;
    crate::out::text(&prompt)?;
    Ok(())
}
