//! `tokenize`, `detokenize` and `tokenizer train|info|export`.
use crate::out::{outln, WriteError};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use scratchllm_tokenizer::{self as tk, io::read_text, SimpleTokenizer, SpecialMode, Tokenizer};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TokenizerChoice {
    /// `gpt2` (bundled), or a tokenizer file or directory: tokenizer.json, scratchllm-tokenizer.json,
    /// encoder.json + vocab.bpe, vocab.json + merges.txt, or a .tiktoken file.
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
    let ids = tok
        .encode(&text, mode)
        .with_context(|| format!("encoding {}", display_input(&a.input)))?;
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
    // The exact bytes, not a lossy string: a token sequence may end inside a character.
    let bytes = tok.decode_bytes(&ids)?;
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
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
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
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let specials = if a.specials.is_empty() {
        vec![tk::ENDOFTEXT.to_string()]
    } else {
        a.specials.clone()
    };
    let started = std::time::Instant::now();
    let mut counts = tk::WordCounts::new(&specials);
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
    outln!("tokenizer:      {}", a.choice.tokenizer)?;
    outln!("vocabulary:     {} ids", tok.vocab_size())?;
    outln!("merge rule:     {:?}", tok.rule())?;
    outln!("mergeable pairs: {}", tok.merge_count())?;
    for (text, id) in tok.specials() {
        outln!("special:        {text:?} = {id}")?;
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
