//! `bench`: speed measurements whose last line is `RESULT <metric> <value>`.
use anyhow::Result;
use clap::{Args, Subcommand};
use scratchllm_tokenizer::{self as tk, io::read_text};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Single-thread encode throughput on a file (best of N), or BPE training with --train-vocab.
    Tokenizer(TokenizerBench),
    /// Greedy generation with the KV cache, batch 1 (prompt processing included in the time).
    Generate(GenerateBench),
}

#[derive(Args)]
pub struct GenerateBench {
    /// A preset (random weights) or a model path.
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    #[arg(long, default_value_t = 200)]
    new_tokens: usize,
    #[arg(long, default_value_t = 10)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Args)]
pub struct TokenizerBench {
    /// UTF-8 text file.
    file: PathBuf,
    /// `gpt2` or a tokenizer path.
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Runs; the best is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Benchmark BPE training to this vocabulary size instead of encoding.
    #[arg(long, value_name = "N")]
    train_vocab: Option<usize>,
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Tokenizer(b) => tokenizer(b),
        BenchCommand::Generate(b) => generate(b),
    }
}

fn best_of<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let r = f()?;
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    Ok((last.ok_or_else(|| anyhow::anyhow!("no run"))?, best))
}

fn tokenizer(b: TokenizerBench) -> Result<()> {
    let text = read_text(&b.file)?;
    let mb = text.len() as f64 / 1e6;
    if let Some(vocab) = b.train_vocab {
        let opts = tk::TrainOptions {
            vocab_size: vocab,
            specials: vec![tk::ENDOFTEXT.into()],
            min_frequency: 0,
        };
        let (tok, secs) = best_of(b.repeat.min(3), || {
            let mut counts = tk::WordCounts::new(&opts.specials);
            counts.add_file(&b.file, &mut |_| {})?;
            Ok(tk::train(&counts, &opts, &mut |_, _| {})?)
        })?;
        println!("trained vocab {} in {secs:.3}s", tok.vocab_size());
        println!("RESULT MB_per_s {:.3}", mb / secs);
        return Ok(());
    }
    let tok = tk::load(&b.tokenizer)?;
    let (ids, secs) = best_of(b.repeat, || Ok(tok.encode_ordinary(&text)))?;
    println!("tokens {} bytes {}", ids.len(), text.len());
    println!("RESULT MB_per_s {:.2}", mb / secs);
    Ok(())
}

fn generate(b: GenerateBench) -> Result<()> {
    use scratchllm_model::{generate::GenerateOptions, Gpt};
    let files = crate::model::load_model(&b.model, 0)?;
    let model = Gpt::new(&files.config, &files.weights)?;
    let vocab = files.config.vocab_size as u64;
    // A fixed pseudo-random prompt, as the peer's `torch.randint`.
    let prompt: Vec<u32> = (0..b.prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32)
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: b.new_tokens,
        ..Default::default()
    };
    let warm = GenerateOptions {
        max_new_tokens: 4,
        ..opts.clone()
    };
    scratchllm_model::generate(&model, &prompt, &warm, &mut |_| Ok(true))?;
    let (ids, secs) = best_of(b.repeat, || {
        Ok(scratchllm_model::generate(
            &model,
            &prompt,
            &opts,
            &mut |_| Ok(true),
        )?)
    })?;
    println!("generated {} tokens in {secs:.3}s", ids.len());
    println!("RESULT tokens_per_s {:.1}", ids.len() as f64 / secs);
    Ok(())
}
