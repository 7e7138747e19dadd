//! `scratchllm`: the command line over the scratchllm libraries (the binary is `main.rs`; the
//! parser and the settings checks are a library so that a fuzz target can drive them).
//!
//! Arguments are parsed in two phases, as ripgrep does: clap reads the flags as typed, then each
//! command validates them into what the library calls need. Errors print their whole chain and exit
//! with status 1; usage errors exit with clap's status 2; a training run stopped by Ctrl-C or
//! SIGTERM (with its checkpoint written) exits with 130.
mod bench;
mod chat;
mod data;
mod evaluate;
mod finetune;
mod model;
mod out;
mod pretrain;
mod serve;
mod terminal;
mod tokenize;
mod train_args;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "scratchllm",
    version,
    about = "A GPT-style language model's whole life, from scratch: tokenize, pretrain, fine-tune, generate, serve",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Threads for the numeric work (default: the physical cores; also CANDLE_NUM_THREADS or
    /// RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Turn text into token ids (GPT-2 BPE by default, bit-exact with tiktoken).
    Tokenize(tokenize::TokenizeArgs),
    /// Turn token ids back into text (reads ids separated by spaces, commas or as a JSON list).
    Detokenize(tokenize::DetokenizeArgs),
    /// Train, inspect and export BPE vocabularies.
    #[command(subcommand)]
    Tokenizer(tokenize::TokenizerCommand),
    /// Model presets and directories: parameters and memory.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Continue a prompt with a model (greedy or sampled, streamed, with a KV cache).
    Generate(model::GenerateArgs),
    /// Convert a model between layouts (Hugging Face, scratchllm, the book's names).
    Convert(model::ConvertArgs),
    /// Pretrain a GPT on a text corpus (the book's chapter 5 and appendix D), resumable.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Fine-tune a model: text classification (full, last layers, or LoRA).
    #[command(subcommand)]
    Finetune(finetune::FinetuneCommand),
    /// Label texts with a fine-tuned classifier (arguments, or one text per line of stdin).
    Classify(finetune::PredictArgs),
    /// Chat with a model in the terminal (streams answers; /help lists the commands).
    Chat(chat::ChatArgs),
    /// Score model responses with a judge model, and/or measure loss and perplexity on references.
    Evaluate(evaluate::EvaluateArgs),
    /// Serve a model over an OpenAI-compatible HTTP API, with a chat page at /.
    Serve(serve::ServeArgs),
    /// Data sets and pretrained weights: list and download them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Measure speed; the last line printed is `RESULT <metric> <value>`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Runs a parsed command line (after `--threads` is applied).
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Tokenize(a) => tokenize::tokenize(a),
        Command::Detokenize(a) => tokenize::detokenize(a),
        Command::Tokenizer(c) => tokenize::tokenizer(c),
        Command::Model(c) => model::model(c),
        Command::Generate(a) => model::generate(a),
        Command::Convert(a) => model::convert(a),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::Finetune(c) => finetune::run(c),
        Command::Classify(a) => finetune::predict_run(a),
        Command::Chat(a) => chat::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Data(c) => data::run(c),
        Command::Bench(c) => bench::run(c),
    }
    .and_then(|()| Ok(out::flush()?))
}

/// Parses `args` (the program name first) and, for a training command, checks its settings into
/// the run's configuration without running anything: an error, never a panic or a hang, for any
/// input. The command-line fuzz target's entry.
pub fn check_args(args: &[String]) -> Result<(), String> {
    let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
    let checked = match &cli.command {
        Command::Pretrain(a) => pretrain::check(a),
        Command::Finetune(c) => finetune::check(c),
        _ => Ok(()),
    };
    checked.map_err(|e| format!("{e:#}"))
}

/// How `main` ends for an error: a stopped training run exits 130, a closed pipe quietly with 0,
/// anything else prints its chain and exits 1.
pub fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    if let Some(stopped) = e.downcast_ref::<terminal::Interrupted>() {
        eprintln!("{stopped}");
        return std::process::ExitCode::from(130);
    }
    // A closed pipe (`scratchllm tokenize big.txt | head`) is not an error worth reporting.
    if out::is_closed_pipe(e) {
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::FAILURE
}
