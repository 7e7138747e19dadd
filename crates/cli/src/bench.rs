//! `bench`: speed measurements whose last line is `RESULT <metric> <value>`.
use crate::out::outln;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use scratchllm_model::kernels::peak::{self, Peak};
use scratchllm_tokenizer::{self as tk, io::read_text};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Single-thread encode throughput on a file (best of N), or BPE training with --train-vocab.
    Tokenizer(TokenizerBench),
    /// Greedy generation with the KV cache, batch 1 (prompt processing included in the time).
    Generate(GenerateBench),
    /// Training steps (forward, backward, AdamW) on random tokens; median step after the first,
    /// with the model FLOPs achieved and their fraction of the measured peak.
    Train(TrainBench),
    /// The arithmetic peak of the threads in use: f32 fused multiply-adds and bf16 dot products
    /// per second, on registers (SCRATCHLLM_SIMD=avx2|portable measures the narrower paths).
    Peak(PeakBench),
}

#[derive(Args)]
pub struct PeakBench {
    /// Runs; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Args)]
pub struct TrainBench {
    /// A preset (random weights; qkv bias and a separate head, as the PyTorch peer).
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    ctx: usize,
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Matrix products in f32, or bf16 (f32 master weights and accumulation, as PyTorch autocast).
    #[arg(long, value_enum, default_value_t = crate::model::WeightDtype::F32)]
    dtype: crate::model::WeightDtype,
    /// Train LoRA adapters of this rank (alpha = rank) on every attention and feed-forward layer
    /// instead of all the weights.
    #[arg(long, value_name = "RANK")]
    lora: Option<usize>,
    /// Recompute each block in the backward instead of keeping its activations.
    #[arg(long)]
    checkpoint_activations: bool,
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
    #[arg(long, value_enum, help = crate::model::DTYPE_HELP)]
    dtype: Option<crate::model::InferDtype>,
    /// Sequences decoded together, one batched pass per step as the server's engine does (their
    /// rows go through each linear layer together); the rate is all their tokens.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch: u64,
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
        BenchCommand::Train(b) => train(b),
        BenchCommand::Peak(b) => peak(b),
    }
}

/// The best of `repeat` measurements of the f32 and bf16 peaks on the threads in use.
fn peaks(repeat: usize) -> (Peak, Option<Peak>) {
    peak::measure(candle_core::utils::get_num_threads(), ROUNDS, repeat.max(1))
}

/// Rounds of the peak's chains: about 0.2 s per measurement at 3.5 GHz.
const ROUNDS: u64 = 50_000_000;

fn peak(b: PeakBench) -> Result<()> {
    let (f, bf) = peaks(b.repeat);
    outln!(
        "f32 fused multiply-add: {:.1} GFLOP/s ({}, threads: {})",
        f.gflops,
        f.kernel,
        f.threads
    )?;
    match bf {
        Some(p) => outln!("bf16 dot product: {:.1} GFLOP/s ({})", p.gflops, p.kernel)?,
        None => outln!("bf16 dot product: not on this CPU (bf16 products widen to f32)")?,
    }
    if let Some(p) = bf {
        outln!("RESULT bf16_gflops {:.1}", p.gflops)?;
    }
    outln!("RESULT f32_gflops {:.1}", f.gflops)?;
    Ok(())
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
        outln!("trained vocab {} in {secs:.3}s", tok.vocab_size())?;
        outln!("RESULT MB_per_s {:.3}", mb / secs)?;
        return Ok(());
    }
    let tok = tk::load(&b.tokenizer)?;
    let (ids, secs) = best_of(b.repeat, || Ok(tok.encode_ordinary(&text)))?;
    outln!("tokens {} bytes {}", ids.len(), text.len())?;
    outln!("RESULT MB_per_s {:.2}", mb / secs)?;
    Ok(())
}

fn generate(b: GenerateBench) -> Result<()> {
    use scratchllm_model::generate::GenerateOptions;
    let mut files = crate::model::load_model(&b.model, 0)?;
    let model = crate::model::build_model(&mut files, b.dtype)?;
    let vocab = files.config.vocab_size as u64;
    let ctx = files.config.context_length;
    if b.prompt_tokens == 0 || b.prompt_tokens > ctx {
        bail!(
            "--prompt-tokens {} must be in 1..={ctx} (the model's context)",
            b.prompt_tokens
        );
    }
    // A fixed pseudo-random prompt, as the peer's `torch.randint`.
    let prompt: Vec<u32> = (0..b.prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761 + 12_345) % vocab) as u32)
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: b.new_tokens,
        ..Default::default()
    };
    if b.batch > 1 {
        return generate_batched(&model, &prompt, &b);
    }
    let warm = GenerateOptions {
        max_new_tokens: 4,
        ..opts.clone()
    };
    scratchllm_model::generate(&model, &prompt, &warm, &mut |_| Ok(true))?;
    // Decode speed as llama.cpp's bench counts it: the tokens after the first (which the prompt's
    // pass gives) over the time from the first to the last; the prompt's pass timed apart.
    let (mut prefill, mut decode) = (f64::INFINITY, f64::INFINITY);
    let mut ids = Vec::new();
    for _ in 0..b.repeat.max(1) {
        let t = Instant::now();
        let mut first = None;
        ids = scratchllm_model::generate(&model, &prompt, &opts, &mut |_| {
            first.get_or_insert_with(Instant::now);
            Ok(true)
        })?;
        let first = first.ok_or_else(|| anyhow::anyhow!("no token was generated"))?;
        prefill = prefill.min((first - t).as_secs_f64());
        decode = decode.min(first.elapsed().as_secs_f64());
    }
    if ids.len() < 2 {
        bail!("--new-tokens must be at least 2 to time decoding");
    }
    outln!(
        "prompt of {} tokens in {prefill:.3}s; {} more tokens in {decode:.3}s",
        prompt.len(),
        ids.len() - 1
    )?;
    let decode_rate = (ids.len() - 1) as f64 / decode;
    // The new tokens over the whole time, prompt included, as the PyTorch peers count them.
    let rate = ids.len() as f64 / (prefill + decode);
    // Each new token reads every weight matrix once, except the embeddings (one row each) unless
    // the head is the token embedding.
    // Quantized matrices count their blocks' bytes.
    let cfg = &files.config;
    let w = &files.weights;
    let quant_head = w.quant("out_head.weight").is_some();
    let dense: usize = w
        .tensors()
        .iter()
        .filter(|(name, t)| {
            t.rank() == 2
                && name.as_str() != "pos_emb.weight"
                && (name.as_str() != "tok_emb.weight" || (cfg.tie_embeddings && !quant_head))
        })
        .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    let quantized: usize = w
        .quant_matrices()
        .filter(|(name, _)| name.as_str() != "tok_emb.weight")
        .map(|(_, q)| q.bytes().len())
        .sum();
    let per_token = dense + quantized;
    outln!(
        "weights read per token {:.1} MB: {:.1} GB/s",
        per_token as f64 / 1e6,
        per_token as f64 * decode_rate / 1e9
    )?;
    outln!("RESULT tokens_per_s {rate:.1}")?;
    outln!("RESULT decode_tokens_per_s {decode_rate:.1}")?;
    Ok(())
}

/// `bench generate --batch N`: N greedy sequences after the same prompt, each with its own cache,
/// their prompts read one by one, then one batched pass per step for all of them (the server's
/// decode step); the decode rate counts every sequence's tokens.
fn generate_batched(
    model: &scratchllm_model::Gpt,
    prompt: &[u32],
    b: &GenerateBench,
) -> Result<()> {
    use scratchllm_model::generate::argmax;
    use scratchllm_model::Segment;
    let n = b.batch as usize;
    let positions = prompt.len() + b.new_tokens;
    let ctx = model.config().context_length;
    if positions > ctx {
        bail!(
            "--prompt-tokens {} + --new-tokens {} is past the model's context of {ctx}",
            prompt.len(),
            b.new_tokens
        );
    }
    let run = |steps: usize| -> Result<(f64, f64)> {
        let mut caches = (0..n)
            .map(|_| model.preallocated_cache(positions))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        let mut last = Vec::with_capacity(n);
        for cache in &mut caches {
            let mut seg = [Segment { ids: prompt, cache }];
            let logits: Vec<Vec<f32>> = model.forward_segments(&mut seg)?.to_vec2()?;
            last.push(argmax(&logits[0]));
        }
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 1..steps {
            let ids = last.clone();
            let mut segs: Vec<Segment> = caches
                .iter_mut()
                .zip(&ids)
                .map(|(cache, id)| Segment {
                    ids: std::slice::from_ref(id),
                    cache,
                })
                .collect();
            let logits: Vec<Vec<f32>> = model.forward_segments(&mut segs)?.to_vec2()?;
            last = logits.iter().map(|l| argmax(l)).collect();
        }
        Ok((prefill, t.elapsed().as_secs_f64()))
    };
    if b.new_tokens < 2 {
        bail!("--new-tokens must be at least 2 to time decoding");
    }
    run(4)?;
    let (mut prefill, mut decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..b.repeat.max(1) {
        let (p, d) = run(b.new_tokens)?;
        prefill = prefill.min(p);
        decode = decode.min(d);
    }
    let tokens = n * (b.new_tokens - 1);
    outln!(
        "{n} prompts of {} tokens in {prefill:.3}s; {n} x {} more tokens in {decode:.3}s ({:.1} ms per step)",
        prompt.len(),
        b.new_tokens - 1,
        decode * 1e3 / (b.new_tokens - 1) as f64
    )?;
    outln!("RESULT decode_tokens_per_s {:.1}", tokens as f64 / decode)?;
    Ok(())
}

fn train(b: TrainBench) -> Result<()> {
    use scratchllm_train::{AdamWConfig, Loader, Schedule, TrainSettings, Trainer, Windows};
    let preset = scratchllm_model::GptConfig::preset(&b.model)
        .ok_or_else(|| anyhow::anyhow!("unknown preset {:?}", b.model))?;
    let cfg = scratchllm_model::GptConfig {
        context_length: b.ctx.max(1),
        // GPT-2 as the PyTorch peer (a separate head); the decoders as published.
        tie_embeddings: preset.arch.is_decoder() && preset.tie_embeddings,
        ..preset
    };
    // Checked before the token buffer below is sized by these numbers.
    cfg.validate()?;
    let n = b
        .batch
        .checked_mul(b.ctx)
        .filter(|&n| b.batch > 0 && n <= 1 << 24)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--batch {} x --ctx {} tokens per step must be in 1..={}",
                b.batch,
                b.ctx,
                1 << 24
            )
        })?
        + 1;
    let dev = candle_core::Device::Cpu;
    let mut weights = scratchllm_model::Weights::random(&cfg, 123, &dev)?.into_tensors();
    let lora = match b.lora {
        Some(rank) => {
            use scratchllm_model::lora::Target;
            let spec = scratchllm_model::LoraSpec {
                rank,
                alpha: rank as f64,
                targets: vec![Target::Attention, Target::FeedForward],
            };
            weights.extend(scratchllm_model::lora::init(&cfg, &spec, 7, &dev)?);
            Some(spec)
        }
        None => None,
    };
    let weight_bytes: usize = weights.values().map(|t| t.elem_count() * 4).sum();
    let weights = scratchllm_model::Weights::new(weights, "random weights");
    // Random tokens, one batch of windows reused every step (as the peer's fixed batch).
    let ids: Vec<u32> = (0..n as u64)
        .map(|i| ((i * 2_654_435_761 + 7) % cfg.vocab_size as u64) as u32)
        .collect();
    let windows = Windows::new(ids, b.ctx, b.ctx);
    let settings = TrainSettings {
        epochs: 1,
        max_steps: None,
        loader: Loader {
            batch_size: b.batch,
            shuffle: false,
            drop_last: true,
            seed: 0,
        },
        adamw: AdamWConfig {
            lr: 4e-4,
            weight_decay: 0.1,
            ..Default::default()
        },
        schedule: Schedule::constant(4e-4),
        grad_clip: None,
        clip_after_warmup: false,
        grad_accum: 1,
        no_decay_bias_norm: false,
    };
    // The peak first: measured after training, it came out at half (2026-12-03, Zen 4 VM).
    let (f32_peak, bf16_peak) = peaks(2);
    scratchllm_model::kernels::set_autocast_bf16(b.dtype == crate::model::WeightDtype::Bf16);
    let _checkpointing =
        scratchllm_model::recompute::Checkpointing::blocks(b.checkpoint_activations);
    let mut trainer = match &lora {
        Some(spec) => Trainer::partly_frozen(
            &cfg,
            weights,
            Some(spec),
            &scratchllm_model::lora::is_adapter,
            settings,
        )?,
        None => Trainer::new(&cfg, weights, settings)?,
    };
    let idx: Vec<usize> = (0..b.batch.min(windows.len())).collect();
    let batch = scratchllm_train::batch_tensors(&windows, &idx, trainer.device())?;
    let before = memory::resident_mb();
    memory::reset_peak();
    let mut times = Vec::new();
    for s in 0..b.steps.max(2) {
        let t = Instant::now();
        let r = trainer.train_step(std::slice::from_ref(&batch), 0)?;
        times.push(t.elapsed().as_secs_f64());
        outln!("step {s} loss {:.4} {:.3}s", r.train_loss, times[s])?;
    }
    // What a step holds beside the weights: the gradients and AdamW's two moments of the trained
    // weights (f32), the logits and their gradient, and the activations kept for the backward
    // (with temporaries: the rest of the peak).
    let mb = |bytes: usize| bytes as f64 / 1e6;
    let trained = trainer.trainable_params() * 4;
    outln!(
        "memory: weights {:.1} MB; trained {:.1} MB: gradients {:.1} MB, AdamW moments {:.1} MB",
        mb(weight_bytes),
        mb(trained),
        mb(trained),
        mb(2 * trained),
    )?;
    if let (Some(before), Some(peak)) = (before, memory::peak_mb()) {
        outln!("peak RSS {peak:.1} MB ({before:.1} MB before the first step)")?;
        outln!("RESULT peak_rss_mb {peak:.1}")?;
    }
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest[rest.len() / 2];
    let tokens_per_s = (idx.len() * b.ctx) as f64 / median;
    // Model FLOPs utilization against the peak of the instructions the products use, measured now.
    // LoRA computes no weight gradients of the frozen matrices: forward and input gradients only
    // (2 of the 3 forwards' worth; the adapters' own products are left out).
    let flops = match lora {
        Some(_) => cfg.train_flops_per_token(b.ctx) * 2.0 / 3.0,
        None => cfg.train_flops_per_token(b.ctx),
    };
    let achieved = flops * tokens_per_s / 1e9;
    let peak = match (b.dtype, bf16_peak) {
        (crate::model::WeightDtype::Bf16, Some(p)) => p,
        _ => f32_peak,
    };
    outln!(
        "model FLOPs per token {:.3} G; {achieved:.1} GFLOP/s = {:.1}% of the {} peak {:.1} GFLOP/s (threads: {})",
        flops / 1e9,
        100.0 * achieved / peak.gflops,
        peak.kernel,
        peak.gflops,
        peak.threads
    )?;
    outln!("RESULT mfu {:.4}", achieved / peak.gflops)?;
    outln!("RESULT tokens_per_s {tokens_per_s:.1}")?;
    Ok(())
}

/// The resident memory of this process (Linux; `None` elsewhere).
mod memory {
    fn status_mb(field: &str) -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1e3)
    }

    /// Resident now, MB.
    pub fn resident_mb() -> Option<f64> {
        status_mb("VmRSS:")
    }

    /// The most resident since the start or the last [`reset_peak`], MB.
    pub fn peak_mb() -> Option<f64> {
        status_mb("VmHWM:")
    }

    /// Starts the peak again from the current resident memory (Linux's `clear_refs` 5).
    pub fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}
